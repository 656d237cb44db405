"""How many steps does KT-pFL's coefficient matrix c need? Run a simulation, keep what the server's update of c saw in
every round (the softened uploads and c before the update), then replay each round offline: the objective L(c) after
each of up to --max-steps plain steps, and what the stopping rule (`algorithm.coef_tol`) does at several tolerances.

    python bench/coef_steps.py --set data.root=../shared/data/cifar10-jpeg.tar.gz experiment=paper_cpu \\
        model.architectures=lenet model.norm=batch client.lr_policy=plateau partition=type2 seed=0
    python bench/coef_steps.py --replay DIR          # the rounds kept by an earlier call (its --keep DIR)

Prints, per tolerance: the steps taken per round (mean, min, max) and the share of the decrease of L that --max-steps
plain steps reach (1 = as low as the best of them; below 0: above where the round started) that the rule reaches.
The run itself uses the configuration given (coef_tol included): the replay starts every round from the c the run had.
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile

import numpy as np

from fedkt import aggregation
from fedkt.config import load_config
from fedkt.core import KnowledgeCoefficients
from fedkt.sim import run


def keep_rounds(overrides: list[str], folder: str) -> None:
    """Run the simulation, saving round r's (probs, present, c before the update) to folder/roundRRR.npz."""
    made = []

    def recording(cfg):
        coefficients = make(cfg)
        update = coefficients.update

        def update_and_keep(probs, present=None):
            made.append(1)
            np.savez(os.path.join(folder, f"round{len(made):03d}.npz"), probs=np.asarray(probs), c=coefficients.c,
                     present=np.ones(len(coefficients.c), bool) if present is None else np.asarray(present))
            return update(probs, present)

        coefficients.update = update_and_keep
        return coefficients

    make = aggregation.make_coefficients
    aggregation.make_coefficients = recording  # the KnowledgeServer built by the run looks it up at call time
    try:
        cfg = load_config(["algorithm=ktpfl", *overrides])
        run(cfg, os.path.join(folder, "run"))
    finally:
        aggregation.make_coefficients = make


def replay(folder: str, max_steps: int, budget: int, tolerances: list[float], settings: dict) -> list[tuple]:
    """Per tolerance: (tol, steps per round, share of the decrease reached per round)."""
    files = sorted(glob.glob(os.path.join(folder, "round*.npz")))
    if not files:
        raise SystemExit(f"no roundNNN.npz in {folder}")
    results = {tol: ([], []) for tol in tolerances}
    for path in files:
        saved = np.load(path)
        probs, c0, present = saved["probs"], saved["c"], saved["present"]

        def fresh(steps, tol):
            coefficients = KnowledgeCoefficients(len(c0), steps=steps, tol=tol, **settings)
            coefficients.c = c0.copy()
            return coefficients

        plain = fresh(1, 0.0)
        start = best = plain.loss(probs, present)
        for _ in range(max_steps):
            plain.update(probs, present)
            best = min(best, plain.loss(probs, present))
        for tol in tolerances:
            coefficients = fresh(budget, tol)
            coefficients.update(probs, present)
            reached = coefficients.loss(probs, present)
            results[tol][0].append(coefficients.last_steps)
            results[tol][1].append((start - reached) / (start - best) if start > best else 1.0)
    return [(tol, np.array(steps), np.array(shares)) for tol, (steps, shares) in results.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides of the run (KT-pFL is forced)")
    parser.add_argument("--replay", help="replay rounds kept earlier instead of running")
    parser.add_argument("--keep", help="where to keep the rounds (default: a temporary folder)")
    parser.add_argument("--max-steps", type=int, default=60, help="plain steps that define the best reachable L")
    parser.add_argument("--tol", type=float, nargs="+", default=[0.0, 1e-4, 3e-4, 1e-3, 3e-3])
    args = parser.parse_args()
    folder = args.replay or args.keep or tempfile.mkdtemp(prefix="fedkt-coef-steps-")
    if not args.replay:
        os.makedirs(folder, exist_ok=True)
        keep_rounds(args.set, folder)
    cfg = load_config(["algorithm=ktpfl", *args.set])
    algo = cfg.algorithm
    settings = dict(rho=algo.rho, objective=algo.objective, step_size=algo.coef_step or None,
                    normalize=algo.normalize, tau=algo.tau)
    rows = replay(folder, args.max_steps, algo.coef_steps, args.tol, settings)
    print(f"{len(rows[0][1])} rounds from {folder}; at most {algo.coef_steps} steps (algorithm.coef_steps), "
          f"objective {algo.objective}, {algo.normalize}, rho {algo.rho}")
    print(f"| algorithm.coef_tol | steps per round: mean | min | max | share of the decrease {args.max_steps} plain "
          "steps reach: mean | min |")
    print("|---:|---:|---:|---:|---:|---:|")
    for tol, steps, shares in rows:
        print(f"| {tol:g} | {steps.mean():.1f} | {steps.min()} | {steps.max()} | {shares.mean():.3f} | "
              f"{shares.min():.3f} |")


if __name__ == "__main__":
    main()
