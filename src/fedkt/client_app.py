"""The client side: a Flower NumPyClient per partition id, owning its own architecture and shard.

`fit` distils towards the target it was sent (if any), trains on the private shard, and returns its
predictions on the alignment subset named for this round. `evaluate` tests on the client's own test
split. Model, optimizer and learning-rate state outlive the short-lived ClientApp, one version per
round, in files keyed by partition id (client.state_store=disk: survives a killed run, so it can be
resumed) or in the node's context.state (client.state_store=context).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context

from fedkt.config import client_architectures, get
from fedkt.core import alignment_indices, shift_targets, soft_predictions
from fedkt.faults import FaultPlan
from fedkt.models import build_model, load_model_arrays, model_arrays
from fedkt.task import client_data, load_federation, public_data
from fedkt.train import (LRPolicy, distill, make_optimizer, pick_device, predict_logits, set_threads,
                         state_from_bytes, state_to_bytes, train_epochs)
from fedkt.train import evaluate as evaluate_model

STATE_KEY = "fedkt-client"


class StateStore:
    """A client's state after each round, as bytes: in files round_NNNN.pt (the last two kept) or in
    the node's context.state (the last one). `load(r)` returns the newest version from round <= r."""

    def __init__(self, cfg: dict, context: Context, partition_id: int):
        self.kind = get(cfg, "client.state_store")
        self.context = context
        self.folder = Path(cfg["run_dir"]) / "clients" / f"client_{partition_id:04d}"

    def load(self, max_round: int) -> tuple[int, bytes] | None:
        if self.kind == "context":
            if STATE_KEY not in self.context.state:
                return None
            record = self.context.state[STATE_KEY]
            return (int(record["round"]), record["blob"]) if int(record["round"]) <= max_round else None
        rounds = [r for r in self._rounds() if r <= max_round]
        return (rounds[-1], (self.folder / f"round_{rounds[-1]:04d}.pt").read_bytes()) if rounds else None

    def save(self, server_round: int, blob: bytes) -> None:
        if self.kind == "context":
            self.context.state[STATE_KEY] = ConfigRecord({"round": server_round, "blob": blob})
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"round_{server_round:04d}.pt"
        tmp = self.folder / f".round_{server_round:04d}.tmp{os.getpid()}"
        tmp.write_bytes(blob)
        os.replace(tmp, path)  # a kill mid-write leaves the previous version whole
        for old in self._rounds()[:-2]:
            (self.folder / f"round_{old:04d}.pt").unlink(missing_ok=True)

    def _rounds(self) -> list[int]:
        if not self.folder.exists():
            return []
        return sorted(int(p.stem.split("_")[1]) for p in self.folder.glob("round_*.pt"))


