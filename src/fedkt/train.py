"""Plain-torch training, evaluation, distillation, learning-rate policy and state bytes for one client model.

Data are tensors already in memory: x is (N, C, H, W) float32 (normalized), y is (N,) int64. Batches
are drawn by indexing with a seeded permutation per epoch; there is no DataLoader.

Determinism: every function that draws random numbers takes a `seed`. The batch order and the
augmentation come from a private torch.Generator; dropout draws from torch's global RNG, which is
forked and seeded from `seed` for the duration of the call (so the caller's RNG is left untouched).
Results are then reproducible on CPU.

Devices: `device=None` means "where the model's parameters already are". The model is moved to the
device in place; x and y may stay on the CPU (batches are moved one at a time).
"""

import contextlib
import io
import math
import os

import torch
import torch.nn.functional as F

from fedkt.config import DISTILL_LOSSES, LR_POLICIES
from fedkt.models import check_positive_int

# ----------------------------------------------------------------------------------------------
# devices and threads


def pick_device(preference="auto"):
    """"auto" -> cuda if available else cpu; "cpu"; "cuda" or "cuda:N" (RuntimeError if unavailable)."""
    if not isinstance(preference, str):
        raise ValueError(f"preference={preference!r} is not allowed; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" or preference.startswith("cuda:"):
        index = preference[len("cuda:"):] if preference.startswith("cuda:") else "0"
        if not index.isdigit():
            raise ValueError(f"preference={preference!r} is not allowed; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {preference!r} requested but CUDA is not available on this machine; "
                               "use 'cpu' or 'auto'")
        if int(index) >= torch.cuda.device_count():
            raise RuntimeError(f"device {preference!r} requested but only {torch.cuda.device_count()} "
                               "CUDA device(s) are visible")
        return torch.device(preference)
    raise ValueError(f"preference={preference!r} is not allowed; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


def usable_cores():
    """Number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_interop_threads_set = False


def set_threads(num_threads=None):
    """Set torch's intra-op threads (default: usable cores) and, the first time only, inter-op threads.

    torch refuses to change inter-op threads once parallel work has started; that case is ignored, so
    this never raises when called twice. Returns the number of intra-op threads now in use.
    """
    global _interop_threads_set
    if num_threads is None:
        num_threads = usable_cores()
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads={num_threads!r} is not allowed; expected a positive integer or None")
    torch.set_num_threads(num_threads)
    if not _interop_threads_set:
        _interop_threads_set = True
        try:
            torch.set_num_interop_threads(num_threads)
        except RuntimeError:
            pass  # already set, or inter-op work already started
    return torch.get_num_threads()


# ----------------------------------------------------------------------------------------------
# helpers


def _resolve_device(model, device):
    """device=None -> the model's current device; strings go through pick_device."""
    if device is None:
        param = next(model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    if isinstance(device, str):
        return pick_device(device)
    return torch.device(device)


@contextlib.contextmanager
def _seeded_global_rng(seed, device):
    """Fork torch's global RNG (CPU, plus `device` if CUDA) and seed it, e.g. for dropout."""
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def _check_inputs(x, y=None, name_x="x", name_y="y"):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name_x} must be a floating-point tensor, got {type(x).__name__}"
                         + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    if y is None:
        return None
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{name_y} must be a 1-D integer tensor of class labels, got "
                         + (f"shape {tuple(y.shape)} dtype {y.dtype}" if isinstance(y, torch.Tensor)
                            else type(y).__name__))
    if len(y) != len(x):
        raise ValueError(f"{name_x} and {name_y} differ in length: {len(x)} vs {len(y)}")
    return y.long()


def _batch_starts(n: int, batch_size: int) -> list[int]:
    """Where the batches of n samples start; a last batch of one sample joins the previous one
    (BatchNorm cannot train on a single sample with 1x1 feature maps)."""
    starts = list(range(0, n, batch_size))
    if n > 1 and n % batch_size == 1:
        starts.pop()
    return starts


def steps_per_epoch(n: int, batch_size: int) -> int:
    """SGD steps one epoch of train_epochs takes on n samples."""
    return len(_batch_starts(n, batch_size))


def _batches(order, batch_size):
    """Split an index tensor into batches (_batch_starts)."""
    n = len(order)
    starts = _batch_starts(n, batch_size)
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else n
        yield order[start:end]


# ----------------------------------------------------------------------------------------------
# augmentation and optimizers


def augment_batch(x, generator):
    """Random crop with 4-pixel zero padding, then random horizontal flip, per sample, vectorized.

    `generator` is a CPU torch.Generator; x may be on any device. Returns a new tensor like x.
    """
    n, c, h, w = x.shape
    pad = 4
    padded = F.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = top[:, None] + torch.arange(h)[None, :]                               # (n, h)
    col_offsets = torch.where(flip[:, None], torch.arange(w - 1, -1, -1)[None, :], torch.arange(w)[None, :])
    cols = left[:, None] + col_offsets                                            # (n, w)
    rows = rows.to(x.device)[:, None, :, None].expand(n, c, h, w + 2 * pad)
    cols = cols.to(x.device)[:, None, None, :].expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def make_optimizer(model, lr, momentum=0.9, weight_decay=5e-4):
    """SGD with momentum over the model's parameters."""
    if not lr > 0:
        raise ValueError(f"lr={lr!r} is not allowed; expected a positive number")
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay!r} is not allowed; expected >= 0")
    if momentum < 0:
        raise ValueError(f"momentum={momentum!r} is not allowed; expected >= 0")
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


