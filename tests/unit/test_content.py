"""Content crypto contracts: Merkle trees, segment encryption, manifests, dispute judging."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import content
from broker.content import (
    ContentError,
    DecryptionFailed,
    ManifestEntry,
    ManifestHeader,
    SignatureInvalid,
    SignedEntry,
    SignedHeader,
)

SEG = 1024


def _reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH, written straight from the definition (split at the largest power of two)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _reference_root(leaves[:k]) + _reference_root(leaves[k:])).digest()


def _leaves(n: int) -> list[bytes]:
    return [content.leaf_hash(bytes([i % 256]) * (i + 1)) for i in range(n)]


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# ---------------------------------------------------------------------------- Merkle


def test_leaf_hash_is_domain_separated_from_plain_sha256() -> None:
    assert content.leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert content.leaf_hash(b"abc") != hashlib.sha256(b"abc").digest()


@pytest.mark.parametrize("n", list(range(1, 18)) + [31, 33, 100])
def test_root_matches_rfc6962_and_every_proof_verifies(n: int) -> None:
    leaves = _leaves(n)
    root = content.merkle_root(leaves)
    assert root == _reference_root(leaves)
    tree = content.MerkleTree(leaves)
    for i in range(n):
        proof = tree.proof(i)
        assert proof == content.merkle_proof(leaves, i)
        assert content.verify_merkle(leaves[i], i, n, proof, root)


@pytest.mark.parametrize("n", [3, 5, 7, 12])
def test_odd_counts_reject_wrong_index_count_leaf_or_proof(n: int) -> None:
    leaves = _leaves(n)
    root = content.merkle_root(leaves)
    last = n - 1
    proof = content.merkle_proof(leaves, last)
    assert content.verify_merkle(leaves[last], last, n, proof, root)
    assert not content.verify_merkle(leaves[last], last - 1, n, proof, root)
    assert not content.verify_merkle(leaves[last], last, n + 1, proof, root)
    assert not content.verify_merkle(leaves[0], last, n, proof, root)
    assert not content.verify_merkle(leaves[last], last, n, proof[:-1], root)
    assert not content.verify_merkle(leaves[last], last, n, [*proof, b"\x00" * 32], root)
    assert not content.verify_merkle(leaves[last], n, n, proof, root)


def test_odd_count_promotes_last_node_instead_of_duplicating_it() -> None:
    leaves = _leaves(3)
    def node(a: bytes, b: bytes) -> bytes:
        return hashlib.sha256(b"\x01" + a + b).digest()

    assert content.merkle_root(leaves) == node(node(leaves[0], leaves[1]), leaves[2])
    assert content.merkle_proof(leaves, 2) == [node(leaves[0], leaves[1])]


def test_empty_and_single_trees() -> None:
    assert content.merkle_root([]) == hashlib.sha256(b"").digest()
    leaf = content.leaf_hash(b"x")
    assert content.merkle_root([leaf]) == leaf
    assert content.merkle_proof([leaf], 0) == []
    assert content.verify_merkle(leaf, 0, 1, [], leaf)
    with pytest.raises(content.ProofInvalid):
        content.merkle_proof([leaf], 1)


# ---------------------------------------------------------------------------- files


def test_describe_file_streams_segments(tmp_path: Path) -> None:
    data = os.urandom(5 * SEG + 17)
    path = tmp_path / "doc.bin"
    path.write_bytes(data)
    c = content.describe_file(path, SEG)
    assert c.size == len(data)
    assert c.sha256 == hashlib.sha256(data).hexdigest()
    assert c.segment_count == 6 == content.segment_count_for(len(data), SEG)
    leaves = [content.leaf_hash(data[i : i + SEG]) for i in range(0, len(data), SEG)]
    assert list(c.leaves) == leaves
    assert c.merkle_root == content.merkle_root(leaves).hex()
    assert "leaves" not in c.public()
    assert c.public()["merkle_root"] == c.merkle_root


def test_describe_empty_and_exact_multiple(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    c = content.describe_file(empty, SEG)
    assert (c.size, c.segment_count) == (0, 0)
    assert c.merkle_root == hashlib.sha256(b"").hexdigest()
    exact = tmp_path / "exact"
    exact.write_bytes(b"a" * (2 * SEG))
    assert content.describe_file(exact, SEG).segment_count == 2


# ---------------------------------------------------------------------------- keys and segments


def test_key_commitment_binds_sale_and_key() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    c = content.key_commitment("sale-1", k1)
    assert len(c) == 64 and int(c, 16) >= 0
    assert c == content.key_commitment("sale-1", k1)
    assert c != content.key_commitment("sale-2", k1)
    assert c != content.key_commitment("sale-1", k2)
    # Length prefixing keeps ("ab", "c"+key) and ("a", "bc"+key) apart.
    assert content.key_commitment("ab", b"c" + k1[1:]) != content.key_commitment("a", b"bc" + k1[2:])


def test_segment_roundtrip_and_binding() -> None:
    key = os.urandom(32)
    ct = content.encrypt_segment(key, "s1", 3, b"hello")
    assert len(ct) == 5 + content.TAG_SIZE
    assert content.decrypt_segment(key, "s1", 3, ct) == b"hello"
    with pytest.raises(DecryptionFailed, match="segment 3"):
        content.decrypt_segment(os.urandom(32), "s1", 3, ct)
    with pytest.raises(DecryptionFailed):
        content.decrypt_segment(key, "s1", 4, ct)  # index is in the nonce and the AAD
    with pytest.raises(DecryptionFailed):
        content.decrypt_segment(key, "s2", 3, ct)  # sale is in the AAD
    tampered = bytearray(ct)
    tampered[0] ^= 1
    with pytest.raises(DecryptionFailed):
        content.decrypt_segment(key, "s1", 3, bytes(tampered))
    with pytest.raises(ContentError, match="32 bytes"):
        content.encrypt_segment(b"short", "s1", 0, b"x")


def test_segment_cipher_buffers_match_one_shot_functions() -> None:
    key, pt = os.urandom(32), os.urandom(3000)
    cipher = content.SegmentCipher(key, "s1")
    out = bytearray(4000)
    n = cipher.encrypt_into(7, pt, out)
    assert bytes(out[:n]) == content.encrypt_segment(key, "s1", 7, pt)
    back = bytearray(4000)
    m = cipher.decrypt_into(7, memoryview(out)[:n], back)
    assert bytes(back[:m]) == pt
    assert content.ciphertext_hash(out[:n]) == content.ciphertext_hash(bytes(out[:n]))
    assert len(content.ciphertext_hash(b"")) == 32


# ---------------------------------------------------------------------------- manifests


def _header(**over: object) -> ManifestHeader:
    fields: dict[str, object] = {
        "sale_id": "s1", "doc_id": "d1", "provider": "alice", "consumer": "bob", "key_commitment": "ab" * 32,
        "size": 10, "segment_size": SEG, "segment_count": 1, "merkle_root": "cd" * 32,
    }
    fields.update(over)
    return ManifestHeader(**fields)  # type: ignore[arg-type]


def test_manifest_signatures_roundtrip_and_reject_tampering() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    sh = content.sign_header(key, _header())
    assert content.verify_header(sh, key.public_key()) == _header()
    assert content.verify_header(SignedHeader.from_wire(sh.to_wire()), _raw(key)) == _header()
    assert sh.body == content.canonical_json(_header().to_dict())
    with pytest.raises(SignatureInvalid):
        content.verify_header(sh, _raw(other))
    forged = SignedHeader(body=sh.body.replace(b'"bob"', b'"eve"'), signature=sh.signature)
    with pytest.raises(SignatureInvalid):
        content.verify_header(forged, _raw(key))

    entry = ManifestEntry("s1", 0, b"\x01" * 32, 26, (b"\x02" * 32,))
    se = content.sign_entry(key, entry)
    assert content.verify_entry(SignedEntry.from_wire(se.to_wire()), _raw(key)) == entry
    with pytest.raises(SignatureInvalid):
        content.verify_entry(se, _raw(other))
    # A header signature never passes as an entry: the type tag is inside the signed bytes.
    with pytest.raises(content.ProofInvalid):
        content.verify_entry(SignedEntry(body=sh.body, signature=sh.signature), _raw(key))


# ---------------------------------------------------------------------------- disputes


class _Sale:
    """A provider's published document and one sale of it, segment by segment."""

    def __init__(self, data: bytes, served: bytes | None = None) -> None:
        self.provider = Ed25519PrivateKey.generate()
        self.key = os.urandom(32)
        self.sale_id = "sale-9"
        pieces = [data[i : i + SEG] for i in range(0, len(data), SEG)]
        self.leaves = [content.leaf_hash(p) for p in pieces]
        self.root = content.merkle_root(self.leaves).hex()
        self.count = len(pieces)
        self.served = [(served or data)[i : i + SEG] for i in range(0, len(data), SEG)]
        self.header = content.sign_header(self.provider, _header(
            sale_id=self.sale_id, key_commitment=content.key_commitment(self.sale_id, self.key),
            size=len(data), segment_count=self.count, merkle_root=self.root,
        ))

    def evidence(self, index: int, *, ciphertext: bytes | None = None,
                 signer: Ed25519PrivateKey | None = None, sale_id: str | None = None) -> tuple[SignedEntry, bytes]:
        ct = ciphertext if ciphertext is not None else content.encrypt_segment(
            self.key, self.sale_id, index, self.served[index])
        entry = ManifestEntry(sale_id or self.sale_id, index, content.ciphertext_hash(ct), len(ct),
                              tuple(content.merkle_proof(self.leaves, index)))
        return content.sign_entry(signer or self.provider, entry), ct

    def judge(self, entry: SignedEntry, ct: bytes, *, key: bytes | None = None) -> content.Verdict:
        return content.judge_dispute(
            key=key or self.key, sale_id=self.sale_id, provider_public_key=_raw(self.provider),
            header=self.header, entry=entry, ciphertext=ct, published_root_hex=self.root, segment_count=self.count,
        )


