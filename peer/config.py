"""Where things are: the environment variables every process reads, with their defaults."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from broker.client import DEFAULT_URL
from broker.topology import Names

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    home: Path
    broker_url: str
    names: Names

    @classmethod
    def from_env(cls) -> Settings:
        """``ACB_HOME`` (default ~/.acb), ``ACB_BROKER_URL``, ``ACB_PREFIX`` (default acb)."""
        home = Path(os.environ.get("ACB_HOME") or Path.home() / ".acb")
        return cls(home, os.environ.get("ACB_BROKER_URL") or DEFAULT_URL, Names(os.environ.get("ACB_PREFIX") or "acb"))