# ----------------------------------------------------------------------------------------------
# supervised training and evaluation


def train_epochs(model, x, y, optimizer, epochs, batch_size, device=None, augment=False, seed=0):
    """Train with cross-entropy for `epochs` passes over (x, y) in a seeded random order.

    Returns dict(loss, acc, samples, epochs, steps): loss and acc are sample-weighted over the last
    epoch (nan when epochs == 0), samples = len(x).
    """
    y = _check_inputs(x, y)
    if len(x) == 0:
        raise ValueError("x is empty: nothing to train on")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs={epochs!r} is not allowed; expected an integer >= 0")
    check_positive_int("batch_size", batch_size)
    device = _resolve_device(model, device)
    model.to(device)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    loss_sum = correct = seen = steps = 0
    with _seeded_global_rng(seed, device):
        for _ in range(epochs):
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            order = torch.randperm(len(x), generator=generator).to(x.device)
            for idx in _batches(order, batch_size):
                xb = x[idx].to(device, non_blocking=True)
                yb = y[idx].to(device, non_blocking=True)
                if augment:
                    xb = augment_batch(xb, generator)
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(yb)
                correct += (logits.argmax(1) == yb).sum()
                seen += len(yb)
                steps += 1
    if epochs == 0:
        return dict(loss=math.nan, acc=math.nan, samples=len(x), epochs=0, steps=0)
    return dict(loss=loss_sum.item() / seen, acc=correct.item() / seen, samples=len(x), epochs=epochs, steps=steps)


@contextlib.contextmanager
def _eval_mode(model):
    """Eval mode and no grad for the block; the model's previous mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def evaluate(model, x, y, batch_size=512, device=None):
    """(loss, acc) over all samples, sample-weighted (not a mean of per-batch values).

    An empty set returns (nan, nan) rather than raising, so a client with an empty split shows up
    as nan in the metrics instead of crashing a round.
    """
    y = _check_inputs(x, y)
    check_positive_int("batch_size", batch_size)
    if len(x) == 0:
        return math.nan, math.nan
    device = _resolve_device(model, device)
    model.to(device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    with _eval_mode(model):
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(device, non_blocking=True)
            yb = y[start:start + batch_size].to(device, non_blocking=True)
            logits = model(xb)
            loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").double()
            correct += (logits.argmax(1) == yb).sum()
    return loss_sum.item() / len(x), correct.item() / len(x)


def predict_logits(model, x, batch_size=512, device=None):
    """The model's logits on x, in eval mode without grad, as a float32 CPU tensor (N, num_classes)."""
    _check_inputs(x)
    check_positive_int("batch_size", batch_size)
    if len(x) == 0:
        raise ValueError("x is empty: no logits to compute")
    device = _resolve_device(model, device)
    model.to(device)
    outputs = []
    with _eval_mode(model):
        for start in range(0, len(x), batch_size):
            outputs.append(model(x[start:start + batch_size].to(device, non_blocking=True)).float().cpu())
    return torch.cat(outputs)


