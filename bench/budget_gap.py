"""Is a preset's training budget enough? For the first clients of each architecture: the validation accuracy a
client reaches alone with the preset's budget (the `local` arm) against the same client trained alone with many
more private epochs on the same shard. The verdict reads validation splits only; test accuracy is printed beside
it, for the record, and chooses nothing.

    python bench/budget_gap.py --data ../shared/data/cifar10-jpeg.tar.gz --set experiment=paper_quick partition=type2
    python bench/budget_gap.py --data ../shared/data/cifar10-jpeg.tar.gz --set experiment=paper_cpu --clients-per-arch 2
    python bench/budget_gap.py --data ... --set ... --epochs-per-round 20   # is the reference itself at a plateau?
    python bench/budget_gap.py --data ... --set experiment=paper_quick --architectures resnet18   # one architecture a process
    python bench/budget_gap.py --data ... --set experiment=paper_quick client.max_local_epochs=5 --reference-from OUT.txt
        # another budget against the references an earlier run printed to OUT.txt (the reference is the slow part)
    python bench/budget_gap.py --combine lenet.txt alexnet.txt resnet18.txt shufflenetv2.txt
        # the verdicts over several outputs of the same budget (one an architecture, or other seeds' shards)

Comparing arms on under-trained models measures who gets more gradient steps, not who transfers knowledge:
where an architecture's mean gap exceeds 2 points, raise the preset's budget (num_rounds, client.local_epochs,
client.max_local_epochs) before comparing arms.

- budget: `Learner.fit_round(r, local_epochs(cfg, r))` for r = 1..num_rounds with algorithm=local (no target, no
  upload), the arm's own code path: warm-up in round 1, private epochs, lr policy stepped on validation accuracy
  once a round. Then the accuracy on the client's own validation split (what the verdict reads) and on its own
  test split (as the arm's evaluate step reads it; printed, never judged).
  "epochs" counts private epochs (client.warmup_epochs + the rounds' local epochs, raised by client.min_steps where
  it asks for more; a labelled public warm-up is not counted).
- reference: the same, with --epochs-per-round E private epochs in every round (default 10, no ramp): the arm's own
  code, rounds and rate schedule with E times the training. No epoch is picked, so neither a small validation split
  nor the test split chooses it. Run a second E (say 20): where the two references agree, the reference is at its
  plateau, i.e. trained to convergence. (Until 2026-11-30 the reference was one epoch at a time, stopped and picked
  by validation accuracy, with the rate policy stepped every epoch: on shards of about one batch, with 5 validation
  images, the plateau rate then halved every two or three steps and stopped training early, so that reference was
  itself under-trained; docs/RESULTS.md.)
Accuracies and the gaps (reference - budget) are in percentage points. Each architecture's row gives the mean
validation gap over its clients with a 95 % confidence interval (clients as the samples, paired: the same shard
both ways), and a verdict: "enough" (mean gap at most 2 points), "too small" (mean above 2 and the interval above
zero: the budget falls short), or "unresolved" (mean above 2 but the interval holds zero: single clients' last-epoch
noise, not a shortfall shown; add clients with --clients-per-arch). With more than one architecture, a last row
does the same over all the clients measured: five clients an architecture rarely settle a 3-point gap, twenty may.
The test gap's mean and interval follow in their own column. (Outputs with 8 columns a row, from before the
validation columns of 2026-11-30, judged the test gap; --reference-from and --combine refuse them.)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
import time
from typing import NamedTuple

from fedkt.aggregation import local_epochs
from fedkt.config import ConfigError, RunConfig, flatten, load_config
from fedkt.learner import Learner, private_epochs
from fedkt.report import mean_ci
from fedkt.task import load_federation

GAP_LIMIT = 2.0  # points: above this mean gap, the preset's budget under-trains the architecture


class Accuracies(NamedTuple):
    """One client's accuracies in points: its budget's and its reference's, on its validation and test splits."""
    budget_val: float
    budget_test: float
    reference_val: float
    reference_test: float


