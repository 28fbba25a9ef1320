"""The broker's own set-up: ACB's vhost, three roles with least privilege, their limits and policies.

=========  =================================  ==================================  ==============================
role       configure                          write (publish, bind to)            read (consume, get, bind from)
=========  =================================  ==================================  ==============================
peer       nothing                            ``{p}.commands``, ``{p}.reads``     nothing
replica    ``{p}.*``                          ``{p}.*``, the default exchange     ``{p}.*``
operator   server-named ``amq.gen-*`` queues  ``amq.gen-*``, commands, reads      ``amq.gen-*``, status, ``{p}.dlq``
=========  =================================  ==================================  ==============================

Everyone gets answers over direct reply-to (``amq.rabbitmq.reply-to``), which needs no permission.
A peer therefore cannot declare, bind, delete, consume or read anything: not the log, not the
commands, not anyone's replies. Replies reach reply-to queues through the default exchange, which
only replicas may write to. Policies bound the dead-letter queue (drop the oldest), and the commands
and reads queues (refuse new ones at the broker, so a flood is turned away before any replica: the
commands queue at what the primary drains in a few seconds, see :class:`Limits`).
All peers share one account: they are told apart by the Ed25519 signature on every command and
private query, not by the broker login (see docs/broker-roles.md for the reasons).

Why the management HTTP API rather than ``rabbitmqctl``: it works against a broker on another
machine or in a container (compose), every call is idempotent (a PUT of the same definition) and
takes milliseconds, while each ``rabbitmqctl`` call boots an Erlang VM (about half a second), which
would make a test's throwaway vhost (:func:`scratch_roles`) cost seconds. What the API cannot set
is node-wide configuration: the maximum message size (:data:`MAX_MESSAGE_SIZE`) and the TLS
listener are set by ``.ci/setup.sh`` in ``rabbitmq.conf`` (and at run time on a local broker).

Files (``$ACB_HOME``): ``system/broker-admin.url`` the administrator (management API URL, 0600),
``system/broker.json`` every role's AMQP URL (0600; replicas and the operator read it), and
``broker.url`` the peer URL, the one thing a peer's machine needs.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker import errors
from broker.settings import load_environment
from broker.topology import Names

__all__ = [
    "ROLES", "MAX_MESSAGE_SIZE", "AdminError", "AdminApi", "Limits", "Permission", "BrokerRoles",
    "permissions", "policies", "broker_setup", "remove_roles", "scratch_roles",
    "admin_url_path", "broker_json_path", "peer_url_path", "read_admin_url", "read_roles", "write_roles",
    "amqp_url", "amqp_base", "add_arguments", "cmd_broker_setup", "main",
]

ROLES = ("peer", "replica", "operator")

# The largest legitimate message is a dispute: one segment of at most 4 MiB (broker.segments.
# LARGE_SEGMENT_SIZE) plus its 16-byte tag, base64 (x4/3: 5.6 MB), with its manifest entry and
# the envelope around it (a few KiB). 16 MiB leaves room for a log entry that carries such a
# command again, and refuses anything near RabbitMQ's own default of 128 MiB.
MAX_MESSAGE_SIZE = 16 * 1024 * 1024

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_OBJECT = r"[A-Za-z0-9_-]+"  # the part after "{prefix}." in every name broker.topology.Names makes


class AdminError(errors.BrokerError):
    """The broker's management API refused or could not be reached."""


@dataclass(frozen=True)
class Limits:
    """Per-user connection and channel limits, and the queue bounds applied by policy.

    The peer account is shared by every peer, so its limits cap what all peers together can take
    from the broker (memory, file descriptors): a flood of connections exhausts the peers' pool,
    never the replicas' or the operator's, which have limits of their own.
    """

    peer_connections: int = 1000
    peer_channels: int = 4000
    replica_connections: int = 128  # a replica holds about six (log, commands, reads, status, joins)
    replica_channels: int = 512
    operator_connections: int = 32
    operator_channels: int = 128
    dlq_length: int = 10_000
    dlq_bytes: int = 64 * 1024 * 1024
    # Queries waiting for the backups, by the same rule as commands: what they answer in a few seconds. At
    # 10,000, an overloaded run (acb bench load, 25,000 users) kept the queue full and queries waited past
    # their senders' 30 s: answers nobody read. 2,000 assumes the backups answer several hundred a second
    # together on a shared 2-core machine; their rate alone under overload is not measured yet.
    reads_length: int = 2_000
    reads_bytes: int = 32 * 1024 * 1024
    # Commands waiting for the primary (ready ones; the up to 1,024 it holds ahead do not count). The primary
    # decides roughly 700 to 1,500 commands a second on a 2-core machine, so 2,000 waiting plus the 1,024 held
    # drain in 2 to 4.5 s: a command the broker takes is answered within a few seconds, far inside a client's
    # patience (30 s). Past the bound the broker nacks the publish at once, which the client takes as `busy`
    # and backs off: at twice the capacity, the excess hears `busy` in milliseconds instead of waiting behind
    # a queue it cannot see the end of.
    commands_length: int = 2_000
    commands_bytes: int = 512 * 1024 * 1024

    def user_limits(self, role: str) -> dict[str, int]:
        return {"max-connections": getattr(self, f"{role}_connections"),
                "max-channels": getattr(self, f"{role}_channels")}


