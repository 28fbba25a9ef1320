"""A provider believes nothing a stranger says: poisoned and junk hellos, slowloris, non-buyers, other documents.

Everything is real: a ledger replica (``deployment``), the provider's service
(:class:`peer.serve.ProviderService`) on 127.0.0.1, the buyers' clients. The
attackers speak raw TCP, some from a second loopback address (127.0.0.2) so a
per-address bound can be told from a global one.
"""
from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import commands as c
from peer.client import Client
from peer.identity import Profile
from peer.serve import ProviderService
from peer.transfer import AuthenticationFailed, DownloadResult, ManifestInvalid, TransferRefused, download
from peer.transfer.tls import make_certificate
from tests.conftest import Deployment

SEG = 64 * 1024
_PLAIN_WORDS = ("Traceback", "Error(", "Expecting", "line 1 column", "char ", "json", "0x")


@dataclass
class Shop:
    """A seller serving two documents (a cheap one and a dear one), a funded buyer and a funded stranger."""

    dep: Deployment
    seller: Client
    buyer: Client
    other: Client
    service: ProviderService
    port: int
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)  # "cheap" / "dear" -> the ledger's document
    files: dict[str, Path] = field(default_factory=dict)

    def open_sale(self, which: str = "cheap", buyer: Client | None = None) -> str:
        buyer = buyer or self.buyer
        sale_id = f"s-{uuid.uuid4().hex[:20]}"
        doc = self.docs[which]
        buyer.send(c.OpenSale(sale_id=sale_id, doc_id=doc["doc_id"], price=doc["price"]))
        return sale_id

    def download(self, sale_id: str, dest: Path, *, which: str = "cheap", as_client: Client | None = None,
                 **kw: Any) -> DownloadResult:
        me = as_client or self.buyer
        assert me.identity is not None
        doc = self.docs[which]
        return download(host="127.0.0.1", port=self.port, identity_key=me.identity.sign_key,
                        cert_pem=me.identity.cert_pem, sale_id=sale_id, min_seq=me.last_seq,
                        provider_login=doc["provider"], provider_cert_pem=doc["provider_cert_pem"].encode(),
                        provider_public_key=bytes.fromhex(doc["provider_sign_key"]), size=doc["size"],
                        segment_size=doc["segment_size"], merkle_root_hex=doc["merkle_root"], doc_id=doc["doc_id"],
                        dest_dir=dest, io_timeout=10.0, **kw)

    def sale_key_file(self, sale_id: str) -> Path:
        assert self.seller.identity is not None
        return Profile(self.seller.home, self.seller.identity.login).dir / "sale-keys" / sale_id

    def reads_served(self) -> int:
        return int(self.dep.replica.reads.served)


