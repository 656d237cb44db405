"""Seconds per round of a federated run for several GPU shares per client (Ray's client_resources.num_gpus):
a share of 0.25 lets four client actors use the GPU at once. Prints one row per share; the fastest share is
the one to put in client.num_gpus. On a machine without CUDA only the CPU row (share 0) runs.

    python bench/bench_gpu_round.py --data ../shared/data/cifar10-jpeg.tar.gz --shares 1 0.5 0.25 0.125 --rounds 2
    python bench/bench_gpu_round.py --data ... --set experiment=paper_type2 algorithm=fedmd

Default experiment: paper_type1 (the paper's setting: 20 clients, `cifar` stem, all ~2,250 images per client,
5,000-sample alignment), cut to --rounds rounds. Round 1 holds the warm-up epoch; the median is over the
later rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from fedkt.config import load_config
from fedkt.sim import run
from fedkt.task import load_federation
from fedkt.train import usable_cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="data.root")
    parser.add_argument("--shares", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125],
                        help="GPU share per client actor (0 = CPU only)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], help="more config overrides")
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    shares = [s for s in args.shares if s > 0] if cuda else [0.0]
    if not cuda:
        print("no CUDA device: measuring the CPU only (share 0)")
    out = tempfile.mkdtemp(prefix="fedkt-gpu-round-")
    rows = []
    for share in shares:
        preset = [] if any(o.startswith("experiment=") for o in args.set) else ["experiment=paper_type1"]
        overrides = [f"data.root={args.data}", *preset, *args.set, f"num_rounds={args.rounds}",
                     f"client.num_gpus={share}", f"client.device={'cuda' if share > 0 else 'cpu'}"]
        run_dir = os.path.join(out, f"share{share}")
        cfg = load_config(overrides, run_dir=run_dir)
        load_federation(cfg)
        start = time.time()
        summary = run(cfg, run_dir)
        total = time.time() - start
        seconds = [r["seconds"] for r in json.load(open(os.path.join(run_dir, "metrics.json")))]
        parallel = min(usable_cores() // max(1, cfg.client.num_cpus), int(1 / share) if share else 10**6)
        rows.append((share, parallel, seconds[0], statistics.median(seconds[1:] or seconds), total,
                     summary["final_mean_test_acc"]))
    device = torch.cuda.get_device_name(0) if cuda else "no GPU"
    print(f"{time.strftime('%Y-%m-%d %H:%M')} | {usable_cores()} cores | {device} | {' '.join(args.set) or 'paper_type1'}"
          f" | {args.rounds} rounds")
    print("| GPU share per client | clients at once | round 1 s (warm-up) | median later round s | whole run s | final mean test acc |")
    print("|---:|---:|---:|---:|---:|---:|")
    for share, parallel, first, median, total, acc in rows:
        print(f"| {share:g} | {parallel} | {first:.1f} | {median:.1f} | {total:.0f} | {acc:.4f} |")


if __name__ == "__main__":
    main()