def budget_result(cfg: RunConfig, pid: int) -> dict:
    """Client pid trained exactly as the `local` arm trains it: validation and test loss and accuracy after the last
    round."""
    start = time.perf_counter()
    learner = Learner(cfg, pid)
    if len(learner.data.y_val) == 0:  # the verdict reads validation accuracy: refuse before training, not after
        sys.exit(f"client {pid} has no validation image (data.samples_per_client={cfg.data.samples_per_client}, "
                 f"partition.val_fraction={cfg.partition.val_fraction}): the verdict reads validation accuracy; "
                 "raise either")
    for r in range(1, cfg.num_rounds + 1):
        learner.fit_round(r, local_epochs(cfg, r))
    epochs = private_epochs(cfg, learner.num_train)
    val_loss, val_acc = learner.validate()
    test_loss, test_acc = learner.test()
    return {"epochs": epochs, "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc,
            "seconds": time.perf_counter() - start, "num_train": learner.num_train}


def reference_config(cfg: RunConfig, epochs_per_round: int) -> RunConfig:
    """The preset's config with `epochs_per_round` private epochs in every round and no ramp."""
    client = dataclasses.replace(cfg.client, local_epochs=epochs_per_round, max_local_epochs=0)
    return cfg.replace(client=client)


def verdict(gaps: list[float]) -> tuple[float, float, str]:
    """(mean gap, half-width of its 95 % CI over the clients, verdict) for one architecture's per-client
    validation gaps."""
    mean, half = mean_ci(gaps)
    if mean <= GAP_LIMIT:
        return mean, half, "enough"
    if not math.isnan(half) and mean - half > 0:  # NaN with one client: a shortfall not told from noise
        return mean, half, "too small"
    return mean, half, "unresolved"


def clients_by_architecture(cfg: RunConfig, per_arch: int, only: list[str] | None = None) -> dict[str, list[int]]:
    """The first `per_arch` partition ids of each architecture (of those in `only`, if given), in config order."""
    chosen: dict[str, list[int]] = {}
    for pid, arch in enumerate(cfg.architectures):
        if only and arch not in only:
            continue
        pids = chosen.setdefault(arch, [])
        if len(pids) < per_arch:
            pids.append(pid)
    return chosen


BUDGET_KEYS = ("client.local_epochs", "client.max_local_epochs")  # the keys reference_config replaces


def run_config(args: argparse.Namespace) -> RunConfig:
    """The local arm's config of a command line of this script."""
    return load_config([f"data.root={args.data}", "algorithm=local", *args.set])


def earlier_references(path: str, args: argparse.Namespace, reference_cfg: RunConfig,
                       parser: argparse.ArgumentParser) -> dict[int, tuple]:
    """pid -> (architecture, reference epochs, reference val acc, reference test acc, in points) from an earlier
    output of this script whose references are this run's (`reference_cfg`): the same settings once resolved
    (--data, --epochs-per-round, the overrides and their defaults), the budget's keys aside."""
    try:
        lines = open(path).read().splitlines()
    except OSError as error:
        parser.error(f"--reference-from {path}: {error.strerror}")
    if not lines or not lines[0].startswith("$ python "):
        parser.error(f"--reference-from {path}: not an output of this script (its first line is the command)")
    earlier = parser.parse_args(shlex.split(lines[0])[3:])
    # the resolved reference configs, not the override text: seed=0 spelled out is the default seed
    try:
        theirs = flatten(reference_config(run_config(earlier), earlier.epochs_per_round).to_dict())
    except ConfigError as error:
        parser.error(f"--reference-from {path}: its settings are not valid here ({error}): {lines[0]}")
    ours = flatten(reference_cfg.to_dict())
    differ = sorted(key for key in ours if theirs.get(key) != ours[key])
    if differ:
        shown = ", ".join(f"{key}={theirs.get(key)} there, {ours[key]} here" for key in differ[:4])
        parser.error(f"--reference-from {path}: its references were made with other settings ({shown}); only "
                     f"{' and '.join(BUDGET_KEYS)} may differ: {lines[0]}")
    return {int(cells[1]): (cells[0], int(cells[5]), float(cells[6]), float(cells[7]))
            for cells in client_rows(lines, path, "--reference-from", parser)}


HEADER = ("| architecture | pid | budget epochs | budget val acc | budget test acc | reference epochs "
          "| reference val acc | reference test acc | val gap (points) | test gap (points) "
          "| seconds (budget / reference) |")
