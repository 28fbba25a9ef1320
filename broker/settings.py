"""Where things are: every environment variable ACB reads, with its default, read in this one place.

:class:`Environment` lists the variables (``ACB_`` and the field's name in capitals); an empty
variable counts as unset everywhere. :class:`Settings` is what a process runs with: the
environment resolved against the files under ``ACB_HOME``. The README's table of variables
is :func:`environment_table`.

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
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker.errors import ConfigurationError
from broker.topology import Names

__all__ = ["Environment", "Settings", "load_environment", "environment_table", "ENV_PREFIX", "BROKER_URL_FILE",
           "BROKER_JSON_FILE"]

ENV_PREFIX = "ACB_"
BROKER_URL_FILE = "broker.url"  # under ACB_HOME: the peer's URL
BROKER_JSON_FILE = "system/broker.json"  # under ACB_HOME: every role's URL (written by broker set-up)
_HOW = "run `bash .ci/setup.sh` on the broker's machine or `acb admin broker-setup`"


class Environment(BaseSettings):
    """The environment variables, each with its default and what it is for (the README's table)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, extra="ignore",
                                      validate_default=True)

    home: Path = Field(Path("~/.acb"), description="keys, profiles and default stores")
    prefix: str = Field(Names().prefix, description="broker object names' prefix (one deployment on a vhost)")
    broker_url: str | None = Field(None, repr=False, description=(
        f"a peer's broker URL; else `$ACB_HOME/{BROKER_URL_FILE}`, which the operator hands out"))
    replica_broker_url: str | None = Field(None, repr=False, description=(
        f"a replica's broker URL; else `$ACB_HOME/{BROKER_JSON_FILE}` (`.ci/setup.sh` or "
        "`acb admin broker-setup` writes it)"))
    operator_broker_url: str | None = Field(None, repr=False, description=(
        f"the operator's broker URL; else `$ACB_HOME/{BROKER_JSON_FILE}`"))
    broker_admin_url: str | None = Field(None, repr=False, description=(
        "the management API, `http://USER:PASSWORD@HOST:15672/` (set-up, demo, drill, benchmarks and tests "
        "only); else `$ACB_HOME/system/broker-admin.url`"))
    broker_ca: Path | None = Field(None, description=(
        "amqps: the CA to trust; else `$ACB_HOME/system/tls/ca.pem` or `$ACB_HOME/broker-ca.pem`"))
    broker_cert: Path | None = Field(None, description="amqps: a client certificate for mutual TLS")
    broker_key: Path | None = Field(None, description="amqps: the client certificate's key")
    operator_key: str | None = Field(None, description=(
        "the operator's public key (hex) a peer trusts; else `operator.pub` in `$ACB_HOME` or `$ACB_HOME/system`"))
    store_url: str | None = Field(None, repr=False, description=(
        "a replica's store, `sqlite:///...` or `postgresql+psycopg://...`; `{replica}` in it is replaced by the "
        "replica id and a missing PostgreSQL database is created; else a SQLite file under `$ACB_HOME`"))
    replica_id: str | None = Field(None, description="`acb ledger run`'s replica id; else host name and process id")
    user: str | None = Field(None, description="act as this logged-in profile; else the current one")
    password: str | None = Field(None, repr=False, description=(
        "the password `acb register` and `acb login` use; else asked at the prompt or read from stdin"))
    endpoint: str = Field("127.0.0.1:7700", description="host:port where `acb serve` listens and buyers connect")
    reply_timeout: float = Field(60.0, description="seconds a command waits for the ledger")
    io_timeout: float = Field(60.0, description="seconds a download waits on a silent provider")

    @field_validator("home", "broker_ca", "broker_cert", "broker_key")
    @classmethod
    def _expand(cls, path: Path | None) -> Path | None:
        return None if path is None else path.expanduser()

    @classmethod
    def defaults(cls) -> Environment:
        """Every variable at its default, without reading the environment (for settings built in code)."""
        return cls.model_construct(home=cls.model_fields["home"].default.expanduser())

    @classmethod
    def variable(cls, name: str) -> str:
        """The environment variable behind field ``name`` (``ACB_HOME`` for ``home``)."""
        return ENV_PREFIX + name.upper()


def load_environment() -> Environment:
    """Read the environment now; a value that does not parse is a :class:`ConfigurationError` naming it."""
    try:
        return Environment()
    except ValidationError as exc:
        problems = "; ".join(f"{Environment.variable(str(e['loc'][0]))} {_expected(e['type'])}"
                             for e in exc.errors() if e["loc"])
        raise ConfigurationError(problems or str(exc)) from exc


def _expected(error_type: str) -> str:
    return "must be a number of seconds" if error_type.startswith("float") else f"is not valid ({error_type})"


@dataclass(frozen=True)
class Settings:
    """A process's settings. ``peer_url`` etc. are None when not configured; use the ``*_broker_url``
    properties, which raise :class:`~broker.errors.ConfigurationError` with what to do. ``env`` holds the
    other variables (:class:`Environment`); settings built in code get their defaults."""

    home: Path
    peer_url: str | None = field(repr=False)
    names: Names
    replica_url: str | None = field(default=None, repr=False)
    operator_url: str | None = field(default=None, repr=False)
    env: Environment = field(default_factory=Environment.defaults, repr=False)

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
        """Read the environment once (:class:`Environment`) and the role URLs kept under ``ACB_HOME``."""
        return cls.resolve(load_environment())

    @classmethod
    def resolve(cls, env: Environment) -> Settings:
        """The settings for ``env``: each role's URL from the environment, else from the files under its home."""
        roles = _role_urls(env.home)
        return cls(
            env.home,
            env.broker_url or _read_line(env.home / BROKER_URL_FILE) or roles.get("peer"),
            Names(env.prefix),
            replica_url=env.replica_broker_url or roles.get("replica"),
            operator_url=env.operator_broker_url or roles.get("operator"),
            env=env,
        )


def environment_table() -> str:
    """The README's table of environment variables, in markdown, from :class:`Environment`'s fields."""
    lines = ["| variable | default | what it is for |", "| --- | --- | --- |"]
    for name, info in Environment.model_fields.items():
        default = "none" if info.default is None else f"`{info.default}`"
        lines.append(f"| `{Environment.variable(name)}` | {default} | {info.description} |")
    return "\n".join(lines) + "\n"


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
