"""Asserting that the ledger refused a command, and that the refusal changed nothing."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

from broker import errors
from ledger.model import state_hash

if TYPE_CHECKING:
    from tests.conftest import Book

__all__ = ["refused"]


def refused(book: Book, payload: BaseModel, sender: str, code: str, match: str | None = None, **kw: Any) -> str:
    """Submit a command that must be refused: the code is right and nothing at all changed."""
    before, digest, rows = book.state, state_hash(book.state), len(book.rows)
    with pytest.raises(errors.CommandRejected) as info:
        book.submit(payload, sender, **kw)
    assert info.value.code == code, str(info.value)
    assert type(info.value) is errors.CODES[code]
    if match is not None:
        assert match in info.value.message
    assert book.state is before
    assert state_hash(book.state) == digest
    assert len(book.rows) == rows
    return info.value.message
