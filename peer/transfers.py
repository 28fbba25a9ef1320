"""What this user's transfers are doing: the local control channel of `acb serve`, and the downloads on disk.

A running provider (:class:`peer.serve.ProviderService`) answers on a UNIX
socket ``<profile dir>/serve.sock`` (mode 0600, and only to this same OS user):
one JSON object per line in, one per line out. Requests are
``{"op": "list"}``, ``{"op": "pause" | "resume" | "cancel", "sale": ID}``,
``{"op": "limit", "bps": N | null, "sale": ID | null}`` (no sale: the global
limit) and ``{"op": "priority", "sale": ID, "priority": N}``. Replies carry
``"ok": true`` and the request's result, or ``"ok": false`` and an ``error``
a person can read.

Downloads need no running process: each ``<sale>.journal`` in the user's
downloads folder says how much of a sale's ciphertext is stored.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from peer.errors import PeerError
from peer.identity import Profile
from peer.transfer.errors import JournalError
from peer.transfer.journal import DownloadStore

__all__ = [
    "ControlError",
    "ControlServer",
    "DownloadRow",
    "NoServe",
    "ServeRunning",
    "control_request",
    "list_downloads",
    "socket_path",
]

log = logging.getLogger(__name__)

_MAX_LINE = 64 * 1024
# sun_path holds 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107


class ControlError(PeerError):
    """The control channel of `acb serve` refused a request or could not be used."""


class NoServe(ControlError):
    """No `acb serve` of this user answers on its control socket."""


class ServeRunning(ControlError):
    """Another live `acb serve` of this user already holds the control socket."""


def socket_path(profile: Profile) -> Path:
    """Where the control socket of ``profile``'s `acb serve` lives."""
    return profile.dir / "serve.sock"


# ---------------------------------------------------------------------- server
Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlServer:
    """Answers line-delimited JSON requests on a UNIX socket, one thread per connection.

    ``handler(request)`` returns the reply's fields or raises
    :class:`ControlError` (sent back as ``{"ok": false, "error": ...}``).
    A socket file left by a killed process is replaced; one that still answers
    raises :class:`ServeRunning`.
    """

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._stopping = threading.Event()
        self._acceptor: threading.Thread | None = None
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()

    def start(self) -> None:
        """Bind (replacing a stale socket) and accept in a background thread."""
        if len(os.fsencode(self.path)) > _MAX_SOCKET_PATH:
            raise ControlError(f"control socket path is too long for this system: {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _clear_stale(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Between bind and chmod the mode is the umask's; every connection's peer is
            # checked as well (umask itself is process-wide, so it is not touched here).
            listener.bind(str(self.path))
            os.chmod(self.path, 0o600)
            listener.listen(16)
            listener.settimeout(0.2)
        except OSError as exc:
            listener.close()
            raise ControlError(f"cannot listen on {self.path}: {exc.strerror or exc}") from exc
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        self._listener = listener
        self._stopping.clear()
        self._acceptor = threading.Thread(target=self._accept_loop, name="acb-control-accept", daemon=True)
        self._acceptor.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop answering, close every connection and remove the socket file (if still ours)."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout)
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(timeout)
        if self._inode is not None:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    self.path.unlink()
            self._inode = None

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            if not _same_user(conn):
                conn.close()
                continue
            conn.settimeout(None)
            t = threading.Thread(target=self._serve, args=(conn,), name="acb-control-conn", daemon=True)
            with self._lock:
                self._conns.add(conn)
                self._threads.add(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn, conn.makefile("rb") as reader:
                while not self._stopping.is_set():
                    line = reader.readline(_MAX_LINE + 1)
                    if not line:
                        return
                    conn.sendall(json.dumps(self._answer(line), sort_keys=True).encode() + b"\n")
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())

    def _answer(self, line: bytes) -> dict[str, Any]:
        if len(line) > _MAX_LINE:
            return {"ok": False, "error": "request too long"}
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "request is not a JSON object"}
        try:
            return {"ok": True, **self._handler(request)}
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # one bad request must not take the channel down
            log.exception("control request %r failed", request.get("op"))
            return {"ok": False, "error": f"internal error: {exc!r}"}