# ----------------------------------------------------------------------------------------------
# distillation



def distillation_loss(student_logits, targets, temperature=1.0, loss="kl"):
    """The digest loss on one batch.

    "kl": targets are probabilities; KL(targets || softmax(student/T)) * T^2, averaged over samples.
    "l1" / "mse": targets are logits; elementwise mean absolute / squared error (T is not used).
    """
    if loss == "kl":
        log_probs = F.log_softmax(student_logits.float() / temperature, dim=1)
        return F.kl_div(log_probs, targets, reduction="batchmean") * temperature ** 2
    if loss == "l1":
        return F.l1_loss(student_logits.float(), targets)
    if loss == "mse":
        return F.mse_loss(student_logits.float(), targets)
    raise ValueError(f"loss={loss!r} is not supported; allowed values: {', '.join(DISTILL_LOSSES)}")


def _check_targets(x, targets, loss):
    if not isinstance(targets, torch.Tensor) or targets.dim() != 2 or not targets.is_floating_point():
        raise ValueError("targets must be a 2-D float tensor (N, num_classes), got "
                         + (f"shape {tuple(targets.shape)} dtype {targets.dtype}"
                            if isinstance(targets, torch.Tensor) else type(targets).__name__))
    if len(targets) != len(x):
        raise ValueError(f"x and targets differ in length: {len(x)} vs {len(targets)}")
    if loss == "kl":
        row_sums = targets.sum(1)
        if (targets < 0).any() or not torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-3):
            raise ValueError("with loss='kl' targets must be probabilities (non-negative, rows summing to 1); "
                             "pass logits with loss='l1' or 'mse', or apply softmax first")


def distill(model, x, targets, optimizer, epochs=1, batch_size=256, temperature=1.0, loss="kl", device=None,
            seed=0):
    """Train the model towards `targets` on x (the digest step). Returns the sample-weighted mean loss
    of the last epoch. See `distillation_loss` for what targets hold for each loss."""
    if loss not in DISTILL_LOSSES:
        raise ValueError(f"loss={loss!r} is not supported; allowed values: {', '.join(DISTILL_LOSSES)}")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} is not allowed; expected a positive number")
    _check_inputs(x)
    _check_targets(x, targets, loss)
    if len(x) == 0:
        raise ValueError("x is empty: nothing to distil on")
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    device = _resolve_device(model, device)
    model.to(device)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    with _seeded_global_rng(seed, device):
        for _ in range(epochs):
            loss_sum = torch.zeros((), device=device)
            order = torch.randperm(len(x), generator=generator)
            for idx in _batches(order, batch_size):
                xb = x[idx.to(x.device)].to(device, non_blocking=True)
                tb = targets[idx.to(targets.device)].to(device, dtype=torch.float32, non_blocking=True)
                logits = model(xb)
                if logits.shape[1] != tb.shape[1]:
                    raise ValueError(f"targets have {tb.shape[1]} columns but the model outputs {logits.shape[1]} "
                                     "classes")
                batch_loss = distillation_loss(logits, tb, temperature, loss)
                optimizer.zero_grad(set_to_none=True)
                batch_loss.backward()
                optimizer.step()
                loss_sum += batch_loss.detach() * len(idx)
    return loss_sum.item() / len(x)


# ----------------------------------------------------------------------------------------------
# learning-rate policy



