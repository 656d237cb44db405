"""Did a change move any result? Compare the records of two runs of the same config and seed: metrics.csv and
clients.csv row by row, every column except wall times, and coefficients.npy exactly.

    python scripts/same_figures.py RUN_BEFORE RUN_AFTER [MORE_BEFORE MORE_AFTER ...]

Prints SAME or the first difference per file, and exits 1 when anything differs; wall times and whether a client's
pre-training came from the cache are not figures and are not compared. A column only one run has (a record
added by a newer version, such as server_seconds or coef_steps) is named, not compared. On CPU the same config and seed
give the same figures (fedkt.learner), so any difference is the change's doing; a refactor must print SAME."""
import csv
import sys
from pathlib import Path

import numpy as np

TIMING = ("seconds",)  # columns that hold wall time: expected to differ between two runs
# Columns that say where something came from, not what it came to: a pre-training read from client.warmup_cache is
# the one the other run computed, so whether it was cached differs between two runs of the same figures.
PROVENANCE = ("pretrain_cached",)


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if not any(t in k for t in TIMING + PROVENANCE)}
                for row in csv.DictReader(handle)]


def differences(before: Path, after: Path) -> list[str]:
    found = []
    for name in ("metrics.csv", "clients.csv"):
        if not (before / name).exists() or not (after / name).exists():
            found.append(f"{name}: missing in {before if not (before / name).exists() else after}")
            continue
        a, b = rows(before / name), rows(after / name)
        only = ({k for r in a for k in r} ^ {k for r in b for k in r})
        if only:
            print(f"  {name}: columns in one run only, not compared: {', '.join(sorted(only))}")
            a, b = ([{k: v for k, v in r.items() if k not in only} for r in rows_] for rows_ in (a, b))
        if a != b:
            first = next(((i, x, y) for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
            if first is None:
                found.append(f"{name}: {len(a)} rows before, {len(b)} after")
            else:
                i, x, y = first
                columns = [k for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)]
                found.append(f"{name}: row {i + 1} differs in {', '.join(f'{k} ({x.get(k)} -> {y.get(k)})' for k in columns)}")
    c_before, c_after = before / "coefficients.npy", after / "coefficients.npy"
    if c_before.exists() != c_after.exists():
        found.append("coefficients.npy: present in one run only")
    elif c_before.exists() and not np.array_equal(np.load(c_before), np.load(c_after)):
        found.append("coefficients.npy: differs")
    return found


def main(argv: list[str]) -> int:
    if len(argv) < 2 or len(argv) % 2:
        print(__doc__)
        return 2
    same = True
    for before, after in zip(argv[::2], argv[1::2]):
        found = differences(Path(before), Path(after))
        same &= not found
        print(f"{before} vs {after}: " + ("SAME" if not found else "DIFFERENT\n  " + "\n  ".join(found)))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
