"""Fair turns between senders: one client's flood must not delay everyone else's commands.

The primary takes commands off the queue as fast as they come and files them
by the channel they came on (the reply-to address RabbitMQ gives each client
channel: a stranger cannot claim another client's). Each batch then takes
them in turns, one per channel round and round, so a client with one command
waiting goes in the next batch however many another has queued. A channel
with more than ``per_channel`` waiting is over its share: what it sends beyond
that is answered at once with ``busy`` (costing the primary a parse, not a
decision), so a flood drains from the broker instead of standing in front of
others.

Pure bookkeeping (no broker, no clock), so the policy is tested on its own.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Generic, TypeVar

__all__ = ["FairInbox"]

T = TypeVar("T")


class FairInbox(Generic[T]):
    """Messages waiting for a batch, filed by channel, taken in turns."""

    def __init__(self, per_channel: int = 512) -> None:
        self.per_channel = per_channel
        self._queues: OrderedDict[str, deque[T]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, channel: str, item: T) -> bool:
        """File ``item``; False when its channel already has its share waiting (the caller sheds it)."""
        queue = self._queues.get(channel)
        if queue is None:
            queue = self._queues[channel] = deque()
        elif len(queue) >= self.per_channel:
            return False
        queue.append(item)
        self._size += 1
        return True

    def take(self, limit: int) -> list[T]:
        """Up to ``limit`` items, one per channel in turn; a channel served goes to the back of the line."""
        out: list[T] = []
        while self._queues and len(out) < limit:
            for channel in list(self._queues):
                queue = self._queues[channel]
                out.append(queue.popleft())
                if queue:
                    self._queues.move_to_end(channel)
                else:
                    del self._queues[channel]
                if len(out) >= limit:
                    break
        self._size -= len(out)
        return out

    def drain(self) -> list[T]:
        """Everything waiting (to hand back on losing the queue)."""
        out = [item for queue in self._queues.values() for item in queue]
        self._queues.clear()
        self._size = 0
        return out
