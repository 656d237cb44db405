"""Feedback inside a round: how many clients are done out of how many were asked, as they finish.

Flower's legacy server runs every client's fit (then evaluate) in a thread and hands the strategy the
results only when all are in; a round of the paper's size takes minutes in silence. `RoundProgress.track`
wraps the proxies a strategy returns from configure_fit / configure_evaluate, so that each finished call is
counted, and a line such as

    round 3/20 training: 12/20 clients done (1 failed), 95 s

is logged at most every `interval` seconds (and when the last one finishes, if a line was logged before).
The same code runs in the simulation and in a deployment (the ServerApp's proxies are the grid's).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from flwr.common import Code
from flwr.server.client_proxy import ClientProxy

log = logging.getLogger("fedkt")


class RoundProgress:
    """Counts the finished clients of one phase ("training", "evaluation") of one round."""

    def __init__(self, label: str, expected: int, interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, emit: Callable[[str], None] | None = None):
        self.label, self.expected, self.interval, self.clock = label, expected, interval, clock
        self.emit = emit or log.info
        self.start = self.last = clock()
        self.done = self.failed = 0
        self.lines = 0
        self._lock = threading.Lock()

    def finished(self, ok: bool) -> None:
        with self._lock:
            self.done += 1
            self.failed += 0 if ok else 1
            now = self.clock()
            last = self.done == self.expected
            if now - self.last >= self.interval or (last and self.lines):
                failed = f" ({self.failed} failed)" if self.failed else ""
                self.emit(f"{self.label}: {self.done}/{self.expected} clients done{failed}, {now - self.start:.0f} s")
                self.last, self.lines = now, self.lines + 1

    def track(self, instructions: list) -> list:
        """[(proxy, ins)] with every proxy wrapped so that its fit / evaluate is counted when it returns."""
        return [(CountedProxy(proxy, self), ins) for proxy, ins in instructions]


class CountedProxy(ClientProxy):
    """A ClientProxy that reports to a RoundProgress when fit or evaluate returns (or raises)."""

    def __init__(self, proxy: ClientProxy, progress: RoundProgress):
        super().__init__(proxy.cid)
        self.proxy, self.progress = proxy, progress

    def __getattr__(self, name):  # anything else (node_id, ...) is the wrapped proxy's
        if name == "proxy":
            raise AttributeError(name)
        return getattr(self.proxy, name)

    def _counted(self, call, *args, **kwargs):
        try:
            res = call(*args, **kwargs)
        except BaseException:
            self.progress.finished(ok=False)
            raise
        self.progress.finished(ok=res.status.code == Code.OK)
        return res

    def fit(self, ins, timeout, group_id):
        return self._counted(self.proxy.fit, ins, timeout=timeout, group_id=group_id)

    def evaluate(self, ins, timeout, group_id):
        return self._counted(self.proxy.evaluate, ins, timeout=timeout, group_id=group_id)

    def get_properties(self, ins, timeout, group_id):
        return self.proxy.get_properties(ins, timeout=timeout, group_id=group_id)

    def get_parameters(self, ins, timeout, group_id):
        return self.proxy.get_parameters(ins, timeout=timeout, group_id=group_id)

    def reconnect(self, ins, timeout, group_id):
        return self.proxy.reconnect(ins, timeout=timeout, group_id=group_id)
