"""The server's side of KT-pFL, FedMD and local training, in numpy and torch: no Flower here (the Flower strategy,
fedkt.strategy, moves messages; the GPU check and the benchmarks' bare loop call this directly).

Round r: every client uploads its predictions on round r's alignment subset (the subset of alignment_seed(seed, r));
`check_upload` refuses what cannot be predictions of that subset; `update(r, uploads)` turns the accepted uploads
into each client's next target:

- KT-pFL: c takes its gradient steps on the uploads softened at the temperature (fedkt.core.KnowledgeCoefficients),
  then client i's target is s_i = sum_j c_ij softmax(z_j / T) over the clients present;
- FedMD: one consensus for all, the mean of the softened predictions (or of the logits, consensus=logits);
- local: nothing is exchanged.

A client absent in round r keeps its last target and the round it was computed on: `target_for(i)` gives the
alignment seed of that round with the target, so the client distils on exactly the images the target describes.
"""

from __future__ import annotations

import logging

import numpy as np

from fedkt.config import RunConfig
from fedkt.core import KnowledgeCoefficients, alignment_seed, check_predictions, fedmd_consensus, soft_predictions

log = logging.getLogger("fedkt")


def local_epochs(cfg: RunConfig, server_round: int) -> int:
    """Private epochs in round r: fixed, or ramped linearly from client.local_epochs up to
    client.max_local_epochs over the rounds (as the KT-pFL code does)."""
    first, last, rounds = cfg.client.local_epochs, cfg.client.max_local_epochs, cfg.num_rounds
    if last <= first or rounds == 1:
        return first
    return int(round(first + (last - first) * (server_round - 1) / (rounds - 1)))


# Seconds one KL gradient step on c takes for N = 1000 clients and M = 5000 public samples on a 2-core
# CPU (bench/bench_server.py, docs/RESULTS.md); the step grows as N^2 * M.
KL_STEP_SECONDS_N1000 = 2.2


def kl_round_seconds(num_clients: int, align_size: int, steps: int) -> float:
    """Rough CPU seconds the KL update of c takes per round (for the large-N warning)."""
    return KL_STEP_SECONDS_N1000 * (num_clients / 1000) ** 2 * (align_size / 5000) * steps


def make_coefficients(cfg: RunConfig) -> KnowledgeCoefficients:
    algo = cfg.algorithm
    if algo.objective == "kl":
        estimate = kl_round_seconds(cfg.num_clients, algo.align_size, algo.coef_steps)
        if estimate > 10:
            log.warning("KT-pFL with %s clients: the KL update of c (%s steps on %s samples) takes about %.0f s "
                        "a round on a 2-core CPU; algorithm.objective=mse algorithm.coef_steps=1 takes about "
                        "1 s at 1000 clients (docs/RESULTS.md, server cost)", cfg.num_clients,
                        algo.coef_steps, algo.align_size, estimate)
    return KnowledgeCoefficients(
        cfg.num_clients, rho=algo.rho, objective=algo.objective, step_size=algo.coef_step or None,
        steps=algo.coef_steps, tol=algo.coef_tol, device=algo.coef_device, normalize=algo.normalize, tau=algo.tau,
        weighting=algo.weighting, topk=algo.topk)


class KnowledgeServer:
    """What the server computes and remembers for `algorithm.name` in ktpfl, fedmd, local (FedAvg's averaging is
    Flower's own FedAvg: fedkt.fedavg)."""

    def __init__(self, cfg: RunConfig, num_classes: int):
        self.cfg = cfg
        self.algorithm = cfg.algorithm.name
        self.num_clients = cfg.num_clients
        self.num_classes = num_classes
        self.align_size = cfg.algorithm.align_size
        self.coefficients = make_coefficients(cfg) if self.algorithm == "ktpfl" else None
        # partition id -> (r, target on round r's alignment subset); an absent client keeps its last one
        self.targets: dict[int, tuple[int, np.ndarray]] = {}

    @property
    def collaborates(self) -> bool:
        return self.algorithm != "local"

    def next_seed(self, server_round: int) -> int:
        """The alignment seed clients predict on in round r (-1: they upload nothing)."""
        return alignment_seed(self.cfg.seed, server_round) if self.collaborates else -1

    def target_for(self, pid: int) -> tuple[int, np.ndarray] | None:
        """(the alignment seed of the subset the client's target was computed on, the target), or None."""
        if pid not in self.targets:
            return None
        target_round, target = self.targets[pid]
        return alignment_seed(self.cfg.seed, target_round), target

    def check_upload(self, arrays: list[np.ndarray]) -> str | None:
        """Why `arrays` cannot be one client's predictions on the round's subset, or None."""
        if len(arrays) != 1:
            return f"expected one array of predictions, got {len(arrays)}"
        return check_predictions(arrays[0], self.align_size, self.num_classes, kind=self.cfg.algorithm.upload)

    def update(self, server_round: int, uploads: dict[int, np.ndarray]) -> dict:
        """The accepted uploads of round r (partition id -> predictions) become the clients' next targets.
        Returns what the round's record keeps of it: KT-pFL's steps on c (coef_steps) and, when algorithm.coef_tol
        watches it, the objective of the c kept (coef_loss)."""
        present = np.zeros(self.num_clients, dtype=bool)
        present[list(uploads)] = True
        values = np.zeros((self.num_clients, self.align_size, self.num_classes), dtype=np.float32)
        for pid, array in uploads.items():
            values[pid] = array
        temperature = self.cfg.algorithm.temperature
        if self.cfg.algorithm.upload == "logits":
            probs = np.asarray(soft_predictions(values, temperature), dtype=np.float32)
        else:
            probs = values
        if self.algorithm == "ktpfl":
            self.coefficients.update(probs, present)
            targets = self.coefficients.targets(probs, present)
            for pid in uploads:  # absent clients keep their last target (and its alignment subset)
                self.targets[pid] = (server_round, np.asarray(targets[pid], dtype=np.float32))
            facts = {"coef_steps": self.coefficients.last_steps}
            if self.coefficients.last_loss is not None:
                facts["coef_loss"] = self.coefficients.last_loss
            return facts
        else:  # fedmd: one consensus for everyone
            mode = self.cfg.algorithm.consensus
            consensus = fedmd_consensus(values if mode == "logits" else probs, present, mode=mode)
            consensus = np.asarray(consensus, dtype=np.float32)
            self.targets = {pid: (server_round, consensus) for pid in range(self.num_clients)}
            return {}

    def state_dict(self) -> dict:
        return {"coefficients": None if self.coefficients is None else self.coefficients.state_dict(),
                "targets": {pid: (r, t.copy()) for pid, (r, t) in self.targets.items()}}

    def load_state_dict(self, state: dict) -> None:
        if self.coefficients is not None:
            self.coefficients.load_state_dict(state["coefficients"])
        self.targets = dict(state["targets"])
