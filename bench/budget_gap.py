"""Is a preset's training budget enough? For the first clients of each architecture: the test accuracy a client
reaches alone with the preset's budget (the `local` arm) against training to convergence on the same shard.

    python bench/budget_gap.py --data ../shared/data/cifar10-jpeg.tar.gz --set experiment=quick partition=type2
    python bench/budget_gap.py --data ../shared/data/cifar10-jpeg.tar.gz --set experiment=paper_cpu --clients-per-arch 2

Comparing arms on under-trained models measures who gets more gradient steps, not who transfers knowledge:
where an architecture's mean gap exceeds 2 points, raise the preset's budget (num_rounds, client.local_epochs,
client.max_local_epochs) before comparing arms.

- budget: `Learner.fit_round(r, local_epochs(cfg, r))` for r = 1..num_rounds with algorithm=local (no target, no
  upload), the arm's own code path: warm-up in round 1, private epochs, lr policy stepped on validation accuracy.
  Then the test accuracy of the client's own test split, as the arm's evaluate step reads it. "budget epochs" counts
  private epochs (client.warmup_epochs + the rounds' local epochs; a labelled public warm-up is not counted).
- converged: a fresh Learner on the same shard, one private epoch at a time (seed round_seed(seed, pid, epoch)),
  the config's lr policy stepped on validation accuracy each epoch (cosine: over --max-epochs steps), until
  --patience epochs without a new best validation accuracy or --max-epochs. The test accuracy is the one AT the
  best-validation epoch: the epoch is chosen by validation, never by test.
Accuracies and the gap (converged - budget) are in percentage points. Each architecture's row gives the mean gap
over its clients with a 95 % confidence interval (clients as the samples, paired: the same shard both ways), and a
verdict: "enough" (mean gap at most 2 points), "too small" (mean above 2 and the interval above zero: the budget
falls short), or "unresolved" (mean above 2 but the interval holds zero: single clients' last-epoch noise, not a
shortfall shown; add clients with --clients-per-arch).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from fedkt.aggregation import local_epochs
from fedkt.config import RunConfig, load_config
from fedkt.learner import Learner, round_seed
from fedkt.report import mean_ci
from fedkt.task import load_federation
from fedkt.train import LRPolicy

GAP_LIMIT = 2.0  # points: above this mean gap, the preset's budget under-trains the architecture


def budget_result(cfg: RunConfig, pid: int) -> dict:
    """Client pid trained exactly as the `local` arm trains it: test loss and accuracy after the last round."""
    start = time.perf_counter()
    learner = Learner(cfg, pid)
    for r in range(1, cfg.num_rounds + 1):
        learner.fit_round(r, local_epochs(cfg, r))
    epochs = cfg.client.warmup_epochs + sum(local_epochs(cfg, r) for r in range(1, cfg.num_rounds + 1))
    test_loss, test_acc = learner.test()
    return {"epochs": epochs, "test_loss": test_loss, "test_acc": test_acc, "seconds": time.perf_counter() - start}


def converged_result(cfg: RunConfig, pid: int, max_epochs: int, patience: int) -> dict:
    """Client pid trained one epoch at a time until validation accuracy stops rising; `history` holds
    (epoch, val_acc, test_acc) of every epoch, `best_epoch` the first epoch of the best validation accuracy."""
    start = time.perf_counter()
    learner = Learner(cfg, pid)
    c = cfg.client
    policy = LRPolicy(learner.optimizer, policy=c.lr_policy, base_lr=c.lr, patience=c.lr_patience,
                      factor=c.lr_factor, total_steps=max_epochs)  # the config's policy, over epochs not rounds
    history, best_epoch, best_val = [], 0, -1.0
    for epoch in range(1, max_epochs + 1):
        learner.train(1, round_seed(cfg.seed, pid, epoch))
        val_acc = learner.validate()[1]
        policy.step(val_acc)
        history.append((epoch, val_acc, learner.test()[1]))
        if val_acc > best_val:
            best_epoch, best_val = epoch, val_acc
        elif epoch - best_epoch >= patience:
            break
    return {"best_epoch": best_epoch, "epochs_run": len(history), "test_acc": history[best_epoch - 1][2],
            "history": history, "seconds": time.perf_counter() - start}


def verdict(gaps: list[float]) -> tuple[float, float, str]:
    """(mean gap, half-width of its 95 % CI over the clients, verdict) for one architecture's per-client gaps."""
    mean, half = mean_ci(gaps)
    if mean <= GAP_LIMIT:
        return mean, half, "enough"
    if not math.isnan(half) and mean - half > 0:  # NaN with one client: a shortfall not told from noise
        return mean, half, "too small"
    return mean, half, "unresolved"


