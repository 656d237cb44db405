"""The client's side of every algorithm, in plain torch: one client's model, data and state, and the steps of a
round. No Flower here: the Flower client (fedkt.client_app), the GPU check and the benchmarks' bare loop all
drive a `Learner`.

A round (`fit_round`), in this order:
1. the first round only: warm up (labelled public epochs if client.warmup_public_epochs, then private epochs);
2. FedAvg: start from the global model with a fresh momentum; KT-pFL / FedMD: distil on the alignment subset of
   `target_seed` towards the target sent (client.distill_guard=val undoes a distillation that lowered the
   validation accuracy);
3. train on the private train split for `epochs` epochs (more where client.min_steps asks for more steps);
4. evaluate on the validation split, and step the learning-rate policy with that accuracy;
5. upload: FedAvg the model's arrays; KT-pFL / FedMD the predictions on the alignment subset of `next_seed`.

Every random draw comes from `round_seed(seed, partition id, round)`; the model is built after
torch.manual_seed(seed * 10000 + partition id), so the same config gives the same figures on CPU. `state_bytes()`
holds the model, optimizer and policy state and the rounds done; a Learner built with those bytes goes on exactly
where the last one stopped (ClientApps are short-lived).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from fedkt import models, train
from fedkt.aggregation import local_epochs
from fedkt.config import ConfigError, RunConfig, flatten
from fedkt.core import alignment_indices, shift_targets, soft_predictions
from fedkt.data import cache_root
from fedkt.files import write_atomic
from fedkt.models import (build_model, load_model_arrays, model_arrays, skip_padding_taps, to_bfloat16_autocast,
                          to_channels_last)
from fedkt.partition import majority_share
from fedkt.task import client_data, load_federation, public_data
from fedkt.train import (LRPolicy, distill, make_optimizer, pick_device, predict_logits, set_threads,
                         read_state, state_from_bytes, state_to_bytes, steps_per_epoch, train_epochs)
from fedkt.train import evaluate as evaluate_model


log = logging.getLogger("fedkt")

# Settings that cannot change a client's labelled public pre-training (they act after it, or not on numbers): the
# warm-up cache's key leaves them out, so that the arms of a sweep, and sweeps over the private budget, share one.
WARMUP_KEY_IGNORES = ("algorithm.", "num_rounds", "round_timeout", "min_fit_fraction", "resume", "output_dir",
                      "run_dir", "faults.", "logging.", "ray.", "data.cache_dir", "data.download",
                      "client.local_epochs", "client.max_local_epochs", "client.min_steps", "client.warmup_epochs",
                      "client.state_store", "client.distill_guard", "client.eval_batch_size", "client.num_gpus",
                      "client.warmup_cache")
# The code a pre-training runs through: editing it makes the cached ones stale, so its text is in the key too.
WARMUP_CODE = (Path(__file__), Path(models.__file__), Path(train.__file__))


def round_seed(seed: int, partition_id: int, server_round: int) -> int:
    """The seed of one client's random draws in one round (batch order, augmentation, dropout)."""
    return int(seed) * 1_000_003 + partition_id * 1_009 + server_round


