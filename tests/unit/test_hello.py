"""The consumer's opening line, as the provider parses it: strict, bounded, and plain about what is wrong."""
from __future__ import annotations

import json
import socket
import time

import pytest

from peer.transfer import protocol
from peer.transfer.errors import ConnectionLost, ProtocolError
from peer.transfer.gate import Slots
from peer.transfer.protocol import MAX_HELLO, Hello, hello_may_continue, parse_hello

_PLAIN = ("Traceback", "Expecting", "line 1 column", "char ", "codec", "json", "JSON decode")


def _line(obj: object) -> bytes:
    return b"ACB1 " + json.dumps(obj).encode() + b"\n"


def test_an_honest_hello_parses_whatever_the_spacing() -> None:
    assert parse_hello(b'ACB1 {"sale_id":"s-1","min_seq":42}\n') == Hello("s-1", 42)
    assert parse_hello(_line({"min_seq": 0, "sale_id": "s-9f3a:b_c.d"})) == Hello("s-9f3a:b_c.d", 0)
    longest = _line({"sale_id": "s" * 80, "min_seq": protocol.MAX_SEQ})
    assert parse_hello(longest) == Hello("s" * 80, protocol.MAX_SEQ) and len(longest) < MAX_HELLO


def test_send_hello_writes_what_parse_hello_reads() -> None:
    a, b = socket.socketpair()
    with a, b:
        protocol.send_hello(a, "s-abc", 7)
        assert protocol.read_hello(b, time.monotonic() + 2) == ("s-abc", 7)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "ACB1"),
        (b"\x16\x03\x01\x02\x00", "ACB1"),
        (b'\xef\xbb\xbfACB1 {"sale_id": "s-1", "min_seq": 0}\n', "ACB1"),
        (b'ACB1 {"sale_id": "s-1", "min_seq": 0}', "newline"),
        (b'ACB1 {"sale_id": "s-1", "min_seq": 0}\n\n', "newline"),
        (_line({"sale_id": "s" * 10240, "min_seq": 0}), "too long"),
        (b"ACB1 {" + b" " * 600, "too long"),
        (b"ACB1 {sale_id: s-1}\n", "not a JSON object"),
        (b"ACB1 " + b"[" * 200 + b"]" * 200 + b"\n", "flat object"),
        (b'ACB1 {"sale_id": {"a": {"b": 1}}, "min_seq": 0}\n', "flat object"),
        (b'ACB1 ["s-1", 0]\n', "flat object"),
        (b'ACB1 "s-1"\n', "flat object"),
        (b"ACB1 {}\n", "sale_id"),
        (b'ACB1 {"sale_id": 12, "min_seq": 0}\n', "sale_id"),
        (b'ACB1 {"sale_id": null, "min_seq": 0}\n', "sale_id"),
        (b'ACB1 {"sale_id": "", "min_seq": 0}\n', "sale_id"),
        (b'ACB1 {"sale_id": "..", "min_seq": 0}\n', "sale_id"),
        (b'ACB1 {"sale_id": "../keys", "min_seq": 0}\n', "sale_id"),
        (b'ACB1 {"sale_id": "s 1", "min_seq": 0}\n', "sale_id"),
        (_line({"sale_id": "s" * 81, "min_seq": 0}), "sale_id"),
        (b'ACB1 {"sale_id": "s-1"}\n', "min_seq"),
        (b'ACB1 {"sale_id": "s-1", "min_seq": "0"}\n', "min_seq"),
        (b'ACB1 {"sale_id": "s-1", "min_seq": true}\n', "min_seq"),
        (b'ACB1 {"sale_id": "s-1", "min_seq": 1.0}\n', "min_seq"),
        (b'ACB1 {"sale_id": "s-1", "min_seq": 1e3}\n', "min_seq"),
        (b'ACB1 {"sale_id": "s-1", "min_seq": -1}\n', "min_seq"),
        (b'ACB1 {"sale_id": "s-1", "min_seq": NaN}\n', "min_seq"),
        (b'ACB1 {"sale_id": "s-1", "min_seq": Infinity}\n', "min_seq"),
        (b'ACB1 {"sale_id": "s-1", "min_seq": ' + b"9" * 300 + b"}\n", "min_seq"),
        (b'ACB1 {"sale_id": "s-1", "sale_id": "s-2", "min_seq": 0}\n', "twice"),
        (b'ACB1 {"sale_id": "s-1", "min_seq": 0, "doc_id": "d-2"}\n', "doc_id"),
        ('ACB1 {"sale_id": "s-\u202e1", "min_seq": 0}\n'.encode(), "printable ASCII"),
        ('ACB1 {"sale_id": "\uff53-1", "min_seq": 0}\n'.encode(), "printable ASCII"),
        (b'ACB1 {"sale_id": "s-\xff\xfe", "min_seq": 0}\n', "printable ASCII"),
        (b'ACB1 {"sale_id": "s-1", "min_seq": 0}\r\n', "printable ASCII"),
        (b'ACB1 {"sale_id": "s-1\x00", "min_seq": 0}\n', "printable ASCII"),
        (b'ACB1 {"sale_id": "s-\\u202e1", "min_seq": 0}\n', "escapes"),
        (b'ACB1 {"sale_id": "s-\\u0031", "min_seq": 0}\n', "escapes"),
        (b'ACB1 {"sale_id": "s-\\ud800", "min_seq": 0}\n', "escapes"),
    ],
)
def test_junk_is_refused_with_a_plain_reason(line: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason) as info:
        parse_hello(line)
    text = str(info.value)
    assert not any(w in text for w in _PLAIN) and len(text) < 200, text


def test_a_hello_that_cannot_become_valid_is_refused_from_its_first_bytes() -> None:
    hello_may_continue(b"AC")
    hello_may_continue(b'ACB1 {"sale_id": "s-')
    with pytest.raises(ProtocolError, match="ACB1"):
        hello_may_continue(b"\x16\x03")
    with pytest.raises(ProtocolError, match="too long"):
        hello_may_continue(b"ACB1 {" + b" " * MAX_HELLO)


def test_read_hello_has_one_deadline_for_the_whole_line() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b'ACB1 {"sale_id"')  # and then nothing
        start = time.monotonic()
        with pytest.raises(ConnectionLost, match="in time"):
            protocol.read_hello(b, start + 0.3)
        assert time.monotonic() - start < 1.0


def test_refusal_line_is_what_the_consumer_reads_as_a_refusal() -> None:
    assert protocol.refusal_line("no such sale") == b'ACB1 {"refused":"no such sale"}\n'


def test_checking_slots_are_bounded_per_address_and_overall() -> None:
    slots = Slots(total=3, per_address=2)
    assert slots.take("10.0.0.1") is None and slots.take("10.0.0.1") is None
    assert "your address" in (slots.take("10.0.0.1") or "")
    assert slots.take("10.0.0.2") is None
    assert "busy" in (slots.take("10.0.0.3") or "")
    slots.give_back("10.0.0.1")
    assert slots.take("10.0.0.3") is None