@dataclass(frozen=True)
class Permission:
    """RabbitMQ's three regular expressions of one user on one vhost."""

    configure: str
    write: str
    read: str

    def body(self) -> dict[str, str]:
        return {"configure": self.configure, "write": self.write, "read": self.read}


def permissions(names: Names) -> dict[str, Permission]:
    """Each role's permissions for the deployment named ``names`` (see the module's table)."""
    e = re.escape
    own = rf"{e(names.prefix)}\.{_OBJECT}"
    gen = r"amq\.gen-.*"
    send = rf"{e(names.commands)}|{e(names.reads)}"
    return {
        "peer": Permission("^$", rf"^({send})$", "^$"),
        "replica": Permission(rf"^{own}$", rf"^({own}|amq\.default)$", rf"^{own}$"),
        "operator": Permission(rf"^{gen}$", rf"^({gen}|{send})$", rf"^({gen}|{e(names.status)}|{e(names.dlq)})$"),
    }


def policies(names: Names, limits: Limits) -> dict[str, dict[str, Any]]:
    """The queue bounds, as management API policy bodies keyed by policy name."""
    return {
        # Dead letters are evidence to look at, not work: keep the newest, drop the oldest.
        f"{names.prefix}.dlq-bounds": {
            "pattern": rf"^{re.escape(names.dlq)}$", "apply-to": "queues", "priority": 10,
            "definition": {"max-length": limits.dlq_length, "max-length-bytes": limits.dlq_bytes,
                           "overflow": "drop-head"},
        },
        # Commands wait for the primary; a flood that outruns it is refused at the door (a nack, which clients
        # take as `busy`) once the queue holds what the primary drains in a few seconds (Limits.commands_length).
        f"{names.prefix}.commands-bounds": {
            "pattern": rf"^{re.escape(names.commands)}$", "apply-to": "queues", "priority": 10,
            "definition": {"max-length": limits.commands_length, "max-length-bytes": limits.commands_bytes,
                           "overflow": "reject-publish"},
        },
        # A full reads queue refuses new queries (the publisher's confirm is a nack) rather than
        # dropping ones that already wait: a flood is turned away at the door.
        f"{names.prefix}.reads-bounds": {
            "pattern": rf"^{re.escape(names.reads)}$", "apply-to": "queues", "priority": 10,
            "definition": {"max-length": limits.reads_length, "max-length-bytes": limits.reads_bytes,
                           "overflow": "reject-publish"},
        },
    }


# -- URLs ------------------------------------------------------------------------------------------

