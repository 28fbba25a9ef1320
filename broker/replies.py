"""The answer every command and query gets."""
from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict

from broker import errors
from broker.codec import canonical, loads_object
from broker.trust import tagged

__all__ = ["Reply", "parse_reply"]


class Reply(BaseModel):
    """``ok`` with the event sequence (commands) or a result (queries); else a coded error.

    Every reply a replica sends is signed by it (``signer``, ``signature``) and bound to the
    request it answers (``request``: the SHA-256 of the request's bytes), so a client believes
    only an answer a certified replica gave to exactly what it asked (see broker.trust).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: str = "reply"
    schema_version: int = 1
    id: str
    ok: bool
    seq: int | None = None
    result: dict[str, Any] = {}
    error: dict[str, str] | None = None
    served_by: str | None = None
    request: str | None = None
    roster_serial: int | None = None  # the newest operator roster the signer knows: clients catch up from it
    signer: str | None = None
    signature: str | None = None

    def to_bytes(self) -> bytes:
        return canonical(self.model_dump(mode="json"))

    def signing_bytes(self) -> bytes:
        return tagged("reply", canonical(self.model_dump(mode="json", exclude={"signature"})))

    def signed_by(self, key: Ed25519PrivateKey, signer: str, request: str, roster_serial: int | None = None) -> Reply:
        """This reply bound to ``request`` (a digest) and signed by replica ``signer``."""
        bound = self.model_copy(update={"request": request, "signer": signer, "signature": None,
                                        "roster_serial": roster_serial})
        return bound.model_copy(update={"signature": key.sign(bound.signing_bytes()).hex()})

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
