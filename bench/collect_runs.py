"""Keep the record of finished runs in the repository: copy each completed run's config.json and summary.json
(a few KB: settings, per-round mean accuracy, each client's final accuracy) from outputs/ into a folder under
docs/, where `python -m fedkt.report` reads them like the run directories themselves. Models, client state,
checkpoints and data stay behind.

    python bench/collect_runs.py outputs/paper/improved_s0 --into docs/runs/paper_cpu
    python -m fedkt.report docs/runs/paper_cpu --out docs/figures/paper_cpu

A run lands in <into>/<sweep folder name>/<run folder name>; a run already there is overwritten, runs that did
not complete are skipped (and listed).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from fedkt.report import find_runs

KEPT = ("config.json", "summary.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="sweep or run directories under outputs/")
    parser.add_argument("--into", required=True, help="destination folder, e.g. docs/runs/paper_cpu")
    args = parser.parse_args()
    into = Path(args.into)
    for run in find_runs(args.paths):
        summary = json.loads((run / "summary.json").read_text())
        if summary.get("status") != "completed":
            print(f"skipped {run} ({summary.get('status')}, {summary.get('rounds_completed')} rounds)")
            continue
        dest = into / run.parent.name / run.name
        dest.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            shutil.copyfile(run / name, dest / name)
        print(f"{dest}: {summary['algorithm']} {summary['partition']} seed {summary['seed']} "
              f"final {summary['final_mean_test_acc']:.4f}")


if __name__ == "__main__":
    main()
