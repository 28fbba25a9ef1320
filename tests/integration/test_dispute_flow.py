"""A provider who serves other content than it published is caught by the buyer and refunded against.

Everything is real: a ledger replica, the provider's service over TLS, the
buyer's client. The cheat is one the transfer cannot see (the ciphertext is
honestly signed), so it surfaces only after the key is released: the buyer's
client files the evidence, the ledger judges it with the escrowed key.
"""
from __future__ import annotations

import dataclasses
import os
import uuid
from pathlib import Path

from broker import commands as c
from broker import queries as q
from peer.client import Client
from peer.serve import ProviderService
from peer.transfer import SaleGrant
from tests.conftest import Deployment


class _SwappingService(ProviderService):
    """Publishes one file and serves another of the same size."""

    swap_to: Path

    def authorize(self, sale_id: str, min_seq: int) -> SaleGrant:
        grant = super().authorize(sale_id, min_seq)
        return dataclasses.replace(grant, path=self.swap_to)


def _seller_and_buyer(dep: Deployment, seller_prefix: str, buyer_prefix: str) -> tuple[str, str, str, Client, Client]:
    """A fresh seller and a buyer holding 50.00, under logins of this test's own."""
    tag = uuid.uuid4().hex[:6]
    seller, buyer = f"{seller_prefix}{tag}", f"{buyer_prefix}{tag}"
    alice, bob = dep.client(), dep.client()
    alice.register(seller, "seller-secret-1")
    bob.register(buyer, "buyer-secret-1")
    bob.send(c.Deposit(account=buyer, amount=5_000), sender=c.OPERATOR, key=dep.operator_key())
    return tag, seller, buyer, alice, bob


def _balances(dep: Deployment, *accounts: str) -> dict[str, int]:
    op = dep.client()
    return {a: op.ask(q.Balance(account=a), sender=c.OPERATOR, key=dep.operator_key())["available"]
            for a in accounts}


def test_cheating_provider_refunds_the_buyer_exactly(deployment: Deployment, tmp_path: Path) -> None:
    tag, seller, buyer, alice, bob = _seller_and_buyer(deployment, "mal", "vic")

    published = tmp_path / "published.bin"
    published.write_bytes(os.urandom(3 * 65536 + 100))
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(published.stat().st_size))
    assert alice.identity is not None
    service = _SwappingService(alice, alice.identity)
    service.swap_to = other
    port = service.start()
    try:
        doc = alice.share(published, price=999, topic="t", title=f"doc {tag}", endpoint=f"127.0.0.1:{port}",
                          segment_size=65536)
        bob.last_seq = max(bob.last_seq, alice.last_seq)
        before = _balances(deployment, seller, buyer, "owner")
        result = bob.buy(doc["doc_id"], tmp_path / "bought.bin")
    finally:
        service.stop()

    assert result.verified is False and result.path is None
    assert not (tmp_path / "bought.bin").exists()  # nothing unverified is left where the buyer looks
    assert result.dispute is not None and result.dispute["provider_cheated"] is True
    assert result.dispute["refund"] == 999
    after = _balances(deployment, seller, buyer, "owner")
    # The buyer has exactly what it had; the seller and the owner give back what the sale paid them.
    assert after == before
    assert bob.sale(result.sale_id)["status"] == "refunded"
    assert bob.document(doc["doc_id"])["provider_strikes"] == 1
    state = deployment.state
    from ledger.model import invariant_violations

    assert invariant_violations(state) == []


