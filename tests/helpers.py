"""Code only the tests (and bench/bench_server.py) use, kept out of the package:

- `train_with_early_stopping`, `save_state` / `load_state`: training utilities built on fedkt.train that no
  production path calls;
- `update_reference`: one KT-pFL coefficient step written row by row with autograd, the way the KT-pFL code
  loops over clients; the reference that fedkt.core.KnowledgeCoefficients.update is checked against (and that
  bench/bench_server.py times);
- `reference_plateau_lrs`, `reference_cosine_lrs`: the learning rates fedkt.train.LRPolicy gave round by round
  before it used torch's ReduceLROnPlateau, restated as plain loops.

Test files import it by name (`from helpers import ...`): pytest puts tests/ on sys.path.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from fedkt.core import KL_EPS, project_simplex
from fedkt.files import write_atomic
from fedkt.train import evaluate, state_from_bytes, state_to_bytes, train_epochs

# ----------------------------------------------------------------------------------------------
# training utilities


def train_with_early_stopping(model, x_train, y_train, x_val, y_val, optimizer, max_epochs, patience, batch_size,
                              device=None, augment=False, lr_policy=None, seed=0):
    """Train one epoch at a time, evaluate on (x_val, y_val), stop after `patience` epochs without a
    new best validation accuracy, and load the best epoch's weights (and buffers) back into the model.

    lr_policy (optional) is stepped with the validation accuracy after each epoch. Returns
    dict(best_epoch, best_val_acc, history) where history holds one dict per epoch (epoch, train_loss,
    train_acc, val_loss, val_acc, lr); epochs count from 1.
    """
    if len(x_val) == 0:
        raise ValueError("x_val is empty: early stopping needs a validation set")
    best_epoch, best_val_acc, best_state = 0, -math.inf, None
    history = []
    for epoch in range(1, max_epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        train = train_epochs(model, x_train, y_train, optimizer, 1, batch_size, device, augment, seed + epoch)
        val_loss, val_acc = evaluate(model, x_val, y_val, device=device)
        history.append(dict(epoch=epoch, train_loss=train["loss"], train_acc=train["acc"], val_loss=val_loss,
                            val_acc=val_acc, lr=lr))
        if val_acc > best_val_acc:
            best_epoch, best_val_acc = epoch, val_acc
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if lr_policy is not None:
            lr_policy.step(val_acc)
        if epoch - best_epoch >= patience:
            break
    model.load_state_dict(best_state)
    return dict(best_epoch=best_epoch, best_val_acc=best_val_acc, history=history)


def save_state(path, model, optimizer=None, extra=None):
    """state_to_bytes written atomically (fedkt.files.write_atomic), creating the folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, state_to_bytes(model, optimizer, extra))


def load_state(path, model, optimizer=None):
    """Load what save_state wrote into model (and optimizer); returns `extra`."""
    return state_from_bytes(Path(path).read_bytes(), model, optimizer)


# ----------------------------------------------------------------------------------------------
# KT-pFL's coefficient step, client by client


def _adaptive_step_scalar(g):
    """fedkt.core.adaptive_step for one row, written as in the KT-pFL code."""
    lr = 1.0
    for _ in range(5):
        if g > 0.01:
            g, lr = g / 5, lr / 5
        if g < 0.01:
            g, lr = g * 5, lr * 5
    return lr


def update_reference(c, probs, present=None, rho=0.7, objective="kl", step_size=None,
                     normalize="softmax", tau=0.2, rows=None):
    """One update step done row by row with autograd, the way the KT-pFL code loops over
    clients. Same rules as KnowledgeCoefficients.update (steps=1); returns the new c.
    present: None (all), a boolean mask or a list of indices.
    rows: only update these present rows (for timing a subset); default all present."""
    c = np.array(c, dtype=np.float64)
    P3 = torch.as_tensor(np.asarray(probs))
    N, M = P3.shape[:2]
    if present is None:
        idx = np.arange(N)
    else:
        present = np.asarray(present)
        idx = np.flatnonzero(present) if present.dtype == bool else np.unique(present)
    n = len(idx)
    flat = P3[torch.from_numpy(idx)].reshape(n, -1)
    rows = idx if rows is None else rows
    for i in rows:
        mass = c[i, idx].sum()
        q0 = c[i, idx] / mass if mass > 0 else np.full(n, 1.0 / n)
        q = torch.tensor(q0, requires_grad=True)
        s = q.to(flat.dtype) @ flat
        p = P3[i].reshape(-1)
        if objective == "kl":
            data = (torch.special.xlogy(p, p) - torch.special.xlogy(p, s.clamp_min(KL_EPS))).sum() / M
        else:
            data = ((p - s) ** 2).mean()
        loss = data + rho * ((q - 1.0 / n) ** 2).sum()
        loss.backward()
        with torch.no_grad():
            g = q.grad
            lr = _adaptive_step_scalar(g.abs().mean().item()) if step_size is None else step_size
            stepped = (q - lr * g)[None]
            q_new = (torch.softmax(stepped / tau, dim=1) if normalize == "softmax" else project_simplex(stepped))[0]
        c[i, idx] = mass * q_new.numpy()
    return c


# ----------------------------------------------------------------------------------------------
# learning rates as fedkt.train.LRPolicy gave them before it used torch's schedulers


def reference_plateau_lrs(base_lr, accuracies, patience=2, factor=0.5, min_lr=1e-4):
    """The lr after each step: multiplied by factor (not below min_lr) once the accuracy has not risen
    above its best for `patience` consecutive steps; the count then restarts."""
    lr, best, bad, out = float(base_lr), -math.inf, 0, []
    for acc in accuracies:
        if acc > best:
            best, bad = acc, 0
        else:
            bad += 1
            if bad >= patience:
                lr = min(lr, max(lr * factor, min_lr))
                bad = 0
        out.append(lr)
    return out


def reference_cosine_lrs(base_lr, total_steps, num_steps, min_lr=1e-4):
    """The lr after each of num_steps steps: base_lr down to min_lr over total_steps, then held."""
    out = []
    for step in range(1, num_steps + 1):
        progress = min(step, total_steps) / total_steps
        out.append(min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress)))
    return out