def amqp_base(url: str) -> str:
    """``scheme://host:port`` of an AMQP URL: where the broker is, without who or which vhost."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise errors.ConfigurationError(f"not an amqp:// or amqps:// URL: {parts.scheme}://…")
    hostport = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{hostport}"


def amqp_url(base: str, user: str, password: str, vhost: str) -> str:
    """An AMQP URL for ``user`` on ``vhost`` at ``base`` (``amqp://host:port``)."""
    parts = urllib.parse.urlsplit(amqp_base(base))
    q = urllib.parse.quote
    return f"{parts.scheme}://{q(user, safe='')}:{q(password, safe='')}@{parts.netloc}/{q(vhost, safe='')}"


def _credentials(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or "")


def _safe(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


# -- the management API ----------------------------------------------------------------------------

class AdminApi:
    """A small client of RabbitMQ's management HTTP API, as one administrator.

    ``url`` is ``http(s)://USER:PASSWORD@HOST:15672/``.
    """

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise errors.ConfigurationError("the broker administrator URL must look like "
                                            "http://USER:PASSWORD@HOST:15672/")
        self.url = url
        self.user, password = _credentials(url)
        self.host = parts.hostname
        self._base = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path.rstrip('/')}/api"
        token = base64.b64encode(f"{self.user}:{password}".encode()).decode()
        self._auth = f"Basic {token}"
        self._timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One API call; returns the decoded JSON answer (None when empty)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self._base + path, data=data, method=method,
                                     headers={"Authorization": self._auth, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            reason = _reason(exc)
            if exc.code == 401:
                raise AdminError(f"the broker at {_safe(self.url)} refused the administrator {self.user!r}: "
                                 "wrong user name or password") from exc
            raise AdminError(f"the broker refused {method} {path}: {exc.code} {reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise AdminError(f"cannot reach the broker's management API at {_safe(self.url)} "
                             "(is the rabbitmq_management plugin enabled?)") from exc
        return json.loads(raw) if raw.strip() else None

    def put(self, path: str, body: Any) -> None:
        self.request("PUT", path, body)

    def delete(self, path: str) -> bool:
        """Delete a resource; False when it did not exist."""
        try:
            self.request("DELETE", path)
        except AdminError as exc:
            if isinstance(exc.__cause__, urllib.error.HTTPError) and exc.__cause__.code == 404:
                return False
            raise
        return True

    def whoami(self) -> dict[str, Any]:
        """Who the API thinks we are; raises when the URL or the credentials do not work."""
        answer = self.request("GET", "/whoami")
        return answer if isinstance(answer, dict) else {}

    def default_amqp_base(self) -> str:
        """The AMQP listener on the management API's host (5672)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"amqp://{host}:5672"


def _reason(exc: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(exc.read() or b"{}")
        return str(detail.get("reason") or detail.get("error") or exc.reason)
    except (ValueError, OSError):
        return str(exc.reason)


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


# -- the roles -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BrokerRoles:
    """One deployment's vhost, prefix and the AMQP URL of each role (passwords included)."""

    vhost: str
    prefix: str
    urls: dict[str, str] = field(repr=False)
    admin_url: str | None = field(default=None, repr=False)  # the administrator on this vhost (scratch only)

    @property
    def names(self) -> Names:
        return Names(self.prefix)

    @property
    def peer_url(self) -> str:
        return self.urls["peer"]

    @property
    def replica_url(self) -> str:
        return self.urls["replica"]

    @property
    def operator_url(self) -> str:
        return self.urls["operator"]

    def users(self) -> dict[str, str]:
        """Role -> broker user name."""
        return {role: _credentials(url)[0] for role, url in self.urls.items()}

    def to_json(self) -> dict[str, Any]:
        return {"vhost": self.vhost, "prefix": self.prefix, "urls": dict(self.urls),
                "max_message_size": MAX_MESSAGE_SIZE}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BrokerRoles:
        urls = data.get("urls")
        if not (isinstance(urls, dict) and all(isinstance(urls.get(r), str) for r in ROLES)):
            raise errors.ConfigurationError("broker.json has no URL for every role (peer, replica, operator)")
        return cls(str(data["vhost"]), str(data["prefix"]), {r: urls[r] for r in ROLES})


def broker_setup(
    api: AdminApi,
    *,
    vhost: str = "acb",
    prefix: str = "acb",
    amqp: str | None = None,
    user_prefix: str | None = None,
    passwords: dict[str, str] | None = None,
    limits: Limits = Limits(),
) -> BrokerRoles:
    """Create (or bring back in line) ``vhost`` with the three roles, their limits and the policies.

    Idempotent: every call PUTs the same definitions. Users are ``{user_prefix}-peer`` etc.
    (``user_prefix`` defaults to the vhost), with ``passwords`` kept when given and fresh random
    ones otherwise. ``amqp`` (``amqp(s)://host:port``) is where clients reach the broker; by
    default port 5672 on the management API's host. The administrator gets full rights on the
    vhost, so it can declare and delete objects there (tests, the demo's clean-up).
    """
    if not _PREFIX_RE.match(prefix):
        raise errors.ConfigurationError(f"prefix {prefix!r}: use letters, digits, '-' and '_' only")
    base = amqp_base(amqp or api.default_amqp_base())
    owner = user_prefix or (vhost if _PREFIX_RE.match(vhost) else "acb")
    names = Names(prefix)
    kept = passwords or {}
    api.put(f"/vhosts/{_q(vhost)}", {"description": f"ACB ({prefix})"})
    _wait_vhost(api, vhost)
    api.put(f"/permissions/{_q(vhost)}/{_q(api.user)}", Permission(".*", ".*", ".*").body())
    urls: dict[str, str] = {}
    perms = permissions(names)
    for role in ROLES:
        user = f"{owner}-{role}"
        password = kept.get(role) or secrets.token_urlsafe(24)
        api.put(f"/users/{_q(user)}", {"password": password, "tags": ""})
        api.put(f"/permissions/{_q(vhost)}/{_q(user)}", perms[role].body())
        for name, value in limits.user_limits(role).items():
            api.put(f"/user-limits/{_q(user)}/{name}", {"value": value})
        urls[role] = amqp_url(base, user, password, vhost)
    for name, body in policies(names, limits).items():
        api.put(f"/policies/{_q(vhost)}/{_q(name)}", body)
    return BrokerRoles(vhost, prefix, urls)


def _wait_vhost(api: AdminApi, vhost: str, timeout: float = 10.0) -> None:
    # A new vhost starts its processes asynchronously on some versions: wait until it reports running.
    deadline = time.monotonic() + timeout
    while True:
        try:
            # Without stats: the management stats database can lose a new vhost under load (a 500, badkey in
            # rabbit_mgmt_db:vhost_stats, seen here for minutes), while the vhost itself runs fine.
            info = api.request("GET", f"/vhosts/{_q(vhost)}?disable_stats=true")
        except AdminError as exc:
            # A 500 while the new vhost is starting: ask again.
            if not (isinstance(exc.__cause__, urllib.error.HTTPError) and exc.__cause__.code == 500):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        state = (info or {}).get("cluster_state") or {}
        if not state or all(s == "running" for s in state.values()):
            return
        if time.monotonic() > deadline:
            raise AdminError(f"vhost {vhost} did not start within {timeout:.0f} s: {state}")
        time.sleep(0.05)


def remove_roles(api: AdminApi, roles: BrokerRoles) -> None:
    """Delete the vhost (and everything in it) and the role users: the clean-up of a scratch set-up."""
    _remove(api, roles.vhost, roles.users().values())


def _remove(api: AdminApi, vhost: str, users: Iterable[str]) -> None:
    # Deleting the vhost closes its connections and removes its objects; a missing one is fine.
    api.delete(f"/vhosts/{_q(vhost)}")
    for user in users:
        api.delete(f"/users/{_q(user)}")


@contextmanager
def scratch_roles(api: AdminApi, *, prefix: str = "acb", label: str = "t", amqp: str | None = None,
                  limits: Limits = Limits(), keep: bool = False) -> Iterator[BrokerRoles]:
    """A throwaway vhost ``acb-{label}-<random>`` with its own three role users, removed on exit.

    For tests and the demo: nothing is shared with the real deployment or another run, and
    deleting the vhost closes every connection and removes every object made in it. ``keep``
    leaves it all in place (``acb demo --keep``), to be looked at and removed by hand.
    """
    vhost = f"acb-{label}-{secrets.token_hex(5)}"
    base = amqp_base(amqp or api.default_amqp_base())
    failed = False
    try:
        made = broker_setup(api, vhost=vhost, prefix=prefix, amqp=base, user_prefix=vhost, limits=limits)
        admin = amqp_url(base, api.user, _credentials(api.url)[1], vhost)
        yield BrokerRoles(made.vhost, made.prefix, made.urls, admin)
    except BaseException:
        failed = True
        raise
    finally:
        if not keep:
            try:
                _remove(api, vhost, [f"{vhost}-{role}" for role in ROLES])
            except AdminError:
                # When the body failed, its error is the news; a clean-up that could not finish must not hide it.
                if not failed:
                    raise


# -- files -----------------------------------------------------------------------------------------

def admin_url_path(home: Path) -> Path:
    return home / "system" / "broker-admin.url"


def broker_json_path(home: Path) -> Path:
    return home / "system" / "broker.json"


def peer_url_path(home: Path) -> Path:
    return home / "broker.url"


def read_admin_url(home: Path) -> str:
    """The administrator's management API URL: ``ACB_BROKER_ADMIN_URL``, else ``system/broker-admin.url``."""
    url = load_environment().broker_admin_url
    if url:
        return url.strip()
    path = admin_url_path(home)
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise errors.ConfigurationError(
            f"no broker administrator: {path} is missing; run `bash .ci/setup.sh` on the broker's machine "
            "or give ACB_BROKER_ADMIN_URL=http://USER:PASSWORD@HOST:15672/") from exc


def read_roles(home: Path) -> BrokerRoles | None:
    """The roles written by the last set-up, or None when there is no ``system/broker.json``."""
    path = broker_json_path(home)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise errors.ConfigurationError(f"{path} is unreadable: run `acb admin broker-setup` again") from exc
    return BrokerRoles.from_json(data)


def write_roles(home: Path, roles: BrokerRoles) -> None:
    """Write ``system/broker.json`` (every role) and ``broker.url`` (the peer's), both 0600."""
    _write_private(broker_json_path(home), json.dumps(roles.to_json(), indent=2, sort_keys=True) + "\n")
    _write_private(peer_url_path(home), roles.peer_url + "\n")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _kept_passwords(home: Path) -> dict[str, str]:
    try:
        roles = read_roles(home)
    except errors.ConfigurationError:
        return {}
    return {} if roles is None else {role: _credentials(url)[1] for role, url in roles.urls.items()}


# -- command line ----------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``acb admin broker-setup``."""
    parser.add_argument("--admin-url", help="the administrator, http://USER:PASSWORD@HOST:15672/ (default: "
                        "ACB_BROKER_ADMIN_URL, else $ACB_HOME/system/broker-admin.url)")
    parser.add_argument("--vhost", default="acb", help="ACB's virtual host (default acb)")
    parser.add_argument("--prefix", help="broker object names' prefix (default ACB_PREFIX, else acb)")
    parser.add_argument("--amqp-url", help="where clients reach the broker, amqp(s)://HOST:PORT "
                        "(default: port 5672 on the management API's host)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (no passwords)")


def cmd_broker_setup(args: argparse.Namespace, settings: Any) -> int:
    """``acb admin broker-setup``: set the roles up and write where every process finds its URL."""
    home = Path(settings.home)
    api = AdminApi(args.admin_url or read_admin_url(home))
    prefix = args.prefix or getattr(getattr(settings, "names", None), "prefix", None) or "acb"
    roles = broker_setup(api, vhost=args.vhost, prefix=prefix, amqp=args.amqp_url, passwords=_kept_passwords(home))
    write_roles(home, roles)
    users = roles.users()
    if args.json:
        print(json.dumps({"vhost": roles.vhost, "prefix": roles.prefix, "users": users,
                          "broker_json": str(broker_json_path(home)), "peer_url_file": str(peer_url_path(home)),
                          "max_message_size": MAX_MESSAGE_SIZE}, sort_keys=True))
    else:
        print(f"broker roles ready on vhost {roles.vhost} (prefix {roles.prefix}): "
              + ", ".join(f"{role} {user}" for role, user in users.items())
              + f"; URLs in {broker_json_path(home)}, the peer's in {peer_url_path(home)}")
    return 0


def _check_streams(args: argparse.Namespace, home: Path) -> int:
    # A node upgraded from before 3.9 keeps streams off until its feature flag is enabled.
    api = AdminApi(args.admin_url or read_admin_url(home))
    roles = read_roles(home)
    assert roles is not None
    queue = f"/queues/{_q(roles.vhost)}/{_q(f'{roles.prefix}.setup-stream-check-{os.getpid()}')}"
    try:
        api.put(queue, {"durable": True, "auto_delete": False, "arguments": {"x-queue-type": "stream"}})
    except AdminError as exc:
        print(f"acb: stream queues do not work on this broker: {exc}", file=sys.stderr)
        return 3
    api.delete(queue)
    return 0


@dataclass(frozen=True)
class _Home:
    home: Path
    names: Names


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m broker.admin broker-setup|check-admin|tls-files ...`` (used by .ci/setup.sh)."""
    parser = argparse.ArgumentParser(prog="python -m broker.admin", description="set up ACB's broker")
    sub = parser.add_subparsers(dest="cmd", required=True)
    setup = sub.add_parser("broker-setup", help="vhost, role users, permissions, limits, policies")
    add_arguments(setup)
    setup.add_argument("--check-streams", action="store_true",
                       help="then declare and delete a stream queue; exit 3 when streams do not work")
    check = sub.add_parser("check-admin", help="exit 0 when the administrator URL works")
    check.add_argument("--admin-url")
    tls = sub.add_parser("tls-files", help="a CA, the broker's server pair and a client pair, unless present")
    tls.add_argument("--dir", type=Path, help="default $ACB_HOME/system/tls")
    tls.add_argument("--host", action="append", help="a name or address of the broker (repeatable)")
    args = parser.parse_args(argv)
    try:
        env = load_environment()
        home = env.home
        if args.cmd == "broker-setup":
            code = cmd_broker_setup(args, _Home(home, Names(env.prefix)))
            return code or (_check_streams(args, home) if args.check_streams else 0)
        if args.cmd == "check-admin":
            AdminApi(args.admin_url or read_admin_url(home), timeout=3.0).whoami()
            return 0
        # lazy: cryptography's x509 takes a fiftieth of a second; only tls-files needs it, not broker-setup
        from broker.certs import ensure_tls_files

        files, wrote = ensure_tls_files(args.dir or home / "system" / "tls", args.host)
        print(f"{'wrote' if wrote else 'kept'} TLS files in {files.directory}")
        return 0
    except errors.BrokerError as exc:
        print(f"acb: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
