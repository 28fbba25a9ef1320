"""What a person may ask the catalog: the typed search query, its validation, and the page cursor.

User text never reaches SQL or an FTS ``MATCH`` as written. It is cut into words (letters and digits;
everything else, FTS operators, quotes and SQL meta-characters included, separates words) and each
word is handed to the engine as a quoted prefix term through a bound parameter. So ``"O'Brien" OR x*``
searches the words ``o``, ``brien``, ``or`` and ``x``, and nothing a person types can change a query's
shape. What cannot be answered sanely (nothing to look for, too much text, a page of a thousand, a
cursor we did not sign) is refused with a :class:`~catalog.errors.BadQuery` saying what to change.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator

from catalog.errors import BadCursor, BadQuery

__all__ = ["Sort", "SearchQuery", "CursorCodec", "parse_query", "terms", "topic_path",
           "TEXT_MAX", "TERMS_MAX", "PAGE_MAX", "PAGE_DEFAULT", "METADATA_FILTERS_MAX", "FIELD_NAME"]

TEXT_MAX = 256  # characters: a search box, not a document
TERMS_MAX = 16
PAGE_MAX = 100
PAGE_DEFAULT = 20
METADATA_FILTERS_MAX = 8
METADATA_VALUE_MAX = 128
PRICE_MAX = 10**15  # minor units; beyond any balance the ledger allows
CURSOR_MAX = 512
FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_TERM = re.compile(r"[^\W_]+", re.UNICODE)  # letters and digits: what both engines' tokenizers keep
_TOPIC = re.compile(r"[^\W_][\w-]*(/[^\W_][\w-]*)*", re.UNICODE)
_TYPE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def terms(text: str) -> list[str]:
    """The lower-cased words of ``text`` the engines search for, first occurrence first, no repeats."""
    return list(dict.fromkeys(w.lower() for w in _TERM.findall(text)))


def topic_path(topic: str) -> str:
    """``topic`` as stored and filtered on: lower case, no surrounding slashes or blanks; refused if malformed."""
    path = topic.strip().strip("/").lower()
    if len(path) > 120 or not _TOPIC.fullmatch(path):
        raise ValueError("a topic is words separated by '/', like 'datasets/archive' (at most 120 characters)")
    return path


class Sort(StrEnum):
    RELEVANCE = "relevance"  # best text match first (BM25 on SQLite, ts_rank on PostgreSQL)
    PRICE = "price"  # cheapest offer first
    POPULARITY = "popularity"  # most sales of the content, over all its providers, first
    NEWEST = "newest"  # most recently first published first


class SearchQuery(BaseModel):
    """One search: words, filters, a sort and a page. Frozen, so it can key caches and cursors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: StrictStr = ""
    topic: StrictStr | None = None  # a subtree: "datasets" includes "datasets/archive"
    type: StrictStr | None = None
    metadata: tuple[tuple[str, str | int], ...] = ()  # field = value pairs, every one must hold
    min_price: Annotated[StrictInt, Field(ge=0, le=PRICE_MAX)] | None = None
    max_price: Annotated[StrictInt, Field(ge=0, le=PRICE_MAX)] | None = None
    provider: StrictStr | None = None
    online_only: StrictBool = False
    sort: Sort = Sort.RELEVANCE
    page_size: Annotated[StrictInt, Field(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT
    cursor: Annotated[StrictStr, Field(max_length=CURSOR_MAX)] | None = None

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        if len(v) > TEXT_MAX:
            raise ValueError(f"the search text is too long: at most {TEXT_MAX} characters")
        if _CONTROL.search(v):
            raise ValueError("the search text holds control characters")
        if v.strip() and not terms(v):
            raise ValueError("the search text has no words in it (operators, quotes and punctuation are ignored)")
        if len(terms(v)) > TERMS_MAX:
            raise ValueError(f"too many words to search for: at most {TERMS_MAX}")
        return v

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str | None) -> str | None:
        return None if v is None else topic_path(v)

    @field_validator("type")
    @classmethod
    def _type(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip().lower()
        if not _TYPE.fullmatch(v):
            raise ValueError("a document type is one short word, like 'book' or 'film'")
        return v

    @field_validator("provider")
    @classmethod
    def _provider(cls, v: str | None) -> str | None:
        if v is not None and (not v or len(v) > 64 or _CONTROL.search(v)):
            raise ValueError("a provider is a login of at most 64 characters")
        return v

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, v: Any) -> Any:
        pairs = list(v.items()) if isinstance(v, Mapping) else v
        if not isinstance(pairs, list | tuple):
            raise ValueError("metadata filters are field = value pairs")
        if len(pairs) > METADATA_FILTERS_MAX:
            raise ValueError(f"too many metadata filters: at most {METADATA_FILTERS_MAX}")
        out = []
        for pair in pairs:
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise ValueError("metadata filters are field = value pairs")
            name, value = pair
            if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
                raise ValueError(f"{str(name)[:40]!r} is not a metadata field name (lower-case letters, digits, _)")
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise ValueError(f"the metadata filter {name} needs a text or whole-number value")
            if isinstance(value, str) and (len(value) > METADATA_VALUE_MAX or _CONTROL.search(value)):
                raise ValueError(f"the metadata filter {name} is too long: at most {METADATA_VALUE_MAX} characters")
            out.append((name, value))
        return tuple(sorted(out, key=lambda p: p[0]))

    def model_post_init(self, _context: Any) -> None:
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise ValueError("the lowest price asked is above the highest")
        # A search with nothing to narrow it would group every document: refused rather than slow.
        if not (self.words or self.topic or self.type or self.provider):
            raise ValueError("say what to look for: some words, a topic, a type or a provider")

    @property
    def words(self) -> list[str]:
        """The words searched for (see :func:`terms`)."""
        return terms(self.text)

    @property
    def effective_sort(self) -> Sort:
        """The sort used: relevance means nothing without words, so such a search shows the newest first."""
        return Sort.NEWEST if self.sort is Sort.RELEVANCE and not self.words else self.sort

    def fingerprint(self) -> str:
        """What a cursor is bound to: the search itself, whatever page of it and in whatever page size."""
        fields = self.model_dump(mode="json", exclude={"cursor", "page_size", "sort"})
        fields["sort"] = self.effective_sort.value
        fields["words"] = self.words  # the same words typed differently are the same search
        fields.pop("text")
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def parse_query(data: Mapping[str, Any]) -> SearchQuery:
    """A :class:`SearchQuery` from loose fields (a CLI's, a message's), or a :class:`BadQuery` saying what is wrong."""
    try:
        return SearchQuery.model_validate(dict(data))
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:3]:
            where = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "is not something a search can filter on"
            elif err["type"] in ("greater_than_equal", "less_than_equal") and where == "page_size":
                msg = f"a page holds 1 to {PAGE_MAX} results"
            elif err["type"] in ("greater_than_equal", "less_than_equal"):
                msg = f"a price is a whole number of minor units from 0 to {PRICE_MAX}"
            elif err["type"] in ("int_type", "string_type", "bool_type"):
                msg = msg.lower().replace("input should be", "should be")
            problems.append(f"{where}: {msg}" if where else msg)
        raise BadQuery("bad search: " + "; ".join(problems)) from exc


