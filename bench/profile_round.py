"""Where a round's time goes: one client of each architecture through the steps of a round, timed one by one,
and the server's step, for any preset. Prints a markdown table of seconds and shares.

    python bench/profile_round.py --data ../shared/data/cifar10-jpeg.tar.gz --set experiment=paper_quick
    python bench/profile_round.py --data ../shared/data/cifar10-jpeg.tar.gz --set experiment=paper_cpu partition=type2
    python bench/profile_round.py --data ... --set experiment=paper_quick --reps 5 \
        --variant 'model.channels_last=""' --variant model.channels_last=[lenet,shufflenetv2]

It drives the algorithm layer itself (fedkt.learner.Learner, fedkt.aggregation.KnowledgeServer), the code every
round of a run executes, in this one process with torch's threads set as a client's (client.num_cpus). "set-up"
is what a fit message pays before the work: restoring the client (data, model, optimizer, saved state); "state"
is writing it back; "test" is measured in fit on the state it saves, which the evaluate message then returns
(fedkt.client_app; until 2026-12-02 the evaluate message restored the client again, a second set-up). The round
is a distilling one (round 2): warm-up, and building the client fresh, are timed separately, as round 1 pays
them (until 2026-12-02 the fresh build was counted in round 2's set-up).
Compare the shares within one table: absolute seconds depend on the machine and its load.

The last lines compare the round with a bare eager-PyTorch reference measured in the same run, interleaved client
by client: the same forward and backward passes of the same models at the same batch sizes (private training,
distillation, validation, prediction, test), written as plain loops with torch's default (NCHW) layout and no
fedkt code on the path, minus what is not a pass (set-up, state, augmentation, shuffling). Ratio = fedkt's round /
the bare passes; below 1 means fedkt does the work more cheaply than the plain loop would.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from fedkt.aggregation import KnowledgeServer, local_epochs
from fedkt.config import RunConfig, load_config
from fedkt.learner import Learner, round_seed
from fedkt.models import build_model
from fedkt.task import client_data, load_federation, public_data


def timed(seconds: dict, name: str, step, *args, **kwargs):
    start = time.perf_counter()
    out = step(*args, **kwargs)
    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
    return out


def profile_client(cfg: RunConfig, pid: int, server: KnowledgeServer) -> dict:
    """Seconds of each step of one client: round 1 (warm-up), then a distilling round 2 as a fresh message."""
    seconds: dict = {}
    learner = timed(seconds, "warm-up (round 1 only)", Learner, cfg, pid)  # round 1 builds the client fresh
    timed(seconds, "warm-up (round 1 only)", learner.warm_up, round_seed(cfg.seed, pid, 1))
    saved = learner.state_bytes()
    learner = timed(seconds, "set-up", Learner, cfg, pid, saved)  # round 2's message restores the client
    seed = round_seed(cfg.seed, pid, 2)
    num_classes = load_federation(cfg)[0].num_classes
    target = np.full((cfg.algorithm.align_size, num_classes), 1.0 / num_classes, dtype=np.float32)
    timed(seconds, "distillation", learner.distil, target, server.next_seed(1), seed)
    timed(seconds, "training", learner.train, local_epochs(cfg, 2), seed)
    timed(seconds, "validation", learner.validate)
    timed(seconds, "prediction", learner.predict, server.next_seed(2))
    timed(seconds, "state", learner.state_bytes)
    timed(seconds, "test", learner.test)  # in fit, on the state it saved: the evaluate message restores nothing
    return seconds


def bare_client(cfg: RunConfig, pid: int) -> float:
    """Seconds of a distilling round's passes for client pid in plain eager PyTorch (see the module docstring)."""
    data, (x_public, _) = client_data(cfg, pid), public_data(cfg)
    num_classes = load_federation(cfg)[0].num_classes
    model = build_model(cfg.architectures[pid], num_classes=num_classes, in_channels=data.x_train.shape[1],
                        norm=cfg.model.norm, stem=cfg.model.stem)
    c, algo = cfg.client, cfg.algorithm
    x_align = x_public[:algo.align_size]
    target = torch.full((len(x_align), num_classes), 1.0 / num_classes)
    start = time.perf_counter()

    def passes(x, batch_size, loss_of):  # one epoch of SGD steps (loss_of given) or of forward passes (None)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=c.momentum)
        for i in range(0, len(x), batch_size):
            if loss_of is None:
                model(x[i:i + batch_size])
                continue
            optimizer.zero_grad()
            loss_of(model(x[i:i + batch_size]), slice(i, i + batch_size)).backward()
            optimizer.step()

    model.train()
    for _ in range(algo.distill_epochs):
        passes(x_align, algo.distill_batch_size,
               lambda out, rows: F.kl_div(F.log_softmax(out, 1), target[rows], reduction="batchmean"))
    for _ in range(local_epochs(cfg, 2)):
        passes(data.x_train, c.batch_size, lambda out, rows: F.cross_entropy(out, data.y_train[rows]))
    model.eval()
    with torch.no_grad():
        for x in (data.x_val, x_align, data.x_test):
            passes(x, c.eval_batch_size, None)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="data.root")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. experiment=paper_cpu")
    parser.add_argument("--variant", action="append", default=None,
                        help="more overrides for one variant, space-separated; repeat to compare variants, "
                             "profiled in the same run, interleaved client by client")
    parser.add_argument("--reps", type=int, default=1, help="repetitions; every figure is the median")
    args = parser.parse_args()
    variants = args.variant or [""]
    cfgs = [load_config([f"data.root={args.data}", "algorithm=ktpfl", *args.set, *v.split()],
                        run_dir=os.path.join("/tmp", "fedkt-profile")) for v in variants]
    cfg = cfgs[0]
    load_federation(cfg)  # decode or read the cache once, outside the timings
    for c in cfgs:
        Learner(c, 0).predict(0)  # and the one-time costs of a process (first model, public set, thread pools)
    servers = [KnowledgeServer(c, load_federation(c)[0].num_classes) for c in cfgs]
    archs = cfg.architectures
    first = {arch: archs.index(arch) for arch in dict.fromkeys(archs)}
    runs = [{arch: [] for arch in first} for _ in cfgs]
    bare_runs: dict = {arch: [] for arch in first}
    for _ in range(args.reps):
        for arch, pid in first.items():  # interleaved, so that a change of load falls on every variant alike
            bare_runs[arch].append(bare_client(cfg, pid))
            for c, server, rows in zip(cfgs, servers, runs):
                rows[arch].append(profile_client(c, pid, server))
    bare = {arch: statistics.median(values) for arch, values in bare_runs.items()}
    bare_total = sum(sec * archs.count(arch) for arch, sec in bare.items())
    n, align = cfg.num_clients, cfg.algorithm.align_size
    print(f"{time.strftime('%Y-%m-%d %H:%M')} | {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} | "
          f"overrides: {' '.join(args.set) or '(defaults)'} | {n} clients, alignment {align} | "
          f"median of {args.reps}")
    totals = []
    for variant, c, server, rows in zip(variants, cfgs, servers, runs):
        medians = {arch: {k: statistics.median(r.get(k, 0.0) for r in reps) for k in reps[0]}
                   for arch, reps in rows.items()}
        totals.append(print_table(variant, c, server, medians, bare, bare_total))
    for variant, total in zip(variants[1:], totals[1:]):
        print(f"{variant or '(defaults)'} against {variants[0] or '(defaults)'}: {total / totals[0]:.2f}x")