def clients_by_architecture(cfg: RunConfig, per_arch: int) -> dict[str, list[int]]:
    """The first `per_arch` partition ids of each architecture, architectures in config order."""
    chosen: dict[str, list[int]] = {}
    for pid, arch in enumerate(cfg.architectures):
        pids = chosen.setdefault(arch, [])
        if len(pids) < per_arch:
            pids.append(pid)
    return chosen


def config_summary(cfg: RunConfig) -> str:
    c = cfg.client
    return (f"num_rounds {cfg.num_rounds}, local_epochs {c.local_epochs}, max_local_epochs {c.max_local_epochs}, "
            f"warmup_epochs {c.warmup_epochs}, warmup_public_epochs {c.warmup_public_epochs}, "
            f"batch_size {c.batch_size}, lr {c.lr}, lr_policy {c.lr_policy}, norm {cfg.model.norm}, "
            f"partition {cfg.partition.scheme}, samples_per_client {cfg.data.samples_per_client}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="data.root: the CIFAR-10 archive or folder")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. experiment=quick partition=type2")
    parser.add_argument("--clients-per-arch", type=int, default=2, help="first K clients of each architecture")
    parser.add_argument("--max-epochs", type=int, default=60, help="converged run: at most this many epochs")
    parser.add_argument("--patience", type=int, default=10, help="converged run: stop after this many epochs "
                        "without a new best validation accuracy")
    args = parser.parse_args()
    cfg = load_config([f"data.root={args.data}", "algorithm=local", *args.set])
    load_federation(cfg)  # decode or read the cache once, outside the timings
    Learner(cfg, 0).validate()  # and a process's one-time costs (first model, thread pools)

    print("$ python " + " ".join(sys.argv))
    print(f"{time.strftime('%Y-%m-%d %H:%M')} | {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} | "
          f"{config_summary(cfg)} | converged: max {args.max_epochs} epochs, patience {args.patience}")
    print("| architecture | pid | budget epochs | budget test acc | best-val epoch (of run) | converged test acc "
          "| gap (points) | seconds (budget / converged) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    gaps: dict[str, list[tuple[float, float]]] = {}
    for arch, pids in clients_by_architecture(cfg, args.clients_per_arch).items():
        for pid in pids:
            budget = budget_result(cfg, pid)
            converged = converged_result(cfg, pid, args.max_epochs, args.patience)
            b, v = 100 * budget["test_acc"], 100 * converged["test_acc"]
            gaps.setdefault(arch, []).append((b, v))
            print(f"| {arch} | {pid} | {budget['epochs']} | {b:.1f} | {converged['best_epoch']} "
                  f"({converged['epochs_run']}) | {v:.1f} | {v - b:+.1f} | "
                  f"{budget['seconds']:.1f} / {converged['seconds']:.1f} |", flush=True)
    verdicts = {}
    for arch, pairs in gaps.items():
        b = sum(p[0] for p in pairs) / len(pairs)
        v = sum(p[1] for p in pairs) / len(pairs)
        mean, half, verdicts[arch] = verdict([p[1] - p[0] for p in pairs])
        interval = "(one client: no interval)" if math.isnan(half) else f"[{mean - half:+.1f}, {mean + half:+.1f}]"
        print(f"| **{arch} (mean of {len(pairs)})** | | | {b:.1f} | | {v:.1f} | {mean:+.1f} {interval} "
              f"**{verdicts[arch]}** | |")
    short = [arch for arch, said in verdicts.items() if said == "too small"]
    unresolved = [arch for arch, said in verdicts.items() if said == "unresolved"]
    if unresolved:
        print(f"unresolved (mean gap > {GAP_LIMIT:g} points, but its interval holds zero): {', '.join(unresolved)}; "
              "measure more clients (--clients-per-arch) before changing the budget")
    if short:
        print(f"budget too small (mean gap > {GAP_LIMIT:g} points, interval above zero): {', '.join(short)}; "
              "raise the preset's budget before comparing arms")
    elif not unresolved:
        print(f"budget enough: no architecture's mean gap exceeds {GAP_LIMIT:g} points")

if __name__ == "__main__":
    main()
