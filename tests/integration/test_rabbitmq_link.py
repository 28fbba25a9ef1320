"""The pika link's appends against a real RabbitMQ: many messages confirmed in one wait, all there, in order."""
from __future__ import annotations

from typing import Any

import pytest

from broker.rabbitmq import RabbitMQ
from broker.transport import Delivery
from tests.conftest import AMQP_URL


def _read_stream(transport: RabbitMQ, stream: str, count: int) -> list[bytes]:
    link = transport.open("acb-test-reader", heartbeat=5)
    got: list[Delivery] = []
    try:
        link.consume(stream, got.append, prefetch=1000, arguments={"x-stream-offset": "first"})
        for _ in range(200):  # each process returns as soon as something arrived
            if len(got) >= count:
                break
            link.process(0.1)
            if got:
                link.ack(got[-1].tag, multiple=True)
    finally:
        link.close()
    return [d.body for d in got]


@pytest.mark.parametrize("background", [False, True])
def test_a_thousand_appends_confirmed_together_all_arrive_in_order(names: Any, background: bool) -> None:
    transport = RabbitMQ(AMQP_URL)
    link = transport.open("acb-test-appender", heartbeat=5, background=background)
    bodies = [b"m%04d" % i for i in range(1000)]
    try:
        link.declare(names)
        link.append(names.log, bodies[:1])
        link.append(names.log, bodies[1:600])  # one wait for all 599 confirms
        link.append(names.log, [])
        link.append(names.log, bodies[600:])
    finally:
        link.close()
    assert _read_stream(transport, names.log, len(bodies)) == bodies
