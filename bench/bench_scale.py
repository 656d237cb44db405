"""Scale: the simulation with many LeNet clients on small shards; seconds per round and the peak memory
of the whole process tree (this process, Ray's daemons and its client actors), for each client count.

    python bench/bench_scale.py --data ../shared/data/cifar10-jpeg.tar.gz --clients 20 100 500
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time

from fedkt.config import load_config
from fedkt.sim import run
from fedkt.task import load_federation

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and all its descendants (shared pages count once per process)."""
    parents, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += [child for child, parent in parents.items() if parent == pid]
    return total


class PeakMemory(threading.Thread):
    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval, self.peak, self.running = interval, 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, tree_rss(os.getpid()))
            time.sleep(self.interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--clients", type=int, nargs="+", default=[20, 100, 500])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=80, help="images per client (train+val+test)")
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="fedkt-scale-")
    rows = []
    for n in args.clients:
        overrides = [f"data.root={args.data}", f"num_clients={n}", f"num_rounds={args.rounds}",
                     "model.architectures=lenet", f"data.samples_per_client={args.samples}",
                     "algorithm.align_size=500", "client.batch_size=16"]
        cfg = load_config(overrides, run_dir=out)
        load_federation(cfg)
        monitor = PeakMemory()
        monitor.start()
        t0 = time.time()
        summary = run(cfg, os.path.join(out, f"n{n}"))
        total = time.time() - t0
        monitor.running = False
        monitor.join()
        seconds = [r["seconds"] for r in json.load(open(os.path.join(out, f"n{n}", "metrics.json")))]
        rows.append((n, statistics.median(seconds[1:] or seconds), total, monitor.peak / 2**30,
                     summary["final_mean_test_acc"]))
    print(f"{time.strftime('%Y-%m-%d %H:%M')} | {os.cpu_count()} cores | LeNet, {args.samples} images per client, "
          f"500-sample alignment subsets, {args.rounds} rounds, KT-pFL")
    print("| clients | median round s (rounds 2..) | s per client per round | whole run s | peak RSS of the process tree GiB | final mean test acc |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, median, total, peak, acc in rows:
        print(f"| {n} | {median:.1f} | {median / n:.3f} | {total:.0f} | {peak:.2f} | {acc:.4f} |")


if __name__ == "__main__":
    main()
