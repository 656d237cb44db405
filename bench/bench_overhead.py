"""Orchestration overhead: the same KT-pFL experiment through Flower's Ray simulation and through a bare
in-process loop that calls the same client code (KnowledgeClient.fit / evaluate) and the same server math
(fedkt.core) in sequence, with no Flower runtime and no Ray. Both run in this one invocation.

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
from flwr.app import RecordDict
from flwr.common import Context

from fedkt.client_app import KnowledgeClient
from fedkt.config import compose
from fedkt.core import alignment_seed, soft_predictions
from fedkt.sim import run
from fedkt.strategy import local_epochs, make_coefficients
from fedkt.task import load_federation
from fedkt.train import set_threads


def bare_loop(cfg: dict) -> tuple[list[float], float, list[float]]:
    """Rounds of KT-pFL with every client in this process, one after another (all cores to torch)."""
    set_threads()
    start = time.time()
    n = int(cfg["num_clients"])
    clients = [KnowledgeClient(cfg, Context(run_id=0, node_id=pid, node_config={"partition-id": pid},
                                            state=RecordDict(), run_config={})) for pid in range(n)]
    coefficients = make_coefficients(cfg)
    targets: dict[int, np.ndarray] = {}
    seconds, accs = [], []
    for rnd in range(1, int(cfg["num_rounds"]) + 1):
        t0 = time.time()
        uploads = []
        for pid, client in enumerate(clients):
            config = {"round": rnd, "epochs": local_epochs(cfg, rnd), "next_seed": alignment_seed(cfg["seed"], rnd),
                      "target_seed": alignment_seed(cfg["seed"], rnd - 1) if targets else -1,
                      "target_partition": pid if targets else -1}
            arrays, _, _ = client.fit([targets[pid]] if targets else [], config)
            uploads.append(arrays[0])
        probs = soft_predictions(np.stack(uploads).astype(np.float32), float(cfg["algorithm"]["temperature"]))
        coefficients.update(probs)
        targets = dict(enumerate(np.asarray(coefficients.targets(probs), dtype=np.float32)))
        accs.append(np.mean([client.evaluate([], {"round": rnd})[2]["test_acc"] for client in clients]))
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
    cfg = compose(overrides)
    load_federation(dict(cfg, run_dir=out))  # decode/cache once, outside both timings

    t0 = time.time()
    summary = run(cfg, os.path.join(out, "sim"))
    sim_total = time.time() - t0
    sim_rounds = [r["seconds"] for r in json.load(open(os.path.join(out, "sim", "metrics.json")))]
    bare_rounds, bare_total, bare_accs = bare_loop(dict(cfg, run_dir=os.path.join(out, "bare")))

    print(f"{time.strftime('%Y-%m-%d %H:%M')} | {platform.processor() or platform.machine()} | "
          f"{os.cpu_count()} cores | {cfg['num_clients']} clients ({cfg['model']['architectures']}, stem "
          f"{cfg['model']['stem']}) | {args.rounds} rounds | overrides: {' '.join(overrides[1:])}")
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