class KnowledgeClient(NumPyClient):
    """Built per message; the heavy part (data, model, state) is set up only by fit and evaluate."""

    def __init__(self, cfg: dict, context: Context):
        self.cfg = cfg
        self.partition_id = int(context.node_config["partition-id"])
        if not 0 <= self.partition_id < int(cfg["num_clients"]):
            raise ValueError(f"partition-id {self.partition_id} is outside 0..{int(cfg['num_clients']) - 1}")
        self.architecture = client_architectures(cfg)[self.partition_id]
        self.store = StateStore(cfg, context, self.partition_id)
        self.faults = FaultPlan(cfg)

    def get_properties(self, config):
        return {"partition_id": self.partition_id, "architecture": self.architecture}

    # -- state ------------------------------------------------------------------------------------

    def _setup(self, max_round: int) -> None:
        """Data, model, optimizer and lr policy, restored from the newest state of a round <= max_round."""
        c = self.cfg["client"]
        self.device = pick_device(c["device"])
        set_threads(int(c["num_cpus"]))
        self.data = client_data(self.cfg, self.partition_id)
        torch.manual_seed(int(self.cfg["seed"]) * 10_000 + self.partition_id)
        self.model = build_model(self.architecture, num_classes=load_federation(self.cfg)[0].num_classes,
                                 in_channels=self.data.x_train.shape[1], norm=get(self.cfg, "model.norm"),
                                 stem=get(self.cfg, "model.stem")).to(self.device)
        self.optimizer = make_optimizer(self.model, float(c["lr"]), momentum=float(c["momentum"]),
                                        weight_decay=float(c["weight_decay"]))
        self.policy = LRPolicy(self.optimizer, policy=c["lr_policy"], base_lr=float(c["lr"]),
                               patience=int(c["lr_patience"]), factor=float(c["lr_factor"]),
                               total_steps=int(self.cfg["num_rounds"]))
        self.rounds_done = 0
        saved = self.store.load(max_round)
        if saved is not None:
            extra = state_from_bytes(saved[1], self.model, self.optimizer)
            self.policy.load_state_dict(extra["policy"])
            self.rounds_done = int(extra["rounds_done"])

    def _save(self, server_round: int) -> int:
        blob = state_to_bytes(self.model, self.optimizer,
                              extra={"policy": self.policy.state_dict(), "rounds_done": self.rounds_done})
        self.store.save(server_round, blob)
        return len(blob)

    # -- Flower hooks -----------------------------------------------------------------------------

    def fit(self, parameters, config):
        start = time.time()
        rnd = int(config["round"])
        self.faults.before_fit(self.partition_id, rnd)
        self._setup(max_round=rnd - 1)
        c = self.cfg["client"]
        seed = int(self.cfg["seed"]) * 1_000_003 + self.partition_id * 1_009 + rnd
        metrics = {"partition_id": self.partition_id, "architecture": self.architecture}
        fedavg = self.cfg["algorithm"]["name"] == "fedavg"
        if fedavg:  # start from the global model, with a fresh momentum (plain FedAvg)
            load_model_arrays(self.model, parameters)
            self.optimizer.state.clear()
        if self.rounds_done == 0:
            self._warm_up(seed)
        if parameters and not fedavg:
            if int(config["target_partition"]) != self.partition_id:
                raise ValueError(f"client {self.partition_id} was sent the target of client "
                                 f"{config['target_partition']}")
            metrics.update(self._guarded_distill(parameters[0], int(config["target_seed"]), seed))
        train = train_epochs(self.model, self.data.x_train, self.data.y_train, self.optimizer,
                             epochs=int(config["epochs"]), batch_size=int(c["batch_size"]), device=self.device,
                             augment=bool(c["augment"]), seed=seed)
        val_loss, val_acc = evaluate_model(self.model, self.data.x_val, self.data.y_val,
                                           batch_size=int(c["eval_batch_size"]), device=self.device)
        metrics.update(train_loss=float(train["loss"]), train_acc=float(train["acc"]), val_loss=float(val_loss),
                       val_acc=float(val_acc), lr=float(self.policy.lr))
        self.policy.step(val_acc)
        uploads = []
        if fedavg:
            uploads = model_arrays(self.model)
        elif int(config["next_seed"]) >= 0:
            uploads = [self._predict(int(config["next_seed"]))]
        self.rounds_done = rnd
        metrics["state_bytes"] = self._save(rnd)
        uploads = self.faults.corrupt(self.partition_id, rnd, uploads, metrics)
        metrics["bytes_sent"] = int(sum(a.nbytes for a in uploads))
        metrics["seconds"] = time.time() - start
        return uploads, len(self.data.y_train), metrics

    def evaluate(self, parameters, config):
        self._setup(max_round=int(config["round"]))
        if parameters:  # FedAvg: the global model, tested on this client's own test split
            load_model_arrays(self.model, parameters)
        loss, acc = evaluate_model(self.model, self.data.x_test, self.data.y_test,
                                   batch_size=int(self.cfg["client"]["eval_batch_size"]), device=self.device)
        return float(loss), len(self.data.y_test), {"partition_id": self.partition_id, "test_acc": float(acc)}

    # -- steps ------------------------------------------------------------------------------------

    def _guarded_distill(self, target: np.ndarray, target_seed: int, seed: int) -> dict:
        """Distil; with client.distill_guard=val, undo it when it lowered the validation accuracy (the model
        goes back to its weights before distilling; the private optimizer is not touched by distillation)."""
        guard = self.cfg["client"]["distill_guard"] == "val"
        if guard:
            weights = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
            val_before = self._val_acc()
        metrics = {"distill_loss": self._distill(target, target_seed, seed), "distill_lr": self._distill_lr()}
        if guard:
            val_after = self._val_acc()
            metrics["distill_kept"] = int(not val_after < val_before)
            if not metrics["distill_kept"]:
                self.model.load_state_dict(weights)
        return metrics

    def _val_acc(self) -> float:
        return evaluate_model(self.model, self.data.x_val, self.data.y_val,
                              batch_size=int(self.cfg["client"]["eval_batch_size"]), device=self.device)[1]

    def _distill(self, target: np.ndarray, target_seed: int, seed: int) -> float:
        c, algo = self.cfg["client"], self.cfg["algorithm"]
        x_public, _ = public_data(self.cfg)
        idx = alignment_indices(len(x_public), int(algo["align_size"]), target_seed)
        optimizer = make_optimizer(self.model, self._distill_lr(), momentum=float(c["momentum"]),
                                   weight_decay=float(c["weight_decay"]))
        target = np.asarray(target, dtype=np.float32)
        if algo["target_shift"] != "none":
            counts = np.bincount(self.data.y_train.numpy(), minlength=target.shape[1])
            target = shift_targets(target, counts, algo["target_shift"])
        return float(distill(self.model, x_public[idx], torch.from_numpy(target),
                             optimizer, epochs=int(algo["distill_epochs"]),
                             batch_size=int(algo["distill_batch_size"]), temperature=float(algo["temperature"]),
                             loss=algo["distill_loss"], device=self.device, seed=seed))

    def _distill_lr(self) -> float:
        """algorithm.distill_lr, scaled by the factor client.lr_policy has applied to the private rate so far
        (distill_lr_policy=follow), or as it is (fixed)."""
        base = float(self.cfg["algorithm"]["distill_lr"])
        if self.cfg["algorithm"]["distill_lr_policy"] == "fixed":
            return base
        return base * self.policy.lr / self.policy.base_lr

    def _predict(self, align_seed: int) -> np.ndarray:
        algo = self.cfg["algorithm"]
        x_public, _ = public_data(self.cfg)
        idx = alignment_indices(len(x_public), int(algo["align_size"]), align_seed)
        logits = predict_logits(self.model, x_public[idx], batch_size=int(self.cfg["client"]["eval_batch_size"]),
                                device=self.device)
        values = logits if algo["upload"] == "logits" else soft_predictions(logits, float(algo["temperature"]))
        return np.asarray(values, dtype=np.float16 if algo["wire_dtype"] == "float16" else np.float32)

    def _warm_up(self, seed: int) -> None:
        """Before the first upload: transfer learning on the labelled public set, then private epochs."""
        c = self.cfg["client"]
        if int(c["warmup_public_epochs"]) > 0:
            x_public, y_public = public_data(self.cfg)
            train_epochs(self.model, x_public, y_public, self.optimizer, epochs=int(c["warmup_public_epochs"]),
                         batch_size=int(c["batch_size"]), device=self.device, augment=bool(c["augment"]), seed=seed)
        if int(c["warmup_epochs"]) > 0:
            train_epochs(self.model, self.data.x_train, self.data.y_train, self.optimizer,
                         epochs=int(c["warmup_epochs"]), batch_size=int(c["batch_size"]), device=self.device,
                         augment=bool(c["augment"]), seed=seed + 1)


def make_client_app(cfg: dict) -> ClientApp:
    """A ClientApp whose clients all read `cfg` (passed by closure: the simulation's run_config is empty)."""

    def client_fn(context: Context):
        return KnowledgeClient(cfg, context).to_client()

    return ClientApp(client_fn=client_fn)


def _deployed_client_fn(context: Context):
    from fedkt.deploy import client_fn

    return client_fn(context)


# The deployed ClientApp (`flwr run`, pyproject's [tool.flwr.app.components]): KnowledgeClient over the
# run config, with the data named by the SuperNode's --node-config (fedkt.deploy.client_cfg).
app = ClientApp(client_fn=_deployed_client_fn)
