"""Canonical encoding: the bytes that are signed, hashed and sent.

JSON with sorted keys, no whitespace and UTF-8 text. Two parties that hold the
same value produce the same bytes, so a signature or hash over them is stable.
Binary values travel as base64 (blobs) or hex (keys, hashes), never raw.
"""
from __future__ import annotations

import base64
import json
import math
from typing import Any

__all__ = ["canonical", "b64e", "b64d", "loads_object"]


def canonical(value: Any) -> bytes:
    """Encode a JSON-compatible value canonically."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def b64e(data: bytes) -> str:
    """Standard base64 without line breaks."""
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    """Decode strict base64; raise ValueError on anything else."""
    return base64.b64decode(text.encode("ascii"), validate=True)


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, and would not survive a round trip: what was signed must be what is stored.
    raise json.JSONDecodeError(f"{name} is not a JSON number", name, 0)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise json.JSONDecodeError(f"{text[:20]} is too large a number", text, 0)
    return value


def loads_object(body: bytes) -> dict[str, Any]:
    """Parse bytes into a JSON object, or raise ValueError saying why not."""
    try:
        value = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from exc
    except RecursionError as exc:
        # Raised by the decoder itself on deep nesting; left alone it would kill the consuming thread.
        raise ValueError("body is not JSON we accept: nested too deeply") from exc
    if not isinstance(value, dict):
        raise ValueError(f"body is JSON {type(value).__name__}, expected an object")
    return value
