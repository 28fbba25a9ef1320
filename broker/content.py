"""Content crypto contracts shared by peers and the ledger.

A document is published as a :class:`FileCommitment`: its size, SHA-256 and the
root of an RFC 6962 Merkle tree over fixed-size plaintext segments. Each sale
uses a fresh 256-bit key K; the provider encrypts every segment with AES-256-GCM
under K and signs (Ed25519) a manifest: one :class:`ManifestHeader` per sale and
one :class:`ManifestEntry` per ciphertext segment, carrying the ciphertext hash
and the plaintext Merkle proof. The consumer keeps the signed manifest, so if a
segment turns out to be garbage once K is released, :func:`judge_dispute` can
decide, from signed evidence only, whether the provider cheated.

Everything here is pure (no sockets, no clocks); the only I/O is reading a file
whose path the caller gives to :func:`describe_file`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import blake3
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.errors import ContentError, DecryptionFailed, ProofInvalid, SignatureInvalid
from broker.merkle import MerkleTree, leaf_hash, merkle_proof, merkle_root, verify_merkle
from broker.segments import (
    INTERVAL_BYTES,
    LARGE_FILE,
    LARGE_SEGMENT_SIZE,
    SEGMENT_SIZE,
    SPLIT_THRESHOLD,
    TAG_SIZE,
    FileCommitment,
    choose_interval_segments,
    choose_segment_size,
    ciphertext_size_for,
    describe_file,
    segment_count_for,
)

__all__ = [
    "INTERVAL_BYTES",
    "KEY_SIZE",
    "LARGE_FILE",
    "LARGE_SEGMENT_SIZE",
    "SEGMENT_SIZE",
    "SPLIT_THRESHOLD",
    "TAG_SIZE",
    "ContentError",
    "DecryptionFailed",
    "FileCommitment",
    "ManifestEntry",
    "ManifestHeader",
    "MerkleTree",
    "ProofInvalid",
    "SegmentCipher",
    "interval_count",
    "interval_key",
    "interval_of",
    "choose_segment_size",
    "choose_interval_segments",
    "SignatureInvalid",
    "SignedEntry",
    "SignedHeader",
    "Verdict",
    "canonical_json",
    "ciphertext_hash",
    "ciphertext_size_for",
    "decrypt_segment",
    "describe_file",
    "encrypt_segment",
    "judge_dispute",
    "key_commitment",
    "leaf_hash",
    "merkle_proof",
    "merkle_root",
    "segment_count_for",
    "sign_entry",
    "sign_header",
    "verify_entry",
    "verify_header",
    "verify_merkle",
]

KEY_SIZE = 32
SIGNATURE_SIZE = 64
_KEY_COMMITMENT_TAG = b"acb/key-commitment/v1\x00"
_AAD_TAG = b"acb/segment/v1\x00"
_HEADER_TYPE = "acb.manifest.header/v1"
_ENTRY_TYPE = "acb.manifest.entry/v1"


# --------------------------------------------------------------------------- segment crypto


def key_commitment(sale_id: str, key: bytes) -> str:
    """Hex SHA-256 binding the per-sale key to the sale, published before K is escrowed."""
    sid = sale_id.encode()
    data = _KEY_COMMITMENT_TAG + len(sid).to_bytes(4, "big") + sid + key
    return hashlib.sha256(data).hexdigest()


def _nonce(index: int) -> bytes:
    # A fixed nonce per index is safe only because K is fresh for every sale.
    return b"\x00\x00\x00\x00" + index.to_bytes(8, "big")


def _aad(sale_id: str, index: int) -> bytes:
    sid = sale_id.encode()
    return _AAD_TAG + len(sid).to_bytes(4, "big") + sid + index.to_bytes(8, "big")


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ContentError(f"segment key must be {KEY_SIZE} bytes, got {len(key)}")


def interval_key(key: bytes, sale_id: str, interval: int) -> bytes:
    """The key of one interval of an interval sale, derived from the sale key K (HKDF-SHA256).

    Releasing it opens that interval's segments and nothing else.
    """
    _check_key(key)
    info = b"acb-interval\x00" + sale_id.encode() + b"\x00" + interval.to_bytes(8, "big")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(key)


def interval_of(index: int, interval_segments: int) -> int:
    """The interval segment ``index`` belongs to (0 when the sale is not split)."""
    return index // interval_segments if interval_segments else 0


def interval_count(segment_count: int, interval_segments: int) -> int:
    """How many intervals a document of ``segment_count`` segments has (1 when not split)."""
    if not interval_segments or interval_segments >= segment_count:
        return 1
    return -(-segment_count // interval_segments)


class SegmentCipher:
    """AES-256-GCM for one sale, reusing the key schedule and caller buffers.

    With ``interval_segments`` the sale is split: segment ``i`` is encrypted under
    :func:`interval_key` of its interval. ``key`` is then the sale key K, or None
    when only some interval keys are known (``interval_keys``, a consumer's case).
    """

    def __init__(self, key: bytes | None, sale_id: str, interval_segments: int = 0,
                 interval_keys: dict[int, bytes] | None = None) -> None:
        self.sale_id = sale_id
        self._split = interval_segments
        self._master = key
        self._keys = dict(interval_keys or {})
        self._aeads: dict[int, AESGCM] = {}
        if not interval_segments:
            if key is None:
                raise ContentError("a sale that is not split needs its key")
            _check_key(key)
        self._aead = AESGCM(key) if not interval_segments and key is not None else None

    def _for(self, index: int) -> AESGCM:
        if self._aead is not None:
            return self._aead
        j = interval_of(index, self._split)
        aead = self._aeads.get(j)
        if aead is None:
            k = self._keys.get(j)
            if k is None:
                if self._master is None:
                    raise DecryptionFailed(f"segment {index}: the key of interval {j} has not been released")
                k = interval_key(self._master, self.sale_id, j)
            _check_key(k)
            aead = self._aeads[j] = AESGCM(k)
        return aead

    def encrypt(self, index: int, plaintext: bytes | bytearray | memoryview) -> bytes:
        """Encrypt segment ``index``; returns ciphertext || tag."""
        return self._for(index).encrypt(_nonce(index), plaintext, _aad(self.sale_id, index))

    def encrypt_into(self, index: int, plaintext: memoryview | bytes, out: memoryview | bytearray) -> int:
        """Encrypt into ``out`` (at least len(plaintext) + 16 bytes); returns bytes written."""
        n = len(plaintext) + TAG_SIZE
        self._for(index).encrypt_into(_nonce(index), plaintext, _aad(self.sale_id, index), memoryview(out)[:n])
        return n

    def decrypt(self, index: int, ciphertext: bytes | bytearray | memoryview) -> bytes:
        """Decrypt segment ``index``; raises :class:`DecryptionFailed`."""
        try:
            return self._for(index).decrypt(_nonce(index), ciphertext, _aad(self.sale_id, index))
        except InvalidTag as exc:
            raise DecryptionFailed(
                f"segment {index} of sale {self.sale_id} failed authentication "
                "(wrong key or tampered ciphertext)"
            ) from exc

    def decrypt_into(self, index: int, ciphertext: memoryview | bytes, out: memoryview | bytearray) -> int:
        """Decrypt into ``out``; returns plaintext length; raises :class:`DecryptionFailed`."""
        if len(ciphertext) < TAG_SIZE:
            raise DecryptionFailed(f"segment {index} is shorter than a GCM tag")
        n = len(ciphertext) - TAG_SIZE
        try:
            self._for(index).decrypt_into(_nonce(index), ciphertext, _aad(self.sale_id, index), memoryview(out)[:n])
        except InvalidTag as exc:
            raise DecryptionFailed(
                f"segment {index} of sale {self.sale_id} failed authentication "
                "(wrong key or tampered ciphertext)"
            ) from exc
        return n


def encrypt_segment(key: bytes, sale_id: str, index: int, plaintext: bytes) -> bytes:
    """AES-256-GCM encrypt one segment; nonce from the index, AAD binds sale and index."""
    return SegmentCipher(key, sale_id).encrypt(index, plaintext)


def decrypt_segment(key: bytes, sale_id: str, index: int, ciphertext: bytes) -> bytes:
    """Inverse of :func:`encrypt_segment`; raises :class:`DecryptionFailed`."""
    return SegmentCipher(key, sale_id).decrypt(index, ciphertext)


def ciphertext_hash(ct: bytes | bytearray | memoryview) -> bytes:
    """32-byte BLAKE3 of a ciphertext segment.

    BLAKE3 rather than SHA-256 because it runs at ~6.7 GB/s against ~1.7 GB/s
    for SHA-256 here, and both sides hash every byte on the transfer's hot path.
    """
    return blake3.blake3(ct).digest()


# --------------------------------------------------------------------------- manifest


def canonical_json(obj: dict[str, Any]) -> bytes:
    """The byte string that is signed: sorted keys, no spaces, bytes already hex."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _public_key(key: Ed25519PublicKey | bytes) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    if len(key) != 32:
        raise SignatureInvalid(f"provider public key must be 32 raw bytes, got {len(key)}")
    return Ed25519PublicKey.from_public_bytes(key)


@dataclass(frozen=True)
class ManifestHeader:
    """Per-sale statement by the provider: which document, for whom, under which key."""

    sale_id: str
    doc_id: str
    provider: str
    consumer: str
    key_commitment: str
    size: int
    segment_size: int
    segment_count: int
    merkle_root: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, including the type tag that separates it from entries."""
        return {
            "type": _HEADER_TYPE,
            "sale_id": self.sale_id,
            "doc_id": self.doc_id,
            "provider": self.provider,
            "consumer": self.consumer,
            "key_commitment": self.key_commitment,
            "size": self.size,
            "segment_size": self.segment_size,
            "segment_count": self.segment_count,
            "merkle_root": self.merkle_root,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ManifestHeader:
        """Parse :meth:`to_dict` output; raises :class:`ProofInvalid` on a bad shape."""
        try:
            if d.get("type") != _HEADER_TYPE:
                raise ProofInvalid(f"not a manifest header: type {d.get('type')!r}")
            return cls(
                sale_id=str(d["sale_id"]),
                doc_id=str(d["doc_id"]),
                provider=str(d["provider"]),
                consumer=str(d["consumer"]),
                key_commitment=str(d["key_commitment"]),
                size=int(d["size"]),
                segment_size=int(d["segment_size"]),
                segment_count=int(d["segment_count"]),
                merkle_root=str(d["merkle_root"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProofInvalid(f"malformed manifest header: {exc}") from exc


@dataclass(frozen=True)
class ManifestEntry:
    """Per-segment statement: ciphertext hash and the plaintext leaf's audit path."""

    sale_id: str
    index: int
    ct_hash: bytes
    ct_size: int
    proof: tuple[bytes, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form with bytes as hex."""
        return {
            "type": _ENTRY_TYPE,
            "sale_id": self.sale_id,
            "index": self.index,
            "ct_hash": self.ct_hash.hex(),
            "ct_size": self.ct_size,
            "proof": [p.hex() for p in self.proof],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ManifestEntry:
        """Parse :meth:`to_dict` output; raises :class:`ProofInvalid` on a bad shape."""
        try:
            if d.get("type") != _ENTRY_TYPE:
                raise ProofInvalid(f"not a manifest entry: type {d.get('type')!r}")
            return cls(
                sale_id=str(d["sale_id"]),
                index=int(d["index"]),
                ct_hash=bytes.fromhex(d["ct_hash"]),
                ct_size=int(d["ct_size"]),
                proof=tuple(bytes.fromhex(p) for p in d["proof"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProofInvalid(f"malformed manifest entry: {exc}") from exc


@dataclass(frozen=True)
class SignedHeader:
    """A header with the exact signed bytes, so it can be re-verified byte for byte."""

    body: bytes
    signature: bytes

    @property
    def header(self) -> ManifestHeader:
        """The parsed header (not verified: call :func:`verify_header`)."""
        return ManifestHeader.from_dict(_loads(self.body))

    def to_wire(self) -> dict[str, str]:
        """JSON-able form for messages to the ledger."""
        return {"body": self.body.decode(), "signature": self.signature.hex()}

    @classmethod
    def from_wire(cls, d: dict[str, str]) -> SignedHeader:
        """Inverse of :meth:`to_wire`."""
        return cls(body=d["body"].encode(), signature=bytes.fromhex(d["signature"]))


@dataclass(frozen=True)
class SignedEntry:
    """An entry with the exact signed bytes."""

    body: bytes
    signature: bytes

    @property
    def entry(self) -> ManifestEntry:
        """The parsed entry (not verified: call :func:`verify_entry`)."""
        return ManifestEntry.from_dict(_loads(self.body))

    def to_wire(self) -> dict[str, str]:
        """JSON-able form for messages to the ledger."""
        return {"body": self.body.decode(), "signature": self.signature.hex()}

    @classmethod
    def from_wire(cls, d: dict[str, str]) -> SignedEntry:
        """Inverse of :meth:`to_wire`."""
        return cls(body=d["body"].encode(), signature=bytes.fromhex(d["signature"]))


def _loads(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise ProofInvalid(f"manifest body is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProofInvalid("manifest body is not a JSON object")
    return obj


def sign_header(private_key: Ed25519PrivateKey, header: ManifestHeader) -> SignedHeader:
    """Sign the canonical JSON of ``header`` with the provider's identity key."""
    body = canonical_json(header.to_dict())
    return SignedHeader(body=body, signature=private_key.sign(body))


def verify_header(signed: SignedHeader, public_key: Ed25519PublicKey | bytes) -> ManifestHeader:
    """Check the signature and return the header; raises :class:`SignatureInvalid`."""
    try:
        _public_key(public_key).verify(signed.signature, signed.body)
    except InvalidSignature as exc:
        raise SignatureInvalid("manifest header is not signed by the provider") from exc
    return signed.header


def sign_entry(private_key: Ed25519PrivateKey, entry: ManifestEntry) -> SignedEntry:
    """Sign the canonical JSON of ``entry`` with the provider's identity key."""
    body = canonical_json(entry.to_dict())
    return SignedEntry(body=body, signature=private_key.sign(body))


def verify_entry(signed: SignedEntry, public_key: Ed25519PublicKey | bytes) -> ManifestEntry:
    """Check the signature and return the entry; raises :class:`SignatureInvalid`."""
    try:
        _public_key(public_key).verify(signed.signature, signed.body)
    except InvalidSignature as exc:
        raise SignatureInvalid("manifest entry is not signed by the provider") from exc
    return signed.entry


# --------------------------------------------------------------------------- disputes


@dataclass(frozen=True)
class Verdict:
    """Outcome of :func:`judge_dispute`."""

    provider_cheated: bool
    reason: str


def judge_dispute(
    *,
    key: bytes,
    sale_id: str,
    provider_public_key: bytes,
    header: SignedHeader,
    entry: SignedEntry,
    ciphertext: bytes,
    published_root_hex: str,
    segment_count: int,
    interval_segments: int = 0,
) -> Verdict:
    """Decide a consumer's complaint about one segment from signed evidence only.

    The provider cheated iff it signed this header and entry for this sale, the
    ciphertext is the one it signed, and that ciphertext either does not decrypt
    with the escrowed key or decrypts to a segment that is not in the published
    document. Evidence that does not bind the provider is rejected (not cheated).
    """
    try:
        h = verify_header(header, provider_public_key)
    except ContentError:
        return Verdict(False, "evidence not signed by provider: manifest header signature invalid")
    try:
        e = verify_entry(entry, provider_public_key)
    except ContentError:
        return Verdict(False, "evidence not signed by provider: manifest entry signature invalid")
    if h.sale_id != sale_id or e.sale_id != sale_id:
        return Verdict(False, f"evidence is for another sale ({h.sale_id!r}/{e.sale_id!r}, not {sale_id!r})")
    if not 0 <= e.index < segment_count:
        return Verdict(False, f"entry index {e.index} outside the document's {segment_count} segments")
    if ciphertext_hash(ciphertext) != e.ct_hash:
        return Verdict(False, f"ciphertext of segment {e.index} does not match the hash the provider signed")
    try:
        plaintext = SegmentCipher(key, sale_id, interval_segments).decrypt(e.index, ciphertext)
    except ContentError:
        if key_commitment(sale_id, key) != h.key_commitment:
            return Verdict(True, f"segment {e.index}: escrowed key does not match the provider's signed commitment")
        return Verdict(True, f"segment {e.index} does not decrypt with the escrowed key")
    try:
        root = bytes.fromhex(published_root_hex)
    except ValueError:
        return Verdict(False, "published Merkle root is not hex")
    if not verify_merkle(leaf_hash(plaintext), e.index, segment_count, e.proof, root):
        return Verdict(True, f"segment {e.index} decrypts to content that is not in the published document")
    return Verdict(False, f"segment {e.index} is genuine: it decrypts and matches the published root")