def print_table(variant: str, cfg: RunConfig, server: KnowledgeServer, rows: dict, bare: dict,
                bare_total: float) -> float:
    """One variant's table (seconds per client and step, shares), its server step and its ratio to the bare
    passes; returns its round total over all clients."""
    archs, n, align = cfg.architectures, cfg.num_clients, cfg.algorithm.align_size
    num_classes = load_federation(cfg)[0].num_classes
    uploads = {pid: np.random.default_rng(pid).normal(size=(align, num_classes)).astype(np.float32) for pid in range(n)}
    start = time.perf_counter()
    server.update(1, uploads)
    server_seconds = time.perf_counter() - start
    steps = list(dict.fromkeys(k for r in rows.values() for k in r))
    print(f"\nvariant: {variant or '(defaults)'}")
    print("| architecture (clients) | " + " | ".join(steps) + " | round 2 total |")
    print("|---|" + "---:|" * (len(steps) + 1))
    round_total = 0.0
    for arch, sec in rows.items():
        total = rows_total(sec)
        round_total += total * archs.count(arch)
        print(f"| {arch} ({archs.count(arch)}) | " + " | ".join(f"{sec.get(k, 0):.2f}" for k in steps)
              + f" | {total:.2f} |")
    shares = {k: sum(sec.get(k, 0) * archs.count(a) for a, sec in rows.items()) for k in steps}
    print("| share of a round (all clients) | " + " | ".join(
        "—" if k.startswith("warm-up") else f"{100 * v / round_total:.0f} %" for k, v in shares.items()) + " | 100 % |")
    print(f"server step (KT-pFL, {n} clients): {server_seconds:.3f} s = {100 * server_seconds / round_total:.1f} % of the "
          f"clients' work in one process ({round_total:.1f} s)")
    print("bare eager PyTorch, the same passes (s per client): "
          + ", ".join(f"{arch} {sec:.2f} ({rows_total(rows[arch]) / sec:.2f}x)" for arch, sec in bare.items()))
    print(f"round 2, all clients: fedkt {round_total:.1f} s, bare passes {bare_total:.1f} s: "
          f"ratio {round_total / bare_total:.2f}x")
    return round_total


def rows_total(seconds: dict) -> float:
    return sum(v for k, v in seconds.items() if k != "warm-up (round 1 only)")


if __name__ == "__main__":
    main()
