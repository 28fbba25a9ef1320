"""A flood publisher in a process of its own: an attacker is another program, not a thread of the ledger's.

    python -m tests.support.flood SPEC.json

SPEC names the broker URL, exchange, routing key, message kind, the reply-to mode (``direct``: this
channel's direct reply-to, answers kept; ``made-up``: an invented address on every message; ``none``),
whether to keep reading answers after publishing, and the files: messages in (JSON lines of id and
base64 body), results out. It prints ``sent N`` as it goes and ``published`` when done, so the test can
time other users' requests against the flood.
"""
from __future__ import annotations

import base64
import json
import sys
import time
from typing import Any

import pika

_REPLY_TO = "amq.rabbitmq.reply-to"


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    with open(spec["messages"]) as f:
        messages = [(m["id"], base64.b64decode(m["body"])) for m in map(json.loads, f)]
    mode = spec["reply_to"]
    sent_at: dict[str, float] = {}
    replies: dict[str, Any] = {}

    def on_reply(_ch: Any, _method: Any, props: Any, body: bytes) -> None:
        replies[props.correlation_id] = (time.perf_counter(), json.loads(body))

    conn = pika.BlockingConnection(pika.URLParameters(spec["url"]))
    ch = conn.channel()
    if mode == "direct":
        ch.basic_consume(_REPLY_TO, on_reply, auto_ack=True)
    started = time.perf_counter()
    for i, (ident, body) in enumerate(messages):
        address = {"direct": _REPLY_TO, "made-up": f"flood.{i}", "none": None}[mode]
        sent_at[ident] = time.perf_counter()
        ch.basic_publish(spec["exchange"], spec["routing_key"], body,
                         pika.BasicProperties(correlation_id=ident, type=spec["kind"], reply_to=address))
        if (i + 1) % 500 == 0:
            print(f"sent {i + 1}", flush=True)
            if mode == "direct":
                conn.process_data_events(time_limit=0)
    publish_seconds = time.perf_counter() - started
    print("published", flush=True)
    if spec["wait_replies"]:
        end, last = time.monotonic() + spec["deadline"], time.monotonic()
        while len(replies) < len(messages) and time.monotonic() < end:
            before = len(replies)
            conn.process_data_events(time_limit=0.1)
            if len(replies) > before:
                last = time.monotonic()
            elif time.monotonic() - last > spec["idle"]:
                break
    conn.close()
    with open(spec["results"], "w") as f:
        json.dump({"publish_seconds": publish_seconds, "sent_at": sent_at, "replies": replies}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
