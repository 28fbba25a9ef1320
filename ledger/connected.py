"""Keeping a replica's part connected to the broker: run it, and when the broker goes, run it again."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from broker.errors import BrokerError
from ledger.errors import LedgerError

__all__ = ["BROKER_TROUBLE", "keep_connected"]

log = logging.getLogger(__name__)

# What losing (or not reaching) the broker looks like from inside a part: the broker seam
# (broker.transport) turns the client library's errors into BrokerError.
BROKER_TROUBLE = (OSError, BrokerError, LedgerError)


def keep_connected(what: str, session: Callable[[threading.Event], None], stop: threading.Event,
                   go_on: Callable[[], bool], pause: float = 0.3) -> None:
    """Run ``session(stop)`` again after every loss of the broker, until ``stop`` is set or ``go_on()`` is false."""
    while not stop.is_set() and go_on():
        try:
            session(stop)
        except BROKER_TROUBLE as exc:
            if stop.is_set():
                return
            log.warning("%s lost the broker (%r); reconnecting", what, exc)
            time.sleep(pause)
