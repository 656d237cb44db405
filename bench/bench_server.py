"""Time the KT-pFL server step (update of c + personalised targets), vectorised vs per-row loop.

    python bench/bench_server.py [--sizes 20 100 1000] [--samples 5000] [--classes 10]
    python bench/bench_server.py --normalize simplex --steps 20     # fedkt's defaults for c

Random float32 softmax predictions (N, M, C). "vectorized" is KnowledgeCoefficients.update
followed by .targets (adaptive step; by default the KT-pFL code's settings: softmax
renormalisation, one step on c per round), best of --repeats.
"loop" is tests/helpers.py's update_reference (--steps autograd steps per row, as the KT-pFL code does) plus a
per-row loop for the targets; above --max-loop-rows rows it times a subset of rows and
extrapolates: fixed cost + per-row cost * N (marked "est.").
Prints a Markdown table. Timings on a shared machine are noisy: rerun when it is idle.
"""

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from fedkt.core import KnowledgeCoefficients

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import update_reference  # noqa: E402  (the reference loop lives beside the tests that check against it)


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def loop_targets(c, probs, rows):
    """Per-row targets, s_i = c_i @ P, one client at a time."""
    flat = torch.from_numpy(probs).reshape(probs.shape[0], -1)
    w = torch.from_numpy(c).to(flat.dtype)
    return [w[i] @ flat for i in rows]


def loop_time(kc, probs, rows):
    """kc.steps x update_reference on `rows`, then per-row targets for the same rows."""
    def run():
        c = kc.c
        for _ in range(kc.steps):
            c = update_reference(c, probs, rho=kc.rho, objective=kc.objective, normalize=kc.normalize,
                                 tau=kc.tau, rows=rows)
        loop_targets(c, probs, rows)
    return best_time(run, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[20, 100, 1000])
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--objectives", nargs="+", default=["kl", "mse"])
    ap.add_argument("--normalize", choices=["softmax", "simplex"], default="softmax")
    ap.add_argument("--steps", type=int, default=1, help="gradient steps on c per round")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-loop-rows", type=int, default=100)
    ap.add_argument("--loop-subset", type=int, default=25)
    args = ap.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"M={args.samples}, C={args.classes}, float32, normalize={args.normalize}, steps={args.steps}\n")
    print("| objective | N | vectorized s | loop s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for n in args.sizes:
        gen = torch.Generator().manual_seed(n)
        probs = torch.softmax(2 * torch.randn(n, args.samples, args.classes, generator=gen), -1).numpy()
        for objective in args.objectives:
            kc = KnowledgeCoefficients(n, objective=objective, normalize=args.normalize, steps=args.steps)
            kc.update(probs)  # warm-up, and a non-uniform c for the loop

            def server_step():
                kc.update(probs)
                kc.targets(probs)

            vec = best_time(server_step, args.repeats)
            if n <= args.max_loop_rows:
                loop, note = loop_time(kc, probs, range(n)), ""
            else:
                k = args.loop_subset
                fixed = loop_time(kc, probs, [])
                part = loop_time(kc, probs, range(k))
                loop, note = fixed + (part - fixed) * n / k, f" (est. from {k} rows)"
            print(f"| {objective} | {n} | {vec:.3f} | {loop:.2f}{note} | {loop / vec:.0f}x |", flush=True)


if __name__ == "__main__":
    main()