def round_epochs(cfg: RunConfig, epochs: int, num_train: int) -> int:
    """The private epochs a client trains in a round: the server's `epochs`, raised until they take at least
    client.min_steps SGD steps on its num_train images (0 = off). A budget in steps, not epochs, keeps a small
    shard from being trained a handful of steps (21 images, batch 32: one step an epoch; docs/RESULTS.md)."""
    need = cfg.client.min_steps
    if need <= 0:
        return epochs
    return max(epochs, -(-need // steps_per_epoch(num_train, cfg.client.batch_size)))


def validation_readers(cfg: RunConfig) -> list[str]:
    """The settings that read a client's validation accuracy every round (a client without a validation image
    cannot run them)."""
    return [key for key, on in (("client.lr_policy=plateau", cfg.client.lr_policy == "plateau"),
                                ("client.distill_guard=val", cfg.client.distill_guard == "val")) if on]


def bfloat16_warning(cfg: RunConfig, on_gpu: bool, cpu_units: str) -> str | None:
    """The warning for model.bfloat16 on a CPU without bfloat16 units, where autocast emulates it, slower than
    float32; None when the option is off, the clients run on a GPU, or the CPU has the units."""
    if not cfg.bfloat16 or on_gpu or cpu_units:
        return None
    return (f"model.bfloat16={cfg.model.bfloat16}: this CPU has no bfloat16 units (amx_bf16, avx512_bf16), so those "
            f"models' passes are emulated and slower than in float32; model.bfloat16=\"\" turns it off")


def no_validation_advice(cfg: RunConfig, readers: list[str]) -> str:
    return (f"with data.samples_per_client={cfg.data.samples_per_client} and partition.val_fraction="
            f"{cfg.partition.val_fraction}, and {' and '.join(readers)} {'needs' if len(readers) == 1 else 'need'} "
            f"validation accuracy every round; raise data.samples_per_client or partition.val_fraction, or use "
            f"client.lr_policy=constant")


def private_epochs(cfg: RunConfig, num_train: int) -> int:
    """The private epochs a client with num_train training images trains in a whole run: the warm-up and every
    round's epochs (the server's schedule, raised by client.min_steps). One count for the few-steps warning and
    bench/budget_gap.py."""
    return cfg.client.warmup_epochs + sum(round_epochs(cfg, local_epochs(cfg, r), num_train)
                                          for r in range(1, cfg.num_rounds + 1))


def private_steps(cfg: RunConfig, num_train: int) -> int:
    """SGD steps a client with num_train training images takes on them in a run (warm-up and every round)."""
    return private_epochs(cfg, num_train) * steps_per_epoch(num_train, cfg.client.batch_size)


# Private SGD steps in a run under which a client is warned about: LeNet clients with 10 images a class gained 15
# points alone going from 11 to 101 steps, and nothing from 101 to 201 (docs/RESULTS.md, "Correction"). Not after
# labelled public pre-training: there the same clients lost 9 points alone going from 11 to 101 steps (they forget
# the public classes; docs/RESULTS.md, "Labelled public pre-training where transfer gains"), so the advice to add
# steps would be wrong.
FEW_PRIVATE_STEPS = 100


def few_steps_warning(cfg: RunConfig, partition_id: int, num_train: int) -> str | None:
    """The warning for one client that takes fewer than FEW_PRIVATE_STEPS private steps in the run, else None
    (never on generated data, where experiment=smoke checks the pipeline in as few steps as it can, nor after
    labelled public pre-training, client.warmup_public_epochs, where the private steps fine-tune a trained model). A
    deployed client says it itself: the ServerApp of `flwr run` holds no shard sizes."""
    steps = private_steps(cfg, num_train)
    if cfg.data.name == "synthetic" or cfg.client.warmup_public_epochs > 0 or steps >= FEW_PRIVATE_STEPS:
        return None
    return (f"client {partition_id} takes {steps} private SGD steps in this run ({num_train} training images, batch "
            f"{cfg.client.batch_size}), fewer than {FEW_PRIVATE_STEPS}. Training alone is likely under-trained, and "
            f"arms compared on it measure who gets more steps (docs/RESULTS.md, budget). Give every arm more: "
            f"client.local_epochs, or client.min_steps (private steps a round at least)")


class Learner:
    """One client's model, optimizer, learning-rate policy and data; `saved` is what state_bytes() returned at
    the end of its last round (None: a fresh model)."""

    def __init__(self, cfg: RunConfig, partition_id: int, saved: bytes | None = None):
        c = cfg.client
        self.cfg = cfg
        self.partition_id = partition_id
        self.architecture = cfg.architectures[partition_id]
        self.device = pick_device(c.device)
        set_threads(c.num_cpus)
        self.data = client_data(cfg, partition_id)
        readers = validation_readers(cfg)
        if readers and len(self.data.y_val) == 0:  # else the plateau rate fails after the round's training
            raise ConfigError(f"client {partition_id} has no validation image "
                              f"({len(self.data.y_train)} training images) {no_validation_advice(cfg, readers)}")
        state = None if saved is None else read_state(saved)
        self.model = self._build_model(state)
        self.optimizer = make_optimizer(self.model, c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        self.policy = LRPolicy(self.optimizer, policy=c.lr_policy, base_lr=c.lr, patience=c.lr_patience,
                               factor=c.lr_factor, total_steps=cfg.num_rounds)
        self.rounds_done = 0
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.policy.load_state_dict(state["extra"]["policy"])
            self.rounds_done = int(state["extra"]["rounds_done"])

    def _build_model(self, state: dict | None) -> torch.nn.Module:
        """A fresh, seeded model; or, from saved state, one built without initialising its weights (on the meta
        device) and given the saved tensors: the initialisation is thrown away anyway, and it is most of the
        set-up every message pays (0.6 s for ResNet-18, docs/RESULTS.md). Training re-seeds torch's global RNG
        (fedkt.train), so skipping the initialisation's draws changes no result."""
        def build():
            return build_model(self.architecture, num_classes=load_federation(self.cfg)[0].num_classes,
                               in_channels=self.data.x_train.shape[1], norm=self.cfg.model.norm,
                               stem=self.cfg.model.stem)
        if state is None:
            torch.manual_seed(self.cfg.seed * 10_000 + self.partition_id)
            model = build()
        else:
            with torch.device("meta"):
                model = build()
            model.load_state_dict(state["model"], assign=True)
            left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
            if left:
                raise ValueError(f"saved state of client {self.partition_id} lacks {', '.join(left[:3])}")
        model = model.to(self.device)
        if self.architecture in self.cfg.channels_last:
            model = to_channels_last(model)
        if self.cfg.model.skip_padding_taps:
            model = skip_padding_taps(model)
        return to_bfloat16_autocast(model) if self.architecture in self.cfg.bfloat16 else model

    @property
    def num_train(self) -> int:
        return len(self.data.y_train)

    def state_bytes(self) -> bytes:
        return state_to_bytes(self.model, self.optimizer,
                              extra={"policy": self.policy.state_dict(), "rounds_done": self.rounds_done})

    # -- a round ----------------------------------------------------------------------------------------

    def fit_round(self, server_round: int, epochs: int, target: np.ndarray | None = None, target_seed: int = -1,
                  next_seed: int = -1, global_arrays: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], dict]:
        """Steps 1-5 above; returns (uploads, metrics)."""
        seed = round_seed(self.cfg.seed, self.partition_id, server_round)
        metrics: dict = {}
        if global_arrays is not None:  # FedAvg: start from the global model, with a fresh momentum
            load_model_arrays(self.model, global_arrays)
            self.optimizer.state.clear()
        if self.rounds_done == 0:
            cached = self.warm_up(seed)
            if cached is not None:  # client.warmup_cache: whether this client's pre-training came from the cache
                metrics["pretrain_cached"] = int(cached)
        if target is not None:
            metrics.update(self.distil(target, target_seed, seed))
        train = self.train(round_epochs(self.cfg, epochs, self.num_train), seed)
        val_loss, val_acc = self.validate()
        metrics.update(train_loss=float(train["loss"]), train_acc=float(train["acc"]), val_loss=float(val_loss),
                       val_acc=float(val_acc), lr=float(self.policy.lr))
        self.policy.step(val_acc)
        uploads = []
        if global_arrays is not None:
            uploads = model_arrays(self.model)
        elif next_seed >= 0:
            uploads = [self.predict(next_seed)]
        self.rounds_done = server_round
        return uploads, metrics

    # -- the steps --------------------------------------------------------------------------------------

    def warm_up(self, seed: int) -> bool | None:
        """Before the first upload: transfer learning on the labelled public set, then private epochs. Returns
        whether the public pre-training came from the cache (None: no pre-training, or no cache)."""
        c = self.cfg.client
        cached = self.pretrain_public(seed) if c.warmup_public_epochs > 0 else None
        if c.warmup_epochs > 0:
            self.train(c.warmup_epochs, seed + 1)
        return cached

    def pretrain_public(self, seed: int) -> bool | None:
        """client.warmup_public_epochs on the labelled public set; with client.warmup_cache, the model and optimizer
        state after them are read from the cache when a run computed the same pre-training before (returns True),
        else computed and kept there (False). Without the cache: None."""
        c = self.cfg.client
        x_public, y_public = public_data(self.cfg)
        path = self.warmup_cache_path(seed, x_public, y_public) if c.warmup_cache else None
        if path is not None and path.exists():
            try:
                state_from_bytes(path.read_bytes(), self.model, self.optimizer)
                log.info("client %d: public pre-training read from %s", self.partition_id, path)
                return True
            except Exception as err:  # a damaged file costs the pre-training, not the run
                log.warning("client %d: cannot read the cached pre-training %s (%s); pre-training again",
                            self.partition_id, path, err)
        train_epochs(self.model, x_public, y_public, self.optimizer, epochs=c.warmup_public_epochs,
                     batch_size=c.batch_size, device=self.device, augment=c.augment, seed=seed)
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, state_to_bytes(self.model, self.optimizer))
        return False

    def warmup_cache_path(self, seed: int, x_public: torch.Tensor, y_public: torch.Tensor) -> Path:
        """The cache file of this client's public pre-training: named by a digest of everything it depends on:
        the settings (less WARMUP_KEY_IGNORES), the weights it starts from, the public images and labels, the seed,
        the device, the torch version and thread count (they change the rounding), and the training code."""
        settings = {k: v for k, v in flatten(self.cfg.to_dict()).items() if not k.startswith(WARMUP_KEY_IGNORES)}
        digest = hashlib.sha256(json.dumps(
            {"settings": settings, "partition_id": self.partition_id, "seed": seed, "device": str(self.device),
             "torch": torch.__version__, "threads": torch.get_num_threads(),
             "code": [hashlib.sha256(path.read_bytes()).hexdigest() for path in WARMUP_CODE]},
            sort_keys=True).encode())
        for tensor in (*self.model.state_dict().values(), x_public, y_public):
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return cache_root(self.cfg.data.cache_dir) / "warmup" / f"{self.architecture}-{digest.hexdigest()[:24]}.pt"

    def distil(self, target: np.ndarray, target_seed: int, seed: int) -> dict:
        """Distil on the alignment subset of target_seed towards `target`; with client.distill_guard=val, undo it
        when it lowered the validation accuracy (the private optimizer is not touched by distillation)."""
        guard = self.cfg.client.distill_guard == "val"
        if guard:
            weights = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
            val_before = self.validate()[1]
        metrics = {"distill_loss": self._distil(target, target_seed, seed), "distill_lr": self.distill_lr()}
        if guard:
            metrics["distill_kept"] = int(not self.validate()[1] < val_before)
            if not metrics["distill_kept"]:
                self.model.load_state_dict(weights)
        return metrics

    def _distil(self, target: np.ndarray, target_seed: int, seed: int) -> float:
        c, algo = self.cfg.client, self.cfg.algorithm
        x_public, _ = public_data(self.cfg)
        idx = alignment_indices(len(x_public), algo.align_size, target_seed)
        optimizer = make_optimizer(self.model, self.distill_lr(), momentum=c.momentum, weight_decay=c.weight_decay)
        target = np.asarray(target, dtype=np.float32)
        if algo.target_shift != "none":
            counts = np.bincount(self.data.y_train.numpy(), minlength=target.shape[1])
            target = shift_targets(target, counts, algo.target_shift)
        return float(distill(self.model, x_public[idx], torch.from_numpy(target), optimizer, epochs=algo.distill_epochs,
                             batch_size=algo.distill_batch_size, temperature=algo.temperature, loss=algo.distill_loss,
                             device=self.device, seed=seed))

    def distill_lr(self) -> float:
        """algorithm.distill_lr, scaled by the factor client.lr_policy has applied to the private rate so far
        (distill_lr_policy=follow), or as it is (fixed)."""
        base = self.cfg.algorithm.distill_lr
        if self.cfg.algorithm.distill_lr_policy == "fixed":
            return base
        return base * self.policy.lr / self.policy.base_lr

    def train(self, epochs: int, seed: int) -> dict:
        c = self.cfg.client
        return train_epochs(self.model, self.data.x_train, self.data.y_train, self.optimizer, epochs=epochs,
                            batch_size=c.batch_size, device=self.device, augment=c.augment, seed=seed)

    def validate(self) -> tuple[float, float]:
        return evaluate_model(self.model, self.data.x_val, self.data.y_val,
                              batch_size=self.cfg.client.eval_batch_size, device=self.device)

    def predict(self, align_seed: int) -> np.ndarray:
        """What goes on the wire: logits (or probabilities at the temperature) on the subset of align_seed."""
        algo = self.cfg.algorithm
        x_public, _ = public_data(self.cfg)
        idx = alignment_indices(len(x_public), algo.align_size, align_seed)
        logits = predict_logits(self.model, x_public[idx], batch_size=self.cfg.client.eval_batch_size,
                                device=self.device)
        values = logits if algo.upload == "logits" else soft_predictions(logits, algo.temperature)
        return np.asarray(values, dtype=np.float16 if algo.wire_dtype == "float16" else np.float32)

    def test(self, global_arrays: list[np.ndarray] | None = None) -> tuple[float, float]:
        """(loss, accuracy) on the client's own test split; FedAvg: of the global model."""
        if global_arrays is not None:
            load_model_arrays(self.model, global_arrays)
        return evaluate_model(self.model, self.data.x_test, self.data.y_test,
                              batch_size=self.cfg.client.eval_batch_size, device=self.device)

    @property
    def test_majority_share(self) -> float:
        """The test accuracy of always answering the test split's most common class (see majority_share)."""
        return majority_share(self.data.y_test.numpy())


def state_size(cfg: RunConfig, architecture: str, num_classes: int) -> int:
    """Bytes of one saved client state (state_bytes()) for an architecture, estimated without building weights:
    the model's tensors, plus one momentum buffer per parameter when SGD has momentum (float32 both)."""
    with torch.device("meta"):
        model = build_model(architecture, num_classes=num_classes, norm=cfg.model.norm, stem=cfg.model.stem)
    tensors = sum(t.numel() for t in model.state_dict().values())
    momentum = sum(p.numel() for p in model.parameters()) if cfg.client.momentum > 0 else 0
    return 4 * (tensors + momentum)