COLUMNS = HEADER.count("|") - 1


def client_rows(lines: list[str], path: str, option: str, parser: argparse.ArgumentParser) -> list[list[str]]:
    """The per-client rows of an output of this script, as cells (architecture, pid, ..., seconds); an output of
    the time the verdict read test accuracy (8 cells a row, no validation) is refused."""
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines]
    rows = [cells for cells in rows if len(cells) >= 2 and cells[1].isdigit()]
    if any(len(cells) == 8 for cells in rows):
        parser.error(f"{option} {path}: written before the validation columns (2026-11-30), it holds test accuracy "
                     "only, and budgets are judged on validation accuracy; measure it again")
    return [cells for cells in rows if len(cells) == COLUMNS]


def interval_text(mean: float, half: float) -> str:
    return f"{mean:+.1f} " + ("(one client: no interval)" if math.isnan(half) else
                              f"[{mean - half:+.1f}, {mean + half:+.1f}]")


def summary_lines(accuracies_by_arch: dict[str, list[Accuracies]]) -> list[str]:
    """Each architecture's mean row and verdict (on the validation gap; the test gap beside it), the same over all
    clients where there are several architectures, and what to do."""
    lines, verdicts = [], {}
    groups = dict(accuracies_by_arch)
    if len(groups) > 1:
        groups["all architectures"] = [acc for group in accuracies_by_arch.values() for acc in group]
    for name, group in groups.items():
        means = Accuracies(*(sum(column) / len(group) for column in zip(*group)))
        mean, half, verdicts[name] = verdict([a.reference_val - a.budget_val for a in group])
        test_gap = interval_text(*mean_ci([a.reference_test - a.budget_test for a in group]))
        lines.append(f"| **{name} (mean of {len(group)})** | | | {means.budget_val:.1f} | {means.budget_test:.1f} | "
                     f"| {means.reference_val:.1f} | {means.reference_test:.1f} | {interval_text(mean, half)} "
                     f"**{verdicts[name]}** | {test_gap} | |")
    short = [name for name, said in verdicts.items() if said == "too small"]
    unresolved = [name for name, said in verdicts.items() if said == "unresolved"]
    if unresolved:
        lines.append(f"unresolved (mean validation gap > {GAP_LIMIT:g} points, but its interval holds zero): "
                     f"{', '.join(unresolved)}; measure more clients (--clients-per-arch, other seeds) before "
                     "changing the budget")
    if short:
        lines.append(f"budget too small (mean validation gap > {GAP_LIMIT:g} points, interval above zero): "
                     f"{', '.join(short)}; raise the preset's budget before comparing arms")
    elif not unresolved:
        lines.append(f"budget enough: no mean validation gap exceeds {GAP_LIMIT:g} points")
    return lines


