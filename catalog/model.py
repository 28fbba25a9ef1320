"""A document as the catalog holds it: what is searched, filtered and shown, checked on the way in."""
from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

from catalog.errors import BadDocument
from catalog.query import FIELD_NAME, topic_path

__all__ = ["CatalogDocument", "METADATA_MAX_BYTES", "METADATA_FIELDS_MAX", "TAGS_MAX", "catalog_document"]

METADATA_MAX_BYTES = 4096  # per document, as canonical JSON: richer than any type's fields, small beside a title
METADATA_FIELDS_MAX = 32
TAGS_MAX = 32
_TYPE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
MetaValue = str | int | list[str]


class CatalogDocument(BaseModel):
    """One provider's offer of one content: the row the projection keeps per published document."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    doc_id: Annotated[StrictStr, Field(min_length=1, max_length=80)]
    title: Annotated[StrictStr, Field(max_length=200)]
    description: Annotated[StrictStr, Field(max_length=4000)] = ""
    topic: StrictStr = "misc"
    type: StrictStr = "other"
    metadata: dict[str, MetaValue] = Field(default_factory=dict)  # per type: book authors, film director, ...
    tags: tuple[str, ...] = ()
    language: Annotated[StrictStr, Field(max_length=16)] = ""
    size: Annotated[StrictInt, Field(ge=0)] = 0
    commitment: Annotated[StrictStr, Field(min_length=1, max_length=128)]  # the content's Merkle root
    price: Annotated[StrictInt, Field(ge=0)]
    provider: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    first_seq: Annotated[StrictInt, Field(ge=0)] = 0
    first_at_ms: Annotated[StrictInt, Field(ge=0)] = 0

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        return topic_path(v)

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        v = v.strip().lower()
        if not _TYPE.fullmatch(v):
            raise ValueError("a document type is one short word, like 'book' or 'film'")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) > TAGS_MAX or any(len(t) > 64 for t in v):
            raise ValueError(f"at most {TAGS_MAX} tags of at most 64 characters")
        return tuple(dict.fromkeys(t.strip().lower() for t in v if t.strip()))

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(v) > METADATA_FIELDS_MAX:
            raise ValueError(f"metadata has too many fields: at most {METADATA_FIELDS_MAX}")
        for name in v:
            if not FIELD_NAME.fullmatch(name):
                raise ValueError(f"{name[:40]!r} is not a metadata field name (lower-case letters, digits, _)")
        size = len(json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode())
        if size > METADATA_MAX_BYTES:
            raise ValueError(f"metadata is too large: {size} bytes, at most {METADATA_MAX_BYTES}")
        return v

    def search_body(self) -> str:
        """The text searched besides title and description: tags, metadata values and topic words."""
        values: list[str] = []
        for value in self.metadata.values():
            values.extend(value if isinstance(value, list) else [str(value)])
        return " ".join([*self.tags, *values, self.topic.replace("/", " "), self.type])


def catalog_document(fields: dict[str, Any]) -> CatalogDocument:
    """A :class:`CatalogDocument` from loose fields, or a :class:`BadDocument` saying what is wrong."""
    try:
        return CatalogDocument.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {str(e['msg']).removeprefix('Value error, ')}"
                             for e in exc.errors()[:3])
        raise BadDocument(f"document {str(fields.get('doc_id'))[:80]!r} refused: {problems}") from exc
