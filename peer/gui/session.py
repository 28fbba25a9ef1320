"""Who is logged in, and a fresh :class:`peer.client.Client` for each piece of work.

A :class:`broker.client.BrokerClient` is not thread-safe, so every job opens
its own and closes it afterwards. The session carries the highest sequence
any job saw, so reads in the next job see this user's own writes.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from broker.client import BrokerClient
from broker.settings import Settings
from broker.trust import Trust
from peer.client import Client
from peer.identity import Identity, Profile

__all__ = ["Session"]


class Session:
    """One user's connection settings and unlocked identity; safe to use from worker threads."""

    def __init__(self, settings: Settings, identity: Identity | None = None) -> None:
        self.settings = settings
        self.identity = identity
        self._lock = threading.Lock()
        self._last_seq = 0
        self._trust: Trust | None = None

    @classmethod
    def resume(cls, settings: Settings, login: str | None = None) -> Session:
        """The session left by a previous login on this machine (``acb login`` or the app), if any."""
        login = login or Profile.current(settings.home)
        identity = Profile(settings.home, login).session() if login else None
        return cls(settings, identity)

    @property
    def login(self) -> str | None:
        return self.identity.login if self.identity else None

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._last_seq

    def saw(self, seq: int) -> None:
        with self._lock:
            self._last_seq = max(self._last_seq, seq)

    @property
    def trust(self) -> Trust:
        """The operator key and roster every client of this session checks answers against (thread-safe)."""
        with self._lock:
            if self._trust is None:
                self._trust = Trust.load(self.settings.home)
            return self._trust

    @contextmanager
    def client(self) -> Iterator[Client]:
        """A client on its own broker connection, for the calling thread only."""
        broker = BrokerClient(self.settings.broker_url, self.settings.names, trust=self.trust)
        client = Client(broker, self.settings.home, self.identity)
        client.last_seq = self.last_seq
        try:
            yield client
            if client.identity is not None and self.identity is None:
                self.identity = client.identity  # register / login unlocked it
        finally:
            self.saw(client.last_seq)
            broker.close()

    def new_client(self) -> Client:
        """A long-lived client the caller owns (the provider service); close ``client.broker`` when done."""
        client = Client(BrokerClient(self.settings.broker_url, self.settings.names, trust=self.trust),
                        self.settings.home, self.identity)
        client.last_seq = self.last_seq
        return client
