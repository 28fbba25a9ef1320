"""The answer every command and query gets."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from broker import errors
from broker.codec import canonical, loads_object

__all__ = ["Reply", "parse_reply"]


class Reply(BaseModel):
    """``ok`` with the event sequence (commands) or a result (queries); else a coded error."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: str = "reply"
    schema_version: int = 1
    id: str
    ok: bool
    seq: int | None = None
    result: dict[str, Any] = {}
    error: dict[str, str] | None = None
    served_by: str | None = None

    def to_bytes(self) -> bytes:
        return canonical(self.model_dump(mode="json"))

    def unwrap(self) -> Reply:
        """Return self when ok, else raise the registered rejection."""
        if not self.ok:
            raise errors.rejection(self.error or {})
        return self

    @classmethod
    def failure(cls, id: str, exc: errors.CommandRejected, served_by: str | None = None) -> Reply:
        return cls(id=id, ok=False, error=exc.as_dict(), served_by=served_by)


def parse_reply(body: bytes) -> Reply:
    try:
        return Reply.model_validate(loads_object(body))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise errors.MalformedMessage(f"reply does not parse: {exc}") from exc