class CursorCodec:
    """Signs page cursors with a key the catalog's replicas share, so a cursor works on any backup.

    A cursor carries the sort key and commitment of the last result shown, and the fingerprint of the
    search it belongs to, under an HMAC: anything changed or made up is refused, never decoded and run.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a cursor key needs at least 16 bytes")
        self._key = key

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:16]

    def encode(self, query: SearchQuery, sort_key: float | int, commitment: str) -> str:
        """The cursor of the page after the result (``sort_key``, ``commitment``) of ``query``."""
        body = json.dumps([query.fingerprint(), sort_key, commitment], separators=(",", ":")).encode()
        return _b64(body) + "." + _b64(self._mac(body))

    def decode(self, query: SearchQuery) -> tuple[float | int, str] | None:
        """``(sort_key, commitment)`` to continue after, None on a first page; :class:`BadCursor` if not ours."""
        if query.cursor is None:
            return None
        try:
            body_part, mac_part = query.cursor.split(".")
            body, mac = _unb64(body_part), _unb64(mac_part)
        except ValueError as exc:
            raise BadCursor("this page cursor is damaged: start the search again without it") from exc
        if not hmac.compare_digest(mac, self._mac(body)):
            raise BadCursor("this page cursor was not issued by this catalog: start the search again without it")
        fingerprint, sort_key, commitment = json.loads(body)
        if fingerprint != query.fingerprint():
            raise BadCursor("this page cursor belongs to another search: start this one without it")
        return sort_key, commitment


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64") from exc
