"""Scale: the simulation with many LeNet clients on small shards; seconds per round and the peak memory
of the whole process tree (this process, Ray's daemons and its client actors), for each client count.

    python bench/bench_scale.py --data ../shared/data/cifar10-jpeg.tar.gz --clients 20 100 500
    python bench/bench_scale.py --data ... --clients 20 100 1000 --variant algorithm.coef_tol=0 --variant algorithm.coef_tol=3e-4

Each --variant (config overrides, space-separated) is run at every client count, in turn, so variants are compared
side by side on the same machine. Besides the round's time it prints the server's step (KT-pFL's update of c and the
targets, `server_seconds` in metrics.csv): its median seconds, its share of the round, and the steps on c it took.
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
    parser.add_argument("--variant", action="append", default=None,
                        help="config overrides for one variant, space-separated (repeat to compare variants)")
    args = parser.parse_args()
    variants = args.variant or [""]
    out = tempfile.mkdtemp(prefix="fedkt-scale-")
    rows = []
    for n in args.clients:
        for index, variant in enumerate(variants):
            overrides = [f"data.root={args.data}", f"num_clients={n}", f"num_rounds={args.rounds}",
                         "model.architectures=lenet", f"data.samples_per_client={args.samples}",
                         "algorithm.align_size=500", "client.batch_size=16", *variant.split()]
            cfg = load_config(overrides, run_dir=out)
            load_federation(cfg)
            monitor = PeakMemory()
            monitor.start()
            t0 = time.time()
            run_dir = os.path.join(out, f"n{n}_v{index}")
            summary = run(cfg, run_dir)
            total = time.time() - t0
            monitor.running = False
            monitor.join()
            rows.append((n, variant, *round_figures(os.path.join(run_dir, "metrics.json")), total,
                         monitor.peak / 2**30, summary["final_mean_test_acc"]))
    print(f"{time.strftime('%Y-%m-%d %H:%M')} | {os.cpu_count()} cores | LeNet, {args.samples} images per client, "
          f"500-sample alignment subsets, {args.rounds} rounds, KT-pFL")
    print("| clients | variant | median round s (rounds 2..) | s per client per round | server step s (median) | "
          "server share of the round | steps on c per round | whole run s | peak RSS of the process tree GiB | "
          "final mean test acc |")
    print("|---:|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for n, variant, median, server, share, steps, total, peak, acc in rows:
        print(f"| {n} | {variant or 'defaults'} | {median:.1f} | {median / n:.3f} | {server:.2f} | {share:.1%} | {steps} | "
              f"{total:.0f} | {peak:.2f} | {acc:.4f} |")


def round_figures(metrics_path: str) -> tuple[float, float, float, str]:
    """(median round seconds from round 2 on, median server seconds, median server share of its round, the steps
    on c in each round) from a run's metrics.json."""
    records = json.load(open(metrics_path))
    later = records[1:] or records
    server = [r.get("server_seconds", 0.0) for r in later]
    shares = [r.get("server_seconds", 0.0) / r["seconds"] for r in later]
    steps = " ".join(str(r["coef_steps"]) for r in records if "coef_steps" in r) or "-"
    return statistics.median(r["seconds"] for r in later), statistics.median(server), statistics.median(shares), steps


if __name__ == "__main__":
    main()