def _same_user(conn: socket.socket) -> bool:
    """Only this OS user may steer its uploads (the 0600 mode says so too, but not from the first instant)."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return True
    creds = conn.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


def _clear_stale(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        # Nobody answers: the process that made it is gone.
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise ServeRunning(f"another `acb serve` already answers on {path}")


# ---------------------------------------------------------------------- client
def control_request(profile: Profile, request: dict[str, Any], *, timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to ``profile``'s running `acb serve`; returns the reply or raises ControlError."""
    path = socket_path(profile)
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise ControlError(f"control socket path is too long for this system: {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NoServe(f"no `acb serve` running for {profile.login}") from exc
        except OSError as exc:
            raise ControlError(f"cannot reach `acb serve` of {profile.login}: {exc.strerror or exc}") from exc
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as reader:
                line = reader.readline(_MAX_LINE + 1)
        except OSError as exc:
            raise ControlError(f"`acb serve` of {profile.login} did not answer: {exc}") from exc
    finally:
        sock.close()
    if not line:
        raise ControlError(f"`acb serve` of {profile.login} closed the control channel")
    try:
        reply = json.loads(line)
    except ValueError as exc:
        raise ControlError(f"`acb serve` of {profile.login} answered garbage") from exc
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error") or "request refused"))
    return dict(reply)


# ---------------------------------------------------------------------- downloads
@dataclass(frozen=True)
class DownloadRow:
    """One download in the downloads folder. ``state``: ``done`` (all ciphertext stored and
    checked, waiting for its key or kept), ``partial`` or ``starting`` (no manifest yet)."""

    sale: str
    doc: str | None
    provider: str | None
    state: str
    segments: int
    segments_total: int | None
    bytes: int
    size: int | None
    open_sale: bool

    def to_json(self) -> dict[str, Any]:
        """Stable keys for ``acb transfers --json``."""
        return asdict(self)


def list_downloads(profile: Profile) -> list[DownloadRow]:
    """This user's downloads, oldest first, read from their journals without touching them.

    A journal being written by a running `acb buy` is read from a copy: opening
    the original would trim what looks like a torn tail but is a record being
    appended.
    """
    folder = profile.dir / "downloads"
    if not folder.is_dir():
        return []
    open_sales = _open_sales(profile)
    journals = sorted(folder.glob("*.journal"), key=lambda p: (_mtime(p), p.name))
    rows = []
    with tempfile.TemporaryDirectory(prefix="acb-journals-") as scratch:
        for journal in journals:
            sale = journal.name[: -len(".journal")]
            rows.append(_read_download(Path(scratch), journal, sale, sale in open_sales.values(), open_sales))
    return rows


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _open_sales(profile: Profile) -> dict[str, str]:
    """doc id -> sale id of the purchases not finished yet (``purchases.json``)."""
    path = profile.dir / "purchases.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _read_download(scratch: Path, journal: Path, sale: str, is_open: bool, open_sales: dict[str, str]) -> DownloadRow:
    doc = next((d for d, s in open_sales.items() if s == sale), None)
    copy = scratch / journal.name
    try:
        shutil.copyfile(journal, copy)
        store = DownloadStore.open_existing(scratch, sale)
    except (OSError, JournalError):
        return DownloadRow(sale, doc, None, "starting", 0, None, 0, None, is_open)
    try:
        assert store.header is not None
        h = store.header.header
        stored = [i for i in store.entries if 0 <= i < h.segment_count]
        nbytes = sum(min(h.segment_size, h.size - i * h.segment_size) for i in stored)
        state = "done" if store.complete else "partial"
        return DownloadRow(sale, h.doc_id, h.provider, state, len(stored), h.segment_count, nbytes, h.size, is_open)
    finally:
        store.close()
        for leftover in scratch.iterdir():
            leftover.unlink()
