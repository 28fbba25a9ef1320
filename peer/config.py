"""Where things are: the environment variables every process reads, with their defaults.

Each role reaches the broker with its own account (broker/admin.py, docs/broker-roles.md):

=========  ==========================  ===========================================
role       environment                 else
=========  ==========================  ===========================================
peer       ``ACB_BROKER_URL``          ``$ACB_HOME/broker.url``
replica    ``ACB_REPLICA_BROKER_URL``  ``$ACB_HOME/system/broker.json`` (replica)
operator   ``ACB_OPERATOR_BROKER_URL`` ``$ACB_HOME/system/broker.json`` (operator)
=========  ==========================  ===========================================

Nothing falls back to a default account: a role with no URL is an error that says how to get one,
raised only when that role's URL is asked for (``acb init`` or ``acb --help`` need none).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from broker.errors import ConfigurationError
from broker.topology import Names

__all__ = ["Settings", "BROKER_URL_FILE", "BROKER_JSON_FILE"]

BROKER_URL_FILE = "broker.url"  # under ACB_HOME: the peer's URL
BROKER_JSON_FILE = "system/broker.json"  # under ACB_HOME: every role's URL (written by broker set-up)
_HOW = "run `bash .ci/setup.sh` on the broker's machine or `acb admin broker-setup`"


@dataclass(frozen=True)
class Settings:
    """A process's settings. ``peer_url`` etc. are None when not configured; use the ``*_broker_url``
    properties, which raise :class:`~broker.errors.ConfigurationError` with what to do."""

    home: Path
    peer_url: str | None = field(repr=False)
    names: Names
    replica_url: str | None = field(default=None, repr=False)
    operator_url: str | None = field(default=None, repr=False)

    @property
    def broker_url(self) -> str:
        """The peer role's AMQP URL: what clients, providers and the GUI use."""
        if not self.peer_url:
            raise ConfigurationError(
                f"no broker URL: set ACB_BROKER_URL or put the peer URL in {self.home / BROKER_URL_FILE} ({_HOW})")
        return self.peer_url

    @property
    def replica_broker_url(self) -> str:
        """The replica role's AMQP URL: what ``acb ledger run`` uses."""
        if not self.replica_url:
            raise ConfigurationError(
                f"no broker URL for a replica: set ACB_REPLICA_BROKER_URL or {_HOW} "
                f"(it writes {self.home / BROKER_JSON_FILE})")
        return self.replica_url

    @property
    def operator_broker_url(self) -> str:
        """The operator role's AMQP URL: what ``acb status``, the console and operator commands use."""
        if not self.operator_url:
            raise ConfigurationError(
                f"no broker URL for the operator: set ACB_OPERATOR_BROKER_URL or {_HOW} "
                f"(it writes {self.home / BROKER_JSON_FILE})")
        return self.operator_url

    @classmethod
    def from_env(cls) -> Settings:
        """``ACB_HOME`` (default ~/.acb), the three roles' URLs (see the module's table), ``ACB_PREFIX`` (acb)."""
        home = Path(os.environ.get("ACB_HOME") or Path.home() / ".acb")
        roles = _role_urls(home)
        return cls(
            home,
            os.environ.get("ACB_BROKER_URL") or _read_line(home / BROKER_URL_FILE) or roles.get("peer"),
            Names(os.environ.get("ACB_PREFIX") or "acb"),
            replica_url=os.environ.get("ACB_REPLICA_BROKER_URL") or roles.get("replica"),
            operator_url=os.environ.get("ACB_OPERATOR_BROKER_URL") or roles.get("operator"),
        )


def _read_line(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _role_urls(home: Path) -> dict[str, str]:
    # system/broker.json is readable only by the machine's operator (0600): elsewhere it is absent
    # or unreadable, and only the roles asked for later complain.
    try:
        data = json.loads((home / BROKER_JSON_FILE).read_text())
    except (OSError, ValueError):
        return {}
    urls = data.get("urls") if isinstance(data, dict) else None
    return {k: v for k, v in urls.items() if isinstance(v, str)} if isinstance(urls, dict) else {}