class LRPolicy:
    """Learning rate per round/epoch: "constant", "plateau" or "cosine".

    "plateau" (the source paper's dynamic adaptive learning rate): the lr is multiplied by `factor`
    (not below min_lr) once the watched validation accuracy has not risen above its best for
    `patience` consecutive steps; the count then restarts. This is torch's ReduceLROnPlateau in mode
    "max" with threshold 0 and eps 0; torch reduces after *more than* its patience bad steps, so it
    gets patience - 1. "cosine": from base_lr down to min_lr over total_steps steps, then held at
    min_lr, computed in closed form (torch's CosineAnnealingLR updates the lr recursively, which
    differs in the last bits from step to step, and rises again after total_steps).

    `optimizer` may be None (e.g. a server step size): the lr then lives in a private optimizer
    without parameters of its own; read `lr`. Call `step(val_acc)` once per round/epoch, after
    evaluation; it returns the lr for the next round. `state_dict` holds policy, base_lr, lr, steps,
    best and bad_steps (the fields fedkt has always saved with a client's state).
    """

    def __init__(self, optimizer, policy="constant", base_lr=None, patience=2, factor=0.5, min_lr=1e-4,
                 total_steps=None):
        if policy not in LR_POLICIES:
            raise ValueError(f"policy={policy!r} is not supported; allowed values: {', '.join(LR_POLICIES)}")
        if base_lr is None:
            if optimizer is None:
                raise ValueError("base_lr=None is not allowed without an optimizer to read it from")
            base_lr = optimizer.param_groups[0]["lr"]
        if not base_lr > 0:
            raise ValueError(f"base_lr={base_lr!r} is not allowed; expected a positive number")
        if not 0 < factor < 1:
            raise ValueError(f"factor={factor!r} is not allowed; expected 0 < factor < 1")
        if min_lr < 0:
            raise ValueError(f"min_lr={min_lr!r} is not allowed; expected >= 0")
        check_positive_int("patience", patience)
        if policy == "cosine":
            check_positive_int("total_steps", total_steps)
        if optimizer is None:
            optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=float(base_lr))
        self.optimizer = optimizer
        self.policy = policy
        self.base_lr = float(base_lr)
        self.min_lr = float(min_lr)
        self.total_steps = total_steps
        self.steps = 0
        self._set_lr(self.base_lr)
        self._plateau = None
        if policy == "plateau":
            self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=factor, patience=patience - 1, threshold=0.0, threshold_mode="abs",
                min_lr=self.min_lr, eps=0.0)

    @property
    def lr(self):
        return self.optimizer.param_groups[0]["lr"]

    def _set_lr(self, lr):
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, val_acc=None):
        """Record one round/epoch (val_acc is required for "plateau") and return the new lr."""
        self.steps += 1
        if self.policy == "plateau":
            if val_acc is None or math.isnan(val_acc):
                raise ValueError(f"val_acc={val_acc!r} is not allowed with policy='plateau'; expected a number")
            self._plateau.step(val_acc)
        elif self.policy == "cosine":
            progress = min(self.steps, self.total_steps) / self.total_steps
            self._set_lr(self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress)))
        return self.lr

    def state_dict(self):
        plateau = self._plateau
        return dict(policy=self.policy, base_lr=self.base_lr, lr=self.lr, steps=self.steps,
                    best=-math.inf if plateau is None else plateau.best,
                    bad_steps=0 if plateau is None else plateau.num_bad_epochs)

    def load_state_dict(self, state):
        if state["policy"] != self.policy:
            raise ValueError(f"state is for policy={state['policy']!r}, this LRPolicy has policy={self.policy!r}")
        self.base_lr = state["base_lr"]
        self.steps = state["steps"]
        self._set_lr(state["lr"])
        if self._plateau is not None:
            self._plateau.best = state["best"]
            self._plateau.num_bad_epochs = state["bad_steps"]
            self._plateau.last_epoch = state["steps"]


# ----------------------------------------------------------------------------------------------
# state as bytes (a client's model, optimizer and lr policy between rounds)


def state_to_bytes(model, optimizer=None, extra=None):
    """Model (+ optimizer, + `extra`: tensors and plain Python values) as the bytes of one torch.save."""
    buffer = io.BytesIO()
    torch.save(dict(model=model.state_dict(), optimizer=None if optimizer is None else optimizer.state_dict(),
                    extra=extra), buffer)
    return buffer.getvalue()


def read_state(data):
    """What state_to_bytes wrote, as a dict: model (a state_dict on the CPU), optimizer, extra."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def state_from_bytes(data, model, optimizer=None):
    """Load what state_to_bytes wrote into model (and optimizer); returns `extra`."""
    state = read_state(data)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        if state["optimizer"] is None:
            raise ValueError("an optimizer was given but the saved state holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    return state["extra"]
