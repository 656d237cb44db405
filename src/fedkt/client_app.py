"""The client side: a Flower NumPyClient per partition id, owning its own architecture and shard.

`fit` distils towards the target it was sent (if any), trains on the private shard, and returns its
predictions on the alignment subset named for this round. `evaluate` tests on the client's own test
split. Model, optimizer and learning-rate state outlive the short-lived ClientApp, in a file keyed by
partition id (client.state_store=disk) or in the node's context.state (client.state_store=context).
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context

from fedkt.config import client_architectures, get
from fedkt.core import soft_predictions
from fedkt.models import build_model
from fedkt.task import alignment_indices, client_data, load_federation, public_data
from fedkt.train import LRPolicy, distill, make_optimizer, pick_device, predict_logits, set_threads, train_epochs
from fedkt.train import evaluate as evaluate_model

STATE_KEY = "fedkt-client"


class StateStore:
    """Where a client's state lives between rounds: bytes in a file or in the node's context."""

    def __init__(self, cfg: dict, context: Context, partition_id: int):
        self.kind = get(cfg, "client.state_store")
        self.context = context
        self.path = Path(cfg["run_dir"]) / "clients" / f"client_{partition_id:04d}.pt"

    def load(self) -> dict | None:
        if self.kind == "context":
            if STATE_KEY not in self.context.state:
                return None
            blob = self.context.state[STATE_KEY]["blob"]
        else:
            if not self.path.exists():
                return None
            blob = self.path.read_bytes()
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)

    def save(self, state: dict) -> int:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        blob = buffer.getvalue()
        if self.kind == "context":
            self.context.state[STATE_KEY] = ConfigRecord({"blob": blob})
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(blob)
            os.replace(tmp, self.path)
        return len(blob)


class KnowledgeClient(NumPyClient):
    def __init__(self, cfg: dict, context: Context):
        self.cfg = cfg
        self.partition_id = int(context.node_config["partition-id"])
        if not 0 <= self.partition_id < int(cfg["num_clients"]):
            raise ValueError(f"partition-id {self.partition_id} is outside 0..{int(cfg['num_clients']) - 1}")
        self.architecture = client_architectures(cfg)[self.partition_id]
        self.device = pick_device(get(cfg, "client.device"))
        set_threads(int(get(cfg, "client.num_cpus")))
        self.store = StateStore(cfg, context, self.partition_id)
        self.data = client_data(cfg, self.partition_id)
        self.model, self.optimizer, self.policy, self.meta = self._restore()

    # -- state ------------------------------------------------------------------------------------

    def _restore(self):
        c = self.cfg["client"]
        num_classes = _num_classes(self.cfg)
        torch.manual_seed(int(self.cfg["seed"]) * 10_000 + self.partition_id)
        model = build_model(self.architecture, num_classes=num_classes, in_channels=self.data.x_train.shape[1],
                            norm=get(self.cfg, "model.norm"), stem=get(self.cfg, "model.stem")).to(self.device)
        optimizer = make_optimizer(model, float(c["lr"]), momentum=float(c["momentum"]),
                                   weight_decay=float(c["weight_decay"]))
        policy = LRPolicy(optimizer, policy=c["lr_policy"], base_lr=float(c["lr"]), patience=int(c["lr_patience"]),
                          factor=float(c["lr_factor"]), total_steps=int(self.cfg["num_rounds"]))
        meta = {"rounds_done": 0}
        state = self.store.load()
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            policy.load_state_dict(state["policy"])
            meta = state["meta"]
        return model, optimizer, policy, meta

    def _save(self) -> int:
        return self.store.save({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "policy": self.policy.state_dict(), "meta": self.meta})

    # -- Flower hooks -----------------------------------------------------------------------------

    def fit(self, parameters, config):
        start = time.time()
        c, algo = self.cfg["client"], self.cfg["algorithm"]
        rnd = int(config["round"])
        seed = int(self.cfg["seed"]) * 1_000_003 + self.partition_id * 1_009 + rnd
        metrics = {"partition_id": self.partition_id, "architecture": self.architecture}
        if self.meta["rounds_done"] == 0:
            self._warm_up(seed)
        x_public = None
        if parameters:
            if int(config["target_partition"]) != self.partition_id:
                raise ValueError(f"client {self.partition_id} was sent the target of client "
                                 f"{config['target_partition']}")
            x_public, _ = public_data(self.cfg)
            idx = alignment_indices(len(x_public), int(algo["align_size"]), int(config["target_seed"]))
            target = torch.from_numpy(np.asarray(parameters[0], dtype=np.float32))
            distiller = make_optimizer(self.model, float(algo["distill_lr"]), momentum=float(c["momentum"]),
                                       weight_decay=float(c["weight_decay"]))
            metrics["distill_loss"] = float(distill(
                self.model, x_public[idx], target, distiller, epochs=int(algo["distill_epochs"]),
                batch_size=int(algo["distill_batch_size"]), temperature=float(algo["temperature"]),
                loss=algo["distill_loss"], device=self.device, seed=seed))
        train = train_epochs(self.model, self.data.x_train, self.data.y_train, self.optimizer,
                             epochs=int(config["epochs"]), batch_size=int(c["batch_size"]), device=self.device,
                             augment=bool(c["augment"]), seed=seed)
        val_loss, val_acc = evaluate_model(self.model, self.data.x_val, self.data.y_val,
                                     batch_size=int(c["eval_batch_size"]), device=self.device)
        metrics.update(train_loss=float(train["loss"]), train_acc=float(train["acc"]), val_loss=float(val_loss),
                       val_acc=float(val_acc), lr=float(self.policy.lr))
        self.policy.step(val_acc)
        uploads = []
        if int(config["next_seed"]) >= 0:
            if x_public is None:
                x_public, _ = public_data(self.cfg)
            idx = alignment_indices(len(x_public), int(algo["align_size"]), int(config["next_seed"]))
            logits = predict_logits(self.model, x_public[idx], batch_size=int(c["eval_batch_size"]),
                                    device=self.device)
            values = logits if algo["upload"] == "logits" else soft_predictions(logits, float(algo["temperature"]))
            uploads = [np.asarray(values, dtype=np.float16 if algo["wire_dtype"] == "float16" else np.float32)]
        self.meta["rounds_done"] = rnd
        metrics["state_bytes"] = self._save()
        metrics["bytes_sent"] = int(sum(a.nbytes for a in uploads))
        metrics["seconds"] = time.time() - start
        return uploads, len(self.data.y_train), metrics

    def evaluate(self, parameters, config):
        loss, acc = evaluate_model(self.model, self.data.x_test, self.data.y_test,
                             batch_size=int(self.cfg["client"]["eval_batch_size"]), device=self.device)
        return float(loss), len(self.data.y_test), {"partition_id": self.partition_id, "test_acc": float(acc)}

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


def _num_classes(cfg: dict) -> int:
    data, _ = load_federation(cfg)
    return data.num_classes


def make_client_app(cfg: dict) -> ClientApp:
    """A ClientApp whose clients all read `cfg` (passed by closure: the simulation's run_config is empty)."""

    def client_fn(context: Context):
        return KnowledgeClient(cfg, context).to_client()

    return ClientApp(client_fn=client_fn)