def test_false_dispute_on_an_honest_segment_is_rejected() -> None:
    sale = _Sale(os.urandom(3 * SEG + 5))
    for i in range(sale.count):
        verdict = sale.judge(*sale.evidence(i))
        assert not verdict.provider_cheated
        assert "genuine" in verdict.reason


def test_garbage_ciphertext_signed_by_provider_is_cheating() -> None:
    sale = _Sale(os.urandom(2 * SEG))
    verdict = sale.judge(*sale.evidence(1, ciphertext=os.urandom(SEG + 16)))
    assert verdict.provider_cheated
    assert "does not decrypt" in verdict.reason


def test_other_content_than_published_is_cheating() -> None:
    data = os.urandom(3 * SEG)
    sale = _Sale(data, served=data[:SEG] + os.urandom(SEG) + data[2 * SEG :])
    assert not sale.judge(*sale.evidence(0)).provider_cheated
    verdict = sale.judge(*sale.evidence(1))
    assert verdict.provider_cheated
    assert "not in the published document" in verdict.reason


def test_evidence_the_provider_did_not_sign_is_invalid() -> None:
    sale = _Sale(os.urandom(2 * SEG))
    forged = sale.evidence(0, ciphertext=os.urandom(SEG + 16), signer=Ed25519PrivateKey.generate())
    verdict = sale.judge(*forged)
    assert not verdict.provider_cheated
    assert "not signed by provider" in verdict.reason