def test_an_honest_provider_cannot_be_disputed_into_a_refund(deployment: Deployment, tmp_path: Path) -> None:
    tag, seller, buyer, alice, bob = _seller_and_buyer(deployment, "hon", "buy")
    published = tmp_path / "doc.bin"
    published.write_bytes(os.urandom(2 * 65536))
    assert alice.identity is not None
    service = ProviderService(alice, alice.identity)
    port = service.start()
    try:
        doc = alice.share(published, price=1000, topic="t", title=f"doc {tag}", endpoint=f"127.0.0.1:{port}",
                          segment_size=65536)
        bob.last_seq = max(bob.last_seq, alice.last_seq)
        from peer.transfer import download

        sale_id = f"s-{tag}"
        bob.send(c.OpenSale(sale_id=sale_id, doc_id=doc["doc_id"], price=1000))
        info = bob.document(doc["doc_id"])
        assert bob.identity is not None
        result = download(host="127.0.0.1", port=port, identity_key=bob.identity.sign_key,
                          cert_pem=bob.identity.cert_pem, sale_id=sale_id, min_seq=bob.last_seq,
                          provider_login=seller, provider_cert_pem=info["provider_cert_pem"].encode(),
                          provider_public_key=bytes.fromhex(info["provider_sign_key"]), size=info["size"],
                          segment_size=info["segment_size"], merkle_root_hex=info["merkle_root"],
                          dest_dir=tmp_path / "dl")
    finally:
        service.stop()
    bob.send(c.SettleSale(sale_id=sale_id))
    before = _balances(deployment, seller, buyer, "owner")
    verdict = bob.dispute(sale_id, result, 1)  # the segment is fine: a false dispute
    assert verdict["provider_cheated"] is False and verdict["penalty"] == 10  # 1% of 10.00
    after = _balances(deployment, seller, buyer, "owner")
    assert after == {seller: before[seller], buyer: before[buyer] - 10, "owner": before["owner"] + 10}


def test_a_split_sale_is_paid_interval_by_interval_end_to_end(deployment: Deployment, tmp_path: Path) -> None:
    tag, seller, buyer, alice, bob = _seller_and_buyer(deployment, "spl", "cus")
    doc_path = tmp_path / "big.bin"
    doc_path.write_bytes(os.urandom(7 * 65536 + 5))
    assert alice.identity is not None
    service = ProviderService(alice, alice.identity)
    port = service.start()
    steps: list[str] = []
    try:
        doc = alice.share(doc_path, price=1250, topic="t", title=f"big {tag}", endpoint=f"127.0.0.1:{port}",
                          segment_size=65536, interval_bytes=2 * 65536)
        assert doc["interval_segments"] == 2
        bob.last_seq = max(bob.last_seq, alice.last_seq)
        before = _balances(deployment, seller, buyer, "owner")
        result = bob.buy(doc["doc_id"], tmp_path / "got.bin", on_step=steps.append)
    finally:
        service.stop()
    assert result.verified and (tmp_path / "got.bin").read_bytes() == doc_path.read_bytes()
    assert steps[0] == "price 12.50 in 4 intervals (3.13, 3.13, 3.12, 3.12), each paid once it has arrived"
    assert sum("key released, content verified" in s for s in steps) == 4
    assert (result.price, result.fee) == (1250, 13)
    after = _balances(deployment, seller, buyer, "owner")
    assert after == {seller: before[seller] + 1237, buyer: before[buyer] - 1250, "owner": before["owner"] + 13}
    assert bob.sale(result.sale_id)["status"] == "settled"


def test_a_split_sale_with_a_cheat_in_the_second_interval_stops_there(deployment: Deployment,
                                                                        tmp_path: Path) -> None:
    tag, seller, buyer, alice, bob = _seller_and_buyer(deployment, "sch", "sbu")
    published = tmp_path / "published.bin"
    published.write_bytes(os.urandom(6 * 65536))
    other = bytearray(published.read_bytes())
    other[2 * 65536 + 10] ^= 0xFF  # the third segment (second interval) differs from what was published
    swapped = tmp_path / "other.bin"
    swapped.write_bytes(bytes(other))
    assert alice.identity is not None
    service = _SwappingService(alice, alice.identity)
    service.swap_to = swapped
    port = service.start()
    try:
        doc = alice.share(published, price=900, topic="t", title=f"split {tag}", endpoint=f"127.0.0.1:{port}",
                          segment_size=65536, interval_bytes=2 * 65536)
        bob.last_seq = max(bob.last_seq, alice.last_seq)
        before = _balances(deployment, seller, buyer, "owner")
        result = bob.buy(doc["doc_id"], tmp_path / "got.bin")
    finally:
        service.stop()
    assert result.verified is False and result.dispute is not None
    assert result.dispute["provider_cheated"] is True and result.dispute["refund"] == 600  # two intervals paid
    sale = bob.sale(result.sale_id)
    assert (sale["status"], sale["settled_intervals"]) == ("refunded", 2)  # the third was never paid
    assert _balances(deployment, seller, buyer, "owner") == before
