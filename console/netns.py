"""A replica behind a link that a drill can cut: its own network namespace, a veth pair, a relay.

RabbitMQ listens on loopback, which a namespace cannot reach, so a small relay
on the host end of the veth forwards the replica's connections to it. Cutting
the link (``ip link set ... down``) leaves the relay's connections to RabbitMQ
open and silent, as a real network cut would: the broker notices only when
heartbeats stop.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

__all__ = ["NetnsLink", "netns_available"]


def netns_available() -> bool:
    """True when we are root and `ip netns` works."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    return subprocess.run(["ip", "netns", "list"], capture_output=True).returncode == 0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


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
    ns: str
    host_ip: str
    ns_ip: str
    upstream: tuple[str, int] = ("127.0.0.1", 5672)
    _listener: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def host_if(self) -> str:
        return f"vh{self.ns[-10:]}"

    @classmethod
    def create(cls, ns: str, index: int, upstream: tuple[str, int] = ("127.0.0.1", 5672)) -> NetnsLink:
        link = cls(ns, f"10.231.{index}.1", f"10.231.{index}.2", upstream)
        peer_if = f"vn{ns[-10:]}"
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        _ip("netns", "add", ns)
        _ip("link", "add", link.host_if, "type", "veth", "peer", "name", peer_if)
        _ip("link", "set", peer_if, "netns", ns)
        _ip("addr", "add", f"{link.host_ip}/30", "dev", link.host_if)
        _ip("link", "set", link.host_if, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{link.ns_ip}/30", "dev", peer_if)
        _ip("netns", "exec", ns, "ip", "link", "set", peer_if, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        link._start_relay()
        return link

    def broker_url(self, url: str) -> str:
        """The same broker URL, reached through this link's relay."""
        parts = urlsplit(url)
        auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit((parts.scheme, f"{auth}{self.host_ip}:{self.upstream[1]}", parts.path, parts.query, ""))

    def _start_relay(self) -> None:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind((self.host_ip, self.upstream[1]))
        lst.listen(64)
        self._listener = lst

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
                for a, b in ((client, server), (server, client)):
                    threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        self._threads.append(t)

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def restore(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def destroy(self) -> None:
        if self._listener is not None:
            self._listener.close()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