def combine(paths: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """The summary over several outputs of this script made with the same budget and reference (their settings
    line, date and load aside); each file's clients count as clients of their own (other seeds: other shards)."""
    accuracies: dict[str, list[Accuracies]] = {}
    settings = {}
    for path in paths:
        try:
            lines = open(path).read().splitlines()
        except OSError as error:
            parser.error(f"--combine {path}: {error.strerror}")
        if len(lines) < 2 or not lines[0].startswith("$ python ") or lines[1].count(" | ") != 3:
            parser.error(f"--combine {path}: not an output of this script (its first line is the command)")
        settings[path] = lines[1].split(" | ", 2)[2]  # the budget's settings and the reference's epochs
        for cells in client_rows(lines, path, "--combine", parser):
            accuracies.setdefault(cells[0], []).append(Accuracies(*(float(cells[i]) for i in (3, 4, 6, 7))))
    if len(set(settings.values())) > 1:
        parser.error("--combine: the outputs were made with other budgets or references:\n" +
                     "\n".join(f"  {path}: {text}" for path, text in settings.items()))
    if not accuracies:
        parser.error("--combine: no client rows in " + ", ".join(paths))
    return [f"{len(paths)} outputs, {next(iter(settings.values()))}", *summary_lines(accuracies)]


def config_summary(cfg: RunConfig) -> str:
    c = cfg.client
    return (f"num_rounds {cfg.num_rounds}, local_epochs {c.local_epochs}, max_local_epochs {c.max_local_epochs}, "
            f"min_steps {c.min_steps}, "
            f"warmup_epochs {c.warmup_epochs}, warmup_public_epochs {c.warmup_public_epochs}, "
            f"batch_size {c.batch_size}, lr {c.lr}, lr_policy {c.lr_policy}, norm {cfg.model.norm}, "
            f"partition {cfg.partition.scheme}, samples_per_client {cfg.data.samples_per_client}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="data.root: the CIFAR-10 archive or folder")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. experiment=paper_quick partition=type2")
    parser.add_argument("--clients-per-arch", type=int, default=2, help="first K clients of each architecture")
    parser.add_argument("--epochs-per-round", type=int, default=10, help="the reference: this many private epochs "
                        "in every round (no ramp)")
    parser.add_argument("--architectures", default="", help="measure only these, comma-separated (e.g. "
                        "resnet18,shufflenetv2: one process an architecture uses one core each)")
    parser.add_argument("--reference-from", default="", help="reuse the references of an earlier output of this "
                        "script (same settings but for client.local_epochs and client.max_local_epochs); clients it "
                        "lacks are measured")
    parser.add_argument("--combine", nargs="+", default=[], metavar="OUT", help="measure nothing: the verdicts over "
                        "these earlier outputs of one budget (clients of every file pooled)")
    args = parser.parse_args()
    if args.combine:
        print("\n".join(combine(args.combine, parser)))
        return
    if not args.data:
        parser.error("--data is required (but with --combine)")
    if args.epochs_per_round < 1 or args.clients_per_arch < 1:
        parser.error("--epochs-per-round and --clients-per-arch must be at least 1")
    cfg = run_config(args)
    only = [name for name in args.architectures.split(",") if name]
    absent = sorted(set(only) - set(cfg.architectures))
    if absent:
        parser.error(f"--architectures {','.join(absent)}: not in this config's federation "
                     f"({', '.join(sorted(set(cfg.architectures)))})")
    reference_cfg = reference_config(cfg, args.epochs_per_round)
    reused = earlier_references(args.reference_from, args, reference_cfg, parser) if args.reference_from else {}
    load_federation(cfg)  # decode or read the cache once, outside the timings
    Learner(cfg, 0).validate()  # and a process's one-time costs (first model, thread pools)

    print("$ python " + " ".join(sys.argv))
    print(f"{time.strftime('%Y-%m-%d %H:%M')} | {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} | "
          f"{config_summary(cfg)} | reference: {args.epochs_per_round} epochs a round")
    print(HEADER)
    print("|---|" + "---:|" * (COLUMNS - 1))
    accuracies: dict[str, list[Accuracies]] = {}
    for arch, pids in clients_by_architecture(cfg, args.clients_per_arch, only).items():
        for pid in pids:
            budget = budget_result(cfg, pid)
            if pid in reused:
                name, epochs, val_acc, test_acc = reused[pid]
                if name != arch or epochs != private_epochs(reference_cfg, budget["num_train"]):
                    sys.exit(f"--reference-from: client {pid} is {name} with {epochs} reference epochs there, "
                             f"{arch} with {private_epochs(reference_cfg, budget['num_train'])} here")
                reference = {"epochs": epochs, "val_acc": val_acc / 100, "test_acc": test_acc / 100,
                             "seconds": math.nan}
            else:
                reference = budget_result(reference_cfg, pid)
            acc = Accuracies(100 * budget["val_acc"], 100 * budget["test_acc"], 100 * reference["val_acc"],
                             100 * reference["test_acc"])
            accuracies.setdefault(arch, []).append(acc)
            print(f"| {arch} | {pid} | {budget['epochs']} | {acc.budget_val:.1f} | {acc.budget_test:.1f} | "
                  f"{reference['epochs']} | {acc.reference_val:.1f} | {acc.reference_test:.1f} | "
                  f"{acc.reference_val - acc.budget_val:+.1f} | {acc.reference_test - acc.budget_test:+.1f} | "
                  f"{budget['seconds']:.1f} / {'reused' if pid in reused else format(reference['seconds'], '.1f')} |",
                  flush=True)
    print("\n".join(summary_lines(accuracies)))


if __name__ == "__main__":
    main()