@pytest.fixture
def shop(deployment: Deployment, tmp_path: Path) -> Iterator[Shop]:
    tag = uuid.uuid4().hex[:6]
    seller, buyer, other = deployment.client(), deployment.client(), deployment.client()
    seller.register(f"sel{tag}", "seller-secret-1")
    buyer.register(f"buy{tag}", "buyer-secret-1")
    other.register(f"oth{tag}", "other-secret-1")
    for cl in (buyer, other):
        assert cl.identity is not None
        cl.send(c.Deposit(account=cl.identity.login, amount=100_000), sender=c.OPERATOR,
                key=deployment.operator_key())
    assert seller.identity is not None
    service = ProviderService(seller, seller.identity, control_socket=False)
    port = service.start()
    shop = Shop(deployment, seller, buyer, other, service, port)
    try:
        for which, price, size in (("cheap", 1, 4 * SEG + 7), ("dear", 40_000, 3 * SEG + 3)):
            path = tmp_path / f"{which}.bin"
            path.write_bytes(which.encode() * (size // len(which)) + b"!" * (size % len(which)))
            doc = seller.share(path, price=price, topic="t", title=f"{which} {tag}", endpoint=f"127.0.0.1:{port}",
                               segment_size=SEG)
            shop.files[which] = path
            for cl in (buyer, other):
                cl.last_seq = max(cl.last_seq, seller.last_seq)
            shop.docs[which] = buyer.document(doc["doc_id"])
        yield shop
    finally:
        service.stop()


def _line(obj: dict[str, Any]) -> bytes:
    return b"ACB1 " + json.dumps(obj).encode() + b"\n"


def _hello(port: int, line: bytes, *, source: str = "127.0.0.1", timeout: float = 8.0) -> tuple[str | None, float]:
    """Send one opening line and return (the provider's refusal reason or None if it said ok, seconds taken)."""
    start = time.monotonic()
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as sock:
        sock.sendall(line)
        try:
            while not data.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    took = time.monotonic() - start
    assert data.startswith(b"ACB1 ") and data.endswith(b"\n"), f"no answer line to {line[:60]!r}: {data[:200]!r}"
    answer = json.loads(data[5:])
    if answer.get("ok") is True:
        return None, took
    assert isinstance(answer.get("refused"), str)
    return answer["refused"], took


def _provider_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("acb-provider"))


# ---------------------------------------------------------------------------- poisoned hellos


def test_a_poisoned_hello_changes_nothing_and_the_next_buyer_is_served_promptly(shop: Shop, tmp_path: Path) -> None:
    sale_id = shop.open_sale()
    before = shop.service.client.last_seq
    for named in (sale_id, "s-no-such-sale"):
        reason, took = _hello(shop.port, _line({"sale_id": named, "min_seq": 10**15}))
        assert reason is not None and took < 2.0, (named, reason, took)
        assert "ahead" in reason
    # Nothing the hello said outlived its connection: the provider's own view of the ledger is untouched.
    assert shop.service.client.last_seq == before
    start = time.monotonic()
    result = shop.download(sale_id, tmp_path / "dl")
    assert result.complete and time.monotonic() - start < 3.0


def test_a_hello_slightly_ahead_waits_for_itself_only(shop: Shop, tmp_path: Path) -> None:
    """A min_seq a little ahead of the ledger is waited for on that connection, never at an honest buyer's cost."""
    sale_id = shop.open_sale()
    head = shop.dep.head_seq()
    outcome: dict[str, Any] = {}

    def ahead() -> None:
        outcome["reason"], outcome["took"] = _hello(shop.port, _line({"sale_id": "s-coming-soon", "min_seq": head + 50}))

    t = threading.Thread(target=ahead)
    t.start()
    try:
        start = time.monotonic()
        result = shop.download(sale_id, tmp_path / "dl")
        honest = time.monotonic() - start
    finally:
        t.join(15)
    assert result.complete and honest < 2.5, honest
    assert outcome["reason"] is not None and "not on the ledger yet" in outcome["reason"]
    assert outcome["took"] < 6.0
    assert shop.service.client.last_seq < head + 50


# ---------------------------------------------------------------------------- junk hellos

_JUNK: dict[str, bytes] = {
    "sale id of 10 KB": _line({"sale_id": "s" * 10240, "min_seq": 0}),
    "line of 64 KB without newline": b"ACB1 {" + b" " * 65536,
    "not JSON": b"ACB1 {sale_id: s-1, min_seq: 0}\n",
    "deep nesting": b"ACB1 " + b"[" * 1500 + b"]" * 1500 + b"\n",
    "nested object": b'ACB1 {"sale_id": ' + b'{"a": ' * 60 + b"1" + b"}" * 60 + b', "min_seq": 0}\n',
    "array": b'ACB1 ["s-1", 0]\n',
    "sale id a number": b'ACB1 {"sale_id": 12, "min_seq": 0}\n',
    "sale id null": b'ACB1 {"sale_id": null, "min_seq": 0}\n',
    "min_seq a string": b'ACB1 {"sale_id": "s-1", "min_seq": "0"}\n',
    "min_seq true": b'ACB1 {"sale_id": "s-1", "min_seq": true}\n',
    "min_seq a fraction": b'ACB1 {"sale_id": "s-1", "min_seq": 1.5}\n',
    "min_seq negative": b'ACB1 {"sale_id": "s-1", "min_seq": -1}\n',
    "min_seq NaN": b'ACB1 {"sale_id": "s-1", "min_seq": NaN}\n',
    "min_seq of 300 digits": b'ACB1 {"sale_id": "s-1", "min_seq": ' + b"9" * 300 + b"}\n",
    "repeated field": b'ACB1 {"sale_id": "s-1", "sale_id": "s-2", "min_seq": 0}\n',
    "unknown field": b'ACB1 {"sale_id": "s-1", "min_seq": 0, "path": "/etc/passwd"}\n',
    "right-to-left override": 'ACB1 {"sale_id": "s-\u202e1", "min_seq": 0}\n'.encode(),
    "escaped right-to-left override": b'ACB1 {"sale_id": "s-\\u202e1", "min_seq": 0}\n',
    "escaped NUL": b'ACB1 {"sale_id": "s-\\u00001", "min_seq": 0}\n',
    "lone surrogate": b'ACB1 {"sale_id": "s-\\ud8001", "min_seq": 0}\n',
    "fullwidth letters": 'ACB1 {"sale_id": "\uff53-1", "min_seq": 0}\n'.encode(),
    "invalid UTF-8": b'ACB1 {"sale_id": "s-\xff\xfe", "min_seq": 0}\n',
    "byte order mark": b'\xef\xbb\xbfACB1 {"sale_id": "s-1", "min_seq": 0}\n',
    "carriage return": b'ACB1 {"sale_id": "s-1", "min_seq": 0}\r\n',
    "dot dot": b'ACB1 {"sale_id": "..", "min_seq": 0}\n',
    "slash": b'ACB1 {"sale_id": "../../keys", "min_seq": 0}\n',
    "empty line": b"\n",
    "HTTP": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
}


def test_junk_hellos_are_refused_at_once_with_a_plain_reason(shop: Shop, tmp_path: Path) -> None:
    served = shop.reads_served()
    problems = []
    for name, line in _JUNK.items():
        try:
            reason, took = _hello(shop.port, line)
        except AssertionError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if reason is None:
            problems.append(f"{name}: accepted")
        elif took > 1.0 or any(w in reason for w in _PLAIN_WORDS) or len(reason) > 200:
            problems.append(f"{name}: refused in {took:.2f} s with {reason!r}")
    # None of it was worth a question to the ledger.
    if shop.reads_served() != served:
        problems.append(f"the junk cost {shop.reads_served() - served} ledger queries")
    assert not problems, "\n".join(problems)
    sale_id = shop.open_sale()
    assert shop.download(sale_id, tmp_path / "dl").complete


def test_slowloris_does_not_block_an_honest_buyer(shop: Shop, tmp_path: Path) -> None:
    threads = _provider_threads()
    idle: list[socket.socket] = []
    try:
        for i in range(300):
            sock = socket.create_connection(("127.0.0.1", shop.port), timeout=5,
                                            source_address=("127.0.0.2" if i % 3 else "127.0.0.3", 0))
            idle.append(sock)
            if i % 2:
                sock.sendall(b'ACB1 {"sale_id": "s-')  # an opening line that never ends
        sale_id = shop.open_sale()
        start = time.monotonic()
        result = shop.download(sale_id, tmp_path / "dl")
        assert result.complete and time.monotonic() - start < 3.0
        # Idle connections cost a socket each, not a thread each.
        assert _provider_threads() - threads < 20, _provider_threads() - threads
        # Most of them were turned away at once, with a reason.
        turned_away = 0
        for sock in idle:
            sock.settimeout(0.01)
            try:
                if sock.recv(4096).startswith(b'ACB1 {"refused":'):
                    turned_away += 1
            except (TimeoutError, ConnectionResetError):
                pass
        assert turned_away >= 250
    finally:
        for sock in idle:
            sock.close()


# ---------------------------------------------------------------------------- who is served what


def test_a_registered_user_who_is_not_the_buyer_is_refused_and_changes_nothing(shop: Shop, tmp_path: Path) -> None:
    sale_id = shop.open_sale()
    with pytest.raises(AuthenticationFailed):
        shop.download(sale_id, tmp_path / "other", as_client=shop.other)
    # A stranger's attempt wrote nothing: no key was made or escrowed for the sale.
    assert shop.buyer.sale(sale_id)["key_commitment"] is None
    assert not shop.sale_key_file(sale_id).exists()
    # A stranger holding the buyer's certificate (public on the ledger) but not its key gets nothing either.
    assert shop.buyer.identity is not None and shop.other.identity is not None
    impostor = make_certificate(shop.other.identity.sign_key, shop.buyer.identity.login)
    with pytest.raises(AuthenticationFailed):
        download(host="127.0.0.1", port=shop.port, identity_key=shop.other.identity.sign_key, cert_pem=impostor,
                 sale_id=sale_id, min_seq=0, provider_login=shop.docs["cheap"]["provider"],
                 provider_cert_pem=shop.docs["cheap"]["provider_cert_pem"].encode(),
                 provider_public_key=bytes.fromhex(shop.docs["cheap"]["provider_sign_key"]),
                 size=shop.docs["cheap"]["size"], segment_size=SEG,
                 merkle_root_hex=shop.docs["cheap"]["merkle_root"], dest_dir=tmp_path / "impostor", io_timeout=10.0)
    assert shop.buyer.sale(sale_id)["key_commitment"] is None
    result = shop.download(sale_id, tmp_path / "buyer")
    assert result.complete
    assert shop.buyer.sale(sale_id)["key_commitment"] == result.header.header.key_commitment


def test_a_sale_of_one_document_never_gets_another(shop: Shop, tmp_path: Path) -> None:
    cheap, dear = shop.docs["cheap"]["doc_id"], shop.docs["dear"]["doc_id"]
    sale_id = shop.open_sale("cheap")
    # The opening line has no say in which document is served.
    reason, _ = _hello(shop.port, _line({"sale_id": sale_id, "min_seq": 0, "doc_id": dear}))
    assert reason is not None
    # Asking for the dear document on the cheap one's sale gets the cheap one's manifest, and nothing else.
    with pytest.raises(ManifestInvalid, match="merkle_root"):
        shop.download(sale_id, tmp_path / "x", which="dear")
    assert shop.service.uploads.docs[sale_id][0] == cheap
    result = shop.download(sale_id, tmp_path / "y", which="cheap")
    assert result.complete and result.header.header.doc_id == cheap
    # A sale of a document this machine no longer serves is refused rather than served from anything else.
    other_sale = shop.open_sale("dear")
    assert shop.seller.identity is not None
    shares = Profile(shop.seller.home, shop.seller.identity.login).dir / "shares.json"
    saved = shares.read_text()
    data = json.loads(saved)
    data.pop(dear)
    shares.write_text(json.dumps(data))
    try:
        with pytest.raises(TransferRefused, match="does not share"):
            shop.download(other_sale, tmp_path / "z", which="dear")
    finally:
        shares.write_text(saved)


def test_a_forged_sale_answer_racing_the_real_one_cannot_serve_another_document(shop: Shop, tmp_path: Path) -> None:
    """An attacker with full broker rights sees the provider's sale query and answers first, naming the dear file.

    The provider's client must drop the forged answer (it is not signed by a certified replica) and believe only
    the real one, which names the cheap document; so the dear file is never streamed for a cheap sale.
    """
    sale_id = shop.open_sale("cheap")
    real = shop.buyer.sale(sale_id)
    forged = {**real, "doc_id": shop.docs["dear"]["doc_id"]}
    names = shop.dep.names
    stop = threading.Event()
    ready = threading.Event()
    forgeries: list[str] = []

    def attacker() -> None:
        conn = pika.BlockingConnection(pika.URLParameters(shop.dep.admin_url))  # full broker rights
        ch = conn.channel()
        spy = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(spy, names.reads, routing_key="query")
        ch.queue_unbind(names.reads, names.reads, routing_key="query")  # queries now reach the attacker first
        try:
            ready.set()
            for method, props, body in ch.consume(spy, auto_ack=True, inactivity_timeout=0.05):
                if stop.is_set():
                    break
                if method is None:
                    continue
                envelope = json.loads(body)
                payload = envelope["body"]["payload"]
                if payload.get("type") == "sale" and payload.get("sale_id") == sale_id:
                    # Today's reply shape, unsigned: what anyone able to publish could send.
                    fake = {"type": "reply", "schema_version": 1, "id": envelope["body"]["id"], "ok": True,
                            "seq": real["seq"], "result": forged, "error": None, "served_by": "r1"}
                    ch.basic_publish("", props.reply_to, json.dumps(fake).encode(),
                                     pika.BasicProperties(correlation_id=props.correlation_id))
                    forgeries.append(props.correlation_id)
                ch.basic_publish("", names.reads, body, props)  # then let the real replica answer too
        finally:
            ch.queue_bind(names.reads, names.reads, routing_key="query")
            conn.close()

    t = threading.Thread(target=attacker, daemon=True)
    t.start()
    try:
        assert ready.wait(10)
        with pytest.raises((ManifestInvalid, TransferRefused)):
            shop.download(sale_id, tmp_path / "dear", which="dear")
    finally:
        stop.set()
        t.join(10)
    assert forgeries, "the attacker never saw the provider's query"
    assert shop.service.uploads.docs.get(sale_id, (shop.docs["cheap"]["doc_id"],))[0] == shop.docs["cheap"]["doc_id"]
    assert shop.download(sale_id, tmp_path / "cheap", which="cheap").complete


# ---------------------------------------------------------------------------- the checks of an answer


def _answer(**changes: Any) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    base = {"sale_id": "s-1", "doc_id": "doc-a", "consumer": "bob", "provider": "alice", "status": "open",
            "consumer_cert_pem": make_certificate(key, "bob").decode(),
            "consumer_sign_key": key.public_key().public_bytes_raw().hex(), "key_commitment": None,
            "intervals": 1, "interval_segments": 0, "settled_intervals": 0, "seq": 7}
    base.update(changes)
    return base


def test_a_sale_answer_is_believed_only_when_it_is_about_this_sale_this_provider_and_its_buyer() -> None:
    from peer.serve import check_sale

    facts = check_sale(_answer(), sale_id="s-1", provider="alice")
    assert (facts.doc_id, facts.consumer) == ("doc-a", "bob")
    other_key = make_certificate(Ed25519PrivateKey.generate(), "bob").decode()
    refusals = {
        "another sale": _answer(sale_id="s-2"),
        "another provider": _answer(provider="mallory"),
        "voided": _answer(status="voided"),
        "settled": _answer(status="settled"),
        "certificate of another key": _answer(consumer_cert_pem=other_key),
        "certificate of another login": _answer(consumer="carol"),
        "no certificate": _answer(consumer_cert_pem="not a certificate"),
        "doc id not an id": _answer(doc_id="../../etc/passwd"),
        "wrong types": _answer(intervals="3"),
        "missing field": {k: v for k, v in _answer().items() if k != "consumer"},
    }
    for name, answer in refusals.items():
        with pytest.raises(TransferRefused):
            check_sale(answer, sale_id="s-1", provider="alice")
            pytest.fail(f"believed an answer with {name}")
