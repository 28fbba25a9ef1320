"""A replica behind a link that a drill can cut: its own network namespace, a veth pair, a relay.

RabbitMQ may listen on loopback only, which a namespace cannot reach, so a small
relay on the host end of the veth forwards the replica's connections to it.
Cutting the link (``ip link set ... down``) leaves the relay's connections to
RabbitMQ open and silent, as a real network cut would: the broker notices only
when heartbeats stop.

The relay listens on a port of its own choosing on the veth's host address, so
it never clashes with the broker, whether that listens on loopback only or on
every address (Debian's default); :meth:`NetnsLink.broker_url` tells the
namespace side where it is. A link that fails half-way is undone before the
error is raised, and every error carries ``ip``'s own message.
"""
from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

from console.errors import ConsoleError

__all__ = ["NetnsError", "NetnsLink", "netns_available"]

_PROBE_NS = f"acbprobe{os.getpid()}"


class NetnsError(ConsoleError):
    """An ``ip`` command failed, or ``ip netns exec`` cannot run here; the message says why."""


def _ip(*args: str) -> None:
    """Run ``ip ARGS``; on failure raise :class:`NetnsError` with ip's own stderr."""
    try:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:
        raise NetnsError("the `ip` command is not installed (Debian: apt-get install iproute2)") from exc
    except subprocess.CalledProcessError as exc:
        said = (exc.stderr or exc.stdout or "").strip() or "no message"
        raise NetnsError(f"ip {' '.join(args)} failed (exit status {exc.returncode}): {said}") from exc
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"ip {' '.join(args)} did not finish within {exc.timeout} s") from exc


def _ip_quiet(*args: str) -> None:
    """Run ``ip ARGS`` for clean-up, where a missing object is not an error."""
    subprocess.run(["ip", *args], capture_output=True, timeout=30)


def _check_exec(ns: str) -> None:
    """Fail clearly unless a command can run inside namespace ``ns``.

    ``ip netns exec`` makes a private mount namespace and remounts ``/`` and
    ``/sys``; inside a chroot whose root is not a mount point that fails, and
    everything after it would fail less clearly.
    """
    try:
        _ip("netns", "exec", ns, "true")
    except NetnsError as exc:
        raise NetnsError(f"`ip netns exec` does not work here ({exc}); in a chroot, bind-mount the root "
                         f"onto itself first") from exc


@functools.cache
def netns_available() -> bool:
    """True when we are root and a command can run in a namespace of our own (``ip netns exec``)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    try:
        _ip("netns", "add", _PROBE_NS)
    except NetnsError:
        return False
    try:
        _check_exec(_PROBE_NS)
        return True
    except NetnsError:
        return False
    finally:
        _ip_quiet("netns", "del", _PROBE_NS)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@dataclass
class NetnsLink:
    """Namespace ``ns`` joined to the host by a veth pair (``host_ip`` here, ``ns_ip`` there) and a relay.

    Use :meth:`create`, and :meth:`destroy` (or ``with``) when done.
    """

    ns: str
    host_ip: str
    ns_ip: str
    upstream: tuple[str, int] = ("127.0.0.1", 5672)
    relay_port: int = 0
    _listener: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _conns: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def host_if(self) -> str:
        """The host end of the veth pair."""
        return f"vh{self.ns[-10:]}"

    @property
    def peer_if(self) -> str:
        """The namespace end of the veth pair."""
        return f"vn{self.ns[-10:]}"

    @classmethod
    def create(cls, ns: str, index: int, upstream: tuple[str, int] = ("127.0.0.1", 5672)) -> NetnsLink:
        """Make namespace ``ns`` on 10.231.``index``.0/30 with a relay to ``upstream``.

        Any leftover of the same name is removed first; if a step fails, what was
        made is removed again and :class:`NetnsError` says which step and why.
        """
        link = cls(ns, f"10.231.{index}.1", f"10.231.{index}.2", upstream)
        link._remove()  # a namespace or veth of this name left by a killed run
        try:
            _ip("netns", "add", ns)
            _check_exec(ns)
            _ip("link", "add", link.host_if, "type", "veth", "peer", "name", link.peer_if)
            _ip("link", "set", link.peer_if, "netns", ns)
            _ip("addr", "add", f"{link.host_ip}/30", "dev", link.host_if)
            _ip("link", "set", link.host_if, "up")
            _ip("netns", "exec", ns, "ip", "addr", "add", f"{link.ns_ip}/30", "dev", link.peer_if)
            _ip("netns", "exec", ns, "ip", "link", "set", link.peer_if, "up")
            _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
            link._start_relay()
        except BaseException:
            link.destroy()
            raise
        return link

    def __enter__(self) -> NetnsLink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.destroy()

    def broker_url(self, url: str) -> str:
        """The same broker URL, reached through this link's relay."""
        parts = urlsplit(url)
        auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit((parts.scheme, f"{auth}{self.host_ip}:{self.relay_port}", parts.path, parts.query, ""))

    def _start_relay(self) -> None:
        lst = socket.socket()
        try:
            # Port 0: the kernel picks one free on this address, so no broker listener can be in the way.
            lst.bind((self.host_ip, 0))
            lst.listen(64)
        except OSError as exc:
            lst.close()
            raise NetnsError(f"the relay cannot listen on {self.host_ip}: {exc}") from exc
        self._listener = lst
        self.relay_port = int(lst.getsockname()[1])

        def accept() -> None:
            while True:
                try:
                    client, _ = lst.accept()
                except OSError:
                    return
                try:
                    server = socket.create_connection(self.upstream)
                except OSError:
                    client.close()
                    continue
                with self._lock:
                    self._conns.update((client, server))
                for a, b in ((client, server), (server, client)):
                    threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        self._threads.append(t)

    def cut(self) -> None:
        """Pull the cable: the host end goes down, connections fall silent."""
        _ip("link", "set", self.host_if, "down")

    def restore(self) -> None:
        """Plug the cable back in."""
        _ip("link", "set", self.host_if, "up")

    def destroy(self) -> None:
        """Close the relay and its connections, delete the namespace and the veth; safe to call twice."""
        if self._listener is not None:
            # shutdown wakes the accept() blocked in the relay thread; close alone may not.
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, set()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(5)
        self._threads.clear()
        self._remove()

    def _remove(self) -> None:
        # Deleting the namespace deletes the veth pair with it; the second delete is for a pair
        # whose namespace end never got there.
        _ip_quiet("netns", "del", self.ns)
        _ip_quiet("link", "del", self.host_if)