def test_ciphertext_not_matching_the_signed_hash_is_invalid() -> None:
    sale = _Sale(os.urandom(2 * SEG))
    entry, _ct = sale.evidence(0)
    verdict = sale.judge(entry, os.urandom(SEG + 16))
    assert not verdict.provider_cheated
    assert "does not match the hash" in verdict.reason


def test_evidence_from_another_sale_is_invalid() -> None:
    sale = _Sale(os.urandom(2 * SEG))
    verdict = sale.judge(*sale.evidence(0, sale_id="another-sale"))
    assert not verdict.provider_cheated
    assert "another sale" in verdict.reason


def test_escrowed_key_not_matching_commitment_is_the_providers_fault() -> None:
    sale = _Sale(os.urandom(SEG))
    verdict = sale.judge(*sale.evidence(0), key=os.urandom(32))
    assert verdict.provider_cheated
    assert "commitment" in verdict.reason


def test_large_files_get_larger_segments() -> None:
    from broker.content import LARGE_FILE, LARGE_SEGMENT_SIZE, SEGMENT_SIZE, choose_segment_size

    assert choose_segment_size(0) == SEGMENT_SIZE
    assert choose_segment_size(LARGE_FILE - 1) == SEGMENT_SIZE
    assert choose_segment_size(LARGE_FILE) == LARGE_SEGMENT_SIZE == 4 << 20
