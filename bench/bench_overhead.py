"""Orchestration overhead: the same KT-pFL experiment through Flower's Ray simulation and through a bare
in-process loop that calls the same algorithm layer (fedkt.learner.Learner for every client,
fedkt.aggregation.KnowledgeServer for the server) in sequence, with no Flower at all and no Ray. Both run in this one invocation.

    python bench/bench_overhead.py --data ../shared/data/cifar10-jpeg.tar.gz --rounds 3

Prints wall time per round for both, the ratio (simulation / bare), and where the simulation's extra
time goes (Ray start-up and shut-down = total minus the rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np

from fedkt.aggregation import KnowledgeServer, local_epochs
from fedkt.config import RunConfig, load_config
from fedkt.learner import Learner
from fedkt.sim import run
from fedkt.task import load_federation
from fedkt.train import set_threads


def bare_loop(cfg: RunConfig) -> tuple[list[float], float, list[float]]:
    """Rounds of the configured algorithm with every client in this process, one after another (all cores to
    torch); each client's state passes between rounds as bytes, as between short-lived ClientApps."""
    set_threads()
    start = time.time()
    n = cfg.num_clients
    server = KnowledgeServer(cfg, num_classes=load_federation(cfg)[0].num_classes)
    states: dict[int, bytes] = {}
    seconds, accs = [], []
    for rnd in range(1, cfg.num_rounds + 1):
        t0 = time.time()
        uploads = {}
        for pid in range(n):
            learner = Learner(cfg, pid, states.get(pid))
            target_seed, target = server.target_for(pid) or (-1, None)
            arrays, _ = learner.fit_round(rnd, local_epochs(cfg, rnd), target=target, target_seed=target_seed,
                                          next_seed=server.next_seed(rnd))
            states[pid] = learner.state_bytes()
            if arrays:
                uploads[pid] = arrays[0].astype(np.float32)
        if uploads:
            server.update(rnd, uploads)
        accs.append(np.mean([Learner(cfg, pid, states[pid]).test()[1] for pid in range(n)]))
        seconds.append(time.time() - t0)
    return seconds, time.time() - start, accs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], help="more config overrides")
    args = parser.parse_args()
    overrides = [f"data.root={args.data}", f"num_rounds={args.rounds}", "data.samples_per_client=400",
                 "algorithm.align_size=500", *args.set]
    out = tempfile.mkdtemp(prefix="fedkt-overhead-")
    cfg = load_config(overrides)
    load_federation(cfg.replace(run_dir=out))  # decode/cache once, outside both timings

    t0 = time.time()
    summary = run(cfg, os.path.join(out, "sim"))
    sim_total = time.time() - t0
    sim_rounds = [r["seconds"] for r in json.load(open(os.path.join(out, "sim", "metrics.json")))]
    bare_rounds, bare_total, bare_accs = bare_loop(cfg.replace(run_dir=os.path.join(out, "bare")))

    print(f"{time.strftime('%Y-%m-%d %H:%M')} | {platform.processor() or platform.machine()} | "
          f"{os.cpu_count()} cores | {cfg.num_clients} clients ({cfg.model.architectures}, stem "
          f"{cfg.model.stem}) | {args.rounds} rounds | overrides: {' '.join(overrides[1:])}")
    print("| round | simulation s | bare loop s | ratio |")
    print("|---:|---:|---:|---:|")
    for i, (s, b) in enumerate(zip(sim_rounds, bare_rounds), 1):
        print(f"| {i} | {s:.1f} | {b:.1f} | {s / b:.2f} |")
    sim_med, bare_med = statistics.median(sim_rounds[1:] or sim_rounds), statistics.median(bare_rounds[1:] or bare_rounds)
    print(f"| median of rounds 2.. | {sim_med:.1f} | {bare_med:.1f} | {sim_med / bare_med:.2f} |")
    print(f"| whole run | {sim_total:.1f} | {bare_total:.1f} | {sim_total / bare_total:.2f} |")
    print(f"simulation outside its rounds (Ray start/stop, set-up): {sim_total - sum(sim_rounds):.1f} s")
    print(f"final mean test accuracy: simulation {summary['final_mean_test_acc']:.4f}, bare {bare_accs[-1]:.4f}")


if __name__ == "__main__":
    main()
