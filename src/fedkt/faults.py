"""Fault injection, for tests and for users who study robustness: clients that crash, stall or lie.

    faults.fail_prob=0.1                       # every fit fails with probability 0.1 (seeded per client and round)
    faults.inject='1:2:crash,3:2:nan'          # client 1 crashes in round 2, client 3 uploads NaN in round 2

Kinds: crash (fit raises), slow (fit sleeps faults.slow_seconds first), nan, shape (one row short),
huge (logits of 1e30), not_probs (rows that do not sum to 1), dtype (integers), impersonate (claims the
next client's partition id). The server must reject every lie and go on without the client.
"""

from __future__ import annotations

import time

import numpy as np

KINDS = ("crash", "slow", "nan", "shape", "huge", "not_probs", "dtype", "impersonate")


class InjectedFault(RuntimeError):
    """Raised by a client told to fail (faults.fail_prob / faults.inject)."""


def parse_injections(text: str) -> dict[tuple[int, int], str]:
    """'1:2:crash,3:2:nan' -> {(1, 2): 'crash', (3, 2): 'nan'}; raises ValueError naming faults.inject."""
    plan = {}
    for item in filter(None, (part.strip() for part in str(text).split(","))):
        try:
            pid, rnd, kind = item.split(":")
            plan[(int(pid), int(rnd))] = kind
        except ValueError:
            raise ValueError(f"faults.inject: cannot read {item!r}; write partition:round:kind, "
                             f"e.g. '1:2:crash'") from None
        if kind not in KINDS:
            raise ValueError(f"faults.inject: unknown kind {kind!r} in {item!r}; allowed: {', '.join(KINDS)}")
    return plan


class FaultPlan:
    """What faults.* asks of the clients (fail_prob, inject, slow_seconds), for a run of num_clients clients."""

    def __init__(self, fail_prob: float, inject: str, slow_seconds: float, seed: int, num_clients: int):
        self.fail_prob = fail_prob
        self.slow_seconds = slow_seconds
        self.plan = parse_injections(inject)
        self.seed = seed
        self.num_clients = num_clients

    def before_fit(self, pid: int, rnd: int) -> None:
        kind = self.plan.get((pid, rnd))
        if kind == "slow":
            time.sleep(self.slow_seconds)
        if kind == "crash":
            raise InjectedFault(f"injected crash of client {pid} in round {rnd}")
        if self.fail_prob > 0:
            draw = np.random.default_rng([self.seed, pid, rnd, 0xFA17]).random()
            if draw < self.fail_prob:
                raise InjectedFault(f"injected failure of client {pid} in round {rnd} (fail_prob {self.fail_prob})")

    def corrupt(self, pid: int, rnd: int, uploads: list[np.ndarray], metrics: dict) -> list[np.ndarray]:
        kind = self.plan.get((pid, rnd))
        if kind == "impersonate":
            metrics["partition_id"] = (pid + 1) % self.num_clients
        if not uploads or kind not in ("nan", "shape", "huge", "not_probs", "dtype"):
            return uploads
        values = uploads[0].astype(np.float32)
        if kind == "nan":
            values[0, 0] = np.nan
        elif kind == "shape":
            values = values[:-1]
        elif kind == "huge":
            values = np.full_like(values, 1e30)
        elif kind == "not_probs":
            values = np.abs(values) * 2 + 1
        elif kind == "dtype":
            values = values.astype(np.int32)
        return [values] + uploads[1:]
