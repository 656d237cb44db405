"""The client side's Flower adapter: a NumPyClient per partition id, translating Flower's messages into the steps
of its `Learner` (fedkt.learner: warm-up, distillation, training, prediction, evaluation).

`fit` distils towards the target it was sent (if any), trains on the private shard, and returns its
predictions on the alignment subset named for this round. `evaluate` tests on the client's own test
split. Model, optimizer and learning-rate state outlive the short-lived ClientApp, one version per
round, in files keyed by partition id (client.state_store=disk: survives a killed run, so it can be
resumed) or in the node's context.state (client.state_store=context).

The knowledge-transfer arms and local training evaluate the model their last fit saved, so fit tests it as it
saves it and keeps the result beside the state; the evaluate message returns that result instead of restoring
the client, which was half of every round's per-message set-up (docs/RESULTS.md). FedAvg evaluates the global
model it is sent, and a state saved without a result (an older run's) is restored and tested as before.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from flwr.app import ConfigRecord
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context

from fedkt.app_config import client_cfg
from fedkt.config import RunConfig
from fedkt.faults import FaultPlan
from fedkt.files import write_atomic
from fedkt.learner import Learner, few_steps_warning

STATE_KEY = "fedkt-client"
TEST_RESULT = ("loss", "acc", "samples", "majority_share")  # what an evaluate message answers with
log = logging.getLogger("fedkt")


class StateStore:
    """A client's state after each round, as bytes: in files round_NNNN.pt (the last two kept) or in
    the node's context.state (the last one). `load(r)` returns the newest version from round <= r, and
    `load_test(r)` the test result saved with that version (round_NNNN.json, or the same record), if any."""

    def __init__(self, cfg: RunConfig, context: Context, partition_id: int):
        self.kind = cfg.client.state_store
        self.context = context
        self.folder = Path(cfg.run_dir) / "clients" / f"client_{partition_id:04d}"

    def load(self, max_round: int) -> tuple[int, bytes] | None:
        if self.kind == "context":
            if STATE_KEY not in self.context.state:
                return None
            record = self.context.state[STATE_KEY]
            return (int(record["round"]), record["blob"]) if int(record["round"]) <= max_round else None
        rounds = [r for r in self._rounds() if r <= max_round]
        return (rounds[-1], (self.folder / f"round_{rounds[-1]:04d}.pt").read_bytes()) if rounds else None

    def load_test(self, max_round: int) -> dict | None:
        if self.kind == "context":
            record = self.context.state[STATE_KEY] if STATE_KEY in self.context.state else None
            if record is None or int(record["round"]) > max_round or "test_acc" not in record:
                return None
            return {name: record[f"test_{name}"] for name in TEST_RESULT}
        rounds = [r for r in self._rounds() if r <= max_round]
        path = self.folder / f"round_{rounds[-1]:04d}.json" if rounds else None
        if path is None or not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError as err:  # a damaged result costs a restore, not the client's evaluation
            log.warning("cannot read the test result %s (%s); restoring the client to test it", path, err)
            return None

    def save(self, server_round: int, blob: bytes, test: dict | None = None) -> None:
        """Keep `blob` as the state after server_round, with `test` (TEST_RESULT's keys) measured on it, if given."""
        if self.kind == "context":
            record = {"round": server_round, "blob": blob}
            record.update({f"test_{name}": test[name] for name in TEST_RESULT} if test else {})
            self.context.state[STATE_KEY] = ConfigRecord(record)
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"round_{server_round:04d}.pt"
        # a result beside a state was measured on that state: an earlier attempt's goes before the state is replaced
        path.with_suffix(".json").unlink(missing_ok=True)
        write_atomic(path, blob)  # a kill mid-write leaves the previous version whole
        if test:
            write_atomic(path.with_suffix(".json"), json.dumps({name: test[name] for name in TEST_RESULT}))
        for old in self._rounds()[:-2]:
            for suffix in (".pt", ".json"):
                (self.folder / f"round_{old:04d}{suffix}").unlink(missing_ok=True)

    def _rounds(self) -> list[int]:
        if not self.folder.exists():
            return []
        return sorted(int(p.stem.split("_")[1]) for p in self.folder.glob("round_*.pt"))


class KnowledgeClient(NumPyClient):
    """The Flower side of one client: built per message, it restores the client's `Learner` (fedkt.learner) from
    the state store, runs the step Flower asks for, and saves the state again. Fault injection happens here."""

    def __init__(self, cfg: RunConfig, context: Context, warn_few_steps: bool = False):
        self.cfg = cfg
        self.warn_few_steps = warn_few_steps  # deployed: no ServerApp-side check knows the shard sizes
        self.partition_id = int(context.node_config["partition-id"])
        if not 0 <= self.partition_id < cfg.num_clients:
            raise ValueError(f"partition-id {self.partition_id} is outside 0..{cfg.num_clients - 1}")
        self.architecture = cfg.architectures[self.partition_id]
        self.store = StateStore(cfg, context, self.partition_id)
        self.faults = FaultPlan(cfg.faults.fail_prob, cfg.faults.inject, cfg.faults.slow_seconds, cfg.seed,
                                cfg.num_clients)
        self.learner: Learner | None = None  # built by fit / evaluate

    def get_properties(self, config):
        return {"partition_id": self.partition_id, "architecture": self.architecture}

    def _restore(self, max_round: int) -> Learner:
        saved = self.store.load(max_round)
        self.learner = Learner(self.cfg, self.partition_id, None if saved is None else saved[1])
        return self.learner

    def fit(self, parameters, config):
        start = time.time()
        rnd = int(config["round"])
        self.faults.before_fit(self.partition_id, rnd)
        learner = self._restore(max_round=rnd - 1)
        if rnd > 1 and learner.rounds_done == 0:  # legitimate after failed rounds, but never silent: it resets the client
            log.warning("client %d: no saved state from rounds before %d (it completed none, or its state under "
                        "client.state_store=%s was lost): it starts round %d from its initial model, pre-training and "
                        "warm-up included", self.partition_id, rnd, self.cfg.client.state_store, rnd)
        if self.warn_few_steps and rnd == 1 and (warning := few_steps_warning(self.cfg, self.partition_id,
                                                                               learner.num_train)):
            log.warning(warning)
        fedavg = self.cfg.algorithm.name == "fedavg"
        target = None
        if parameters and not fedavg:
            if int(config["target_partition"]) != self.partition_id:
                raise ValueError(f"client {self.partition_id} was sent the target of client "
                                 f"{config['target_partition']}")
            target = parameters[0]
        uploads, metrics = learner.fit_round(rnd, int(config["epochs"]), target=target,
                                             target_seed=int(config["target_seed"]),
                                             next_seed=int(config["next_seed"]),
                                             global_arrays=parameters if fedavg else None)
        blob = learner.state_bytes()
        self.store.save(rnd, blob, None if fedavg else measure_test(learner))
        metrics = {"partition_id": self.partition_id, "architecture": self.architecture, **metrics,
                   "state_bytes": len(blob)}
        uploads = self.faults.corrupt(self.partition_id, rnd, uploads, metrics)
        metrics["bytes_sent"] = int(sum(a.nbytes for a in uploads))
        metrics["seconds"] = time.time() - start
        return uploads, learner.num_train, metrics

    def evaluate(self, parameters, config):
        rnd = int(config["round"])
        fedavg = self.cfg.algorithm.name == "fedavg"  # FedAvg sends the global model to test; the others nothing
        tested = None if fedavg else self.store.load_test(max_round=rnd)
        if tested is None:
            tested = measure_test(self._restore(max_round=rnd), parameters if fedavg else None)
        return float(tested["loss"]), int(tested["samples"]), {
            "partition_id": self.partition_id, "test_acc": float(tested["acc"]),
            "test_majority_share": float(tested["majority_share"])}


def measure_test(learner: Learner, global_arrays=None) -> dict:
    """The learner's model (FedAvg: the global model) on its test split, as TEST_RESULT."""
    loss, acc = learner.test(global_arrays)
    return {"loss": float(loss), "acc": float(acc), "samples": len(learner.data.y_test),
            "majority_share": float(learner.test_majority_share)}


def make_client_app(cfg: RunConfig) -> ClientApp:
    """A ClientApp whose clients all read `cfg` (passed by closure: the simulation's run_config is empty)."""

    def client_fn(context: Context):
        return KnowledgeClient(cfg, context).to_client()

    return ClientApp(client_fn=client_fn)


def _deployed_client_fn(context: Context):
    cfg = client_cfg(context.run_config, context.node_config, context.run_id)
    return KnowledgeClient(cfg, context, warn_few_steps=True).to_client()


# The deployed ClientApp (`flwr run`, pyproject's [tool.flwr.app.components]): KnowledgeClient over the
# run config, with the data named by the SuperNode's --node-config (fedkt.app_config.client_cfg).
app = ClientApp(client_fn=_deployed_client_fn)
