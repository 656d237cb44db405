"""Where should a client's state live between rounds? The same small run with client.state_store=disk
(a file per client and round in the run directory) and =context (bytes in the node's context.state,
which the simulation engine carries to and from the Ray actor with every message), side by side.

    python bench/bench_state_store.py --data ../shared/data/cifar10-jpeg.tar.gz
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--arch", default="resnet18", help="the heaviest state: ResNet-18, 11 M parameters")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    overrides = [f"data.root={args.data}", f"num_clients={args.clients}", f"num_rounds={args.rounds}",
                 f"model.architectures={args.arch}", "model.stem=imagenet", "data.samples_per_client=200",
                 "algorithm.align_size=200", "client.warmup_epochs=0"]
    out = tempfile.mkdtemp(prefix="fedkt-state-")
    load_federation(load_config(overrides, run_dir=out))
    rows = {}
    for store in ("disk", "context", "disk", "context"):  # twice each, interleaved, against drift
        t0 = time.time()
        summary = run(load_config([*overrides, f"client.state_store={store}"]), os.path.join(out, f"{store}-{len(rows)}"))
        rounds = [r["seconds"] for r in json.load(open(os.path.join(out, f"{store}-{len(rows)}", "metrics.json")))]
        rows[f"{store}-{len(rows)}"] = (store, statistics.median(rounds[1:]), time.time() - t0,
                                        summary["final_mean_test_acc"])
    print(f"{time.strftime('%Y-%m-%d %H:%M')} | {os.cpu_count()} cores | {args.clients} x {args.arch} | "
          f"{args.rounds} rounds | {' '.join(overrides[1:])}")
    print("| state store | median round s (rounds 2..) | whole run s | final mean test acc |")
    print("|---|---:|---:|---:|")
    for store, median, total, acc in rows.values():
        print(f"| {store} | {median:.2f} | {total:.1f} | {acc:.4f} |")


if __name__ == "__main__":
    main()
