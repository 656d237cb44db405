"""A report over many runs: a Hydra multirun directory, or any set of run directories.

    python -m fedkt.report outputs/multirun/2026-11-25_16-00-00            # -> report.md + figures there
    python -m fedkt.report RUN_A RUN_B SWEEP_C --out /tmp/report [--run-figures] [--x data.samples_per_client]
                           [--pair model.norm] [--data ../shared/data/cifar10-jpeg.tar.gz]

Every directory holding both config.json and summary.json (see fedkt.results) below the given paths is a run.
report.md holds:

- the mean table: the final mean test accuracy, mean and sample standard deviation (ddof=1) over seeds, for
  each algorithm x partition x setting. A *setting* is the value of every config key that differs between the
  runs found, other than seed, algorithm.name, partition.scheme and the bookkeeping keys in IGNORED_KEYS (paths,
  devices, resources, logging); e.g. `model.norm=batch, client.lr_policy=plateau`. A key that only some runs have
  (added to the config between runs) counts only if it takes two values; runs without it show "—". Only
  completed runs count;
- the same table per architecture: each architecture's clients' mean final test accuracy, mean over seeds;
- do the clients learn: per architecture, the clients' final test accuracy against the share of their test
  split's most common class (what always answering that class scores: the floor of a client that learned
  nothing), and how many client-runs end above it. Runs record the shares since 2026-12-02; for older runs
  `--data ROOT` rebuilds each run's partition from its config on that data set and computes them;
- one curve figure per partition (curves_<partition>.png): mean test accuracy per round of each algorithm
  (and setting), mean over seeds with a +-1 sample-std band; runs that did not complete are drawn dotted;
- where a group has two seeds or more, seeds_<partition>.png: the same curves seed by seed, one panel each (a
  mean over seeds hides one seed's collapse);
- the local arm exchanges nothing, so a local run also counts in every setting of the other arms that differs from
  its own only in `algorithm.*` keys (e.g. `algorithm.align_size`) and has no local run of that seed: one local run
  per seed serves a sweep of the alignment size; report.md lists each such borrowed run;
- paired differences: for each partition x setting and each pair of algorithms, the final accuracy of one
  minus the other on the same seed (same shards), as mean over the matching seeds with a 95 % confidence
  interval (Student t, n-1 degrees of freedom), and a verdict: one arm ahead when the interval excludes zero,
  else "level"; where the runs federate several architectures, the same per architecture (its clients only);
- with `--pair KEY` (a setting key, e.g. model.norm): the same paired differences between the key's values instead
  of between algorithms (one value minus another on the same seed, per algorithm and the rest of the setting, and
  per architecture). A key added to fedkt after some runs were recorded counts, for those runs, as the value that
  reproduces what they did (fedkt.config.BEFORE_THE_KEY), so they are paired with runs that set it otherwise;
- with `--x KEY` (any swept config key, e.g. data.samples_per_client), sweep_<partition>.png: final accuracy of
  each algorithm against KEY (mean over seeds, 95 % interval), and beside it the paired gains against KEY;
- the runs table: one row per run with its status, rounds, final accuracy, wall time and bytes;
- every run that failed, is incomplete, still running or unreadable, listed with its status and error.

report.json holds the same numbers for machines. `--run-figures` also draws each run's own figures
(fedkt.plots.write_run_figures) into <out>/runs/<run>/, leaving the run directories untouched.

As a Hydra callback (conf/config.yaml):

    hydra:
      callbacks:
        report:
          _target_: fedkt.report.ReportCallback

writes the report into the sweep directory when a multirun ends; it logs, and never raises.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from fedkt.config import BEFORE_THE_KEY, ConfigError, flatten, recorded_architectures, recorded_config
from fedkt.data import DataError
from fedkt.files import write_atomic
from fedkt.partition import Partition
from fedkt.plots import new_figure, save_figure, write_run_figures
from fedkt.results import format_duration, human_bytes, read_json, to_float
from fedkt.task import load_federation

log = logging.getLogger("fedkt")

# keys that never define a setting: what the runs compare (seed, algorithm, partition) and bookkeeping that
# does not change the experiment (where data and outputs live, devices and resources, logging)
IGNORED_KEYS = ("seed", "algorithm.name", "partition.scheme", "run_dir", "data.root", "data.cache_dir",
                "data.download", "client.device", "client.num_cpus", "client.num_gpus", "client.state_store",
                "client.eval_batch_size")
IGNORED_PREFIXES = ("ray.", "logging.", "hydra.")
ALGORITHM_ORDER = ("ktpfl", "fedmd", "local", "fedavg")
PARTITION_ORDER = ("type1", "type2", "iid")
ALGORITHM_STYLE = {"ktpfl": ("#0072B2", "o"), "fedmd": ("#D55E00", "s"), "local": ("#555555", "^"),
                   "fedavg": ("#009E73", "v")}
_MISSING = "—"


@dataclass
class Run:
    path: Path
    label: str
    config: dict
    summary: dict
    flat: dict = field(default_factory=dict)
    setting: str = ""
    rebuilt_shares: dict = field(default_factory=dict)  # majority shares computed from the data (--data)

    @property
    def status(self) -> str:
        return str(self.summary.get("status") or "unreadable")

    @property
    def error(self) -> str:
        return str(self.summary.get("error") or "")

    @property
    def algorithm(self) -> str:
        return str(self.summary.get("algorithm") or self.flat.get("algorithm.name") or "?")

    @property
    def partition(self) -> str:
        return str(self.summary.get("partition") or self.flat.get("partition.scheme") or "?")

    @property
    def seed(self):
        return self.summary.get("seed", self.flat.get("seed"))

    @property
    def history(self) -> list[float]:
        history = self.summary.get("mean_test_acc_history")
        return [to_float(v) for v in history] if isinstance(history, list) else []

    @property
    def final(self) -> float:
        return to_float(self.summary.get("final_mean_test_acc"))

    @property
    def val_selected(self) -> float:
        """Mean test accuracy in the round with the best mean validation accuracy (NaN for runs recorded
        before fedkt chose it; their best_mean_test_acc, chosen on test data, is not shown)."""
        return to_float(self.summary.get("val_selected_mean_test_acc"))

    @property
    def included(self) -> bool:
        """Counts in the mean table: completed, with a final accuracy."""
        return self.status == "completed" and math.isfinite(self.final)

    @cached_property
    def client_architectures(self) -> list[str]:
        """Architecture per partition id, from the run's model.architectures; [] when the config lacks it."""
        try:
            return recorded_architectures(self.config)
        except Exception:  # an old or hand-written config: no per-architecture figures, not an error
            return []

    @cached_property
    def client_finals(self) -> dict[int, float]:
        """partition id -> final test accuracy (finite values only)."""
        accs = self.summary.get("final_client_test_acc")
        if not isinstance(accs, dict):
            return {}
        return {int(pid): to_float(acc) for pid, acc in accs.items()
                if str(pid).isdigit() and math.isfinite(to_float(acc))}

    @cached_property
    def architecture_finals(self) -> dict[str, float]:
        """Final test accuracy per architecture: the mean over that architecture's clients (their partition ids
        mapped through the run's model.architectures); {} when the run's config or summary lacks them."""
        archs = self.client_architectures
        by_arch: dict[str, list[float]] = {}
        for pid, acc in self.client_finals.items():
            if pid < len(archs):
                by_arch.setdefault(archs[pid], []).append(acc)
        return {arch: float(np.mean(v)) for arch, v in by_arch.items()}

    @property
    def majority_shares(self) -> dict[int, float]:
        """partition id -> the majority-class share of its test split: as the run recorded it, else as computed
        from the data (rebuilt_shares); {} when neither."""
        recorded = self.summary.get("final_client_test_majority_share")
        shares = {int(pid): to_float(v) for pid, v in recorded.items()
                  if str(pid).isdigit()} if isinstance(recorded, dict) else {}
        shares = {pid: v for pid, v in shares.items() if math.isfinite(v)}
        return shares or dict(self.rebuilt_shares)

    def against_floor(self) -> dict[str, list[tuple[float, float]]]:
        """Per architecture, (final test accuracy, majority share) of each client that has both."""
        archs, shares = self.client_architectures, self.majority_shares
        pairs: dict[str, list[tuple[float, float]]] = {}
        for pid, acc in self.client_finals.items():
            if pid < len(archs) and pid in shares:
                pairs.setdefault(archs[pid], []).append((acc, shares[pid]))
        return pairs

    @property
    def rounds(self) -> str:
        return f"{self.summary.get('rounds_completed', '?')}/{self.summary.get('num_rounds', '?')}"


@dataclass
class Group:
    partition: str
    algorithm: str
    setting: str
    runs: list[Run]
    borrowed: dict = field(default_factory=dict)  # seed -> the setting its local run ran in (share_local_runs)
    like: Run | None = None  # for a group of borrowed runs only: a run of another arm that has its setting

    def setting_value(self, key: str, default=None):
        """The value of `key` in the group's setting: from a run of its own (a borrowed run has another value of an
        algorithm.* key), else from `like`."""
        run = next((r for r in self.runs if r.seed not in self.borrowed), self.like)
        return run.flat.get(key, default) if run is not None else default

    @property
    def finals(self) -> np.ndarray:
        return np.array([r.final for r in self.runs])

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def mean(self) -> float:
        return float(np.mean(self.finals))

    @property
    def std(self) -> float | None:
        return float(np.std(self.finals, ddof=1)) if self.n > 1 else None

    @property
    def val_selected_mean(self) -> float:
        chosen = np.array([r.val_selected for r in self.runs])
        return float(np.mean(chosen)) if np.isfinite(chosen).all() else math.nan

    def architecture_mean(self, arch: str) -> float:
        """Mean over seeds of the architecture's final accuracy; NaN unless every run has it."""
        values = [r.architecture_finals.get(arch, math.nan) for r in self.runs]
        return float(np.mean(values)) if values and np.isfinite(values).all() else math.nan


# Student t quantiles t(0.975, df) for df = 1..30; beyond, a Cornish-Fisher expansion around the normal 1.96
# (error < 0.001). Written out rather than importing scipy for one number.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def mean_ci(values) -> tuple[float, float]:
    """(mean, half-width of its 95 % confidence interval); the half-width is NaN below two values."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan, math.nan
    if values.size < 2:
        return float(values.mean()), math.nan
    return float(values.mean()), t975(values.size - 1) * float(values.std(ddof=1)) / math.sqrt(values.size)


@dataclass
class Paired:
    """Final accuracy of algorithm `a` minus that of `b`, seed by seed, in one partition and setting."""
    partition: str
    setting: str
    a: str
    b: str
    seeds: list
    diffs: np.ndarray
    architecture: str = ""  # "": all clients (the run's final mean); else that architecture's clients only

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def mean(self) -> float:
        return mean_ci(self.diffs)[0]

    @property
    def half_width(self) -> float:
        return mean_ci(self.diffs)[1]

    @property
    def no_spread(self) -> bool:
        """The same difference on every seed: a t interval of zero width, which says the seeds agree to the
        resolution of the test splits (one image in 8 or 40 moves a client by points), not that the difference
        is known to that precision."""
        return self.n >= 2 and float(np.ptp(self.diffs)) < 1e-9

    @property
    def verdict(self) -> str:
        if not math.isfinite(self.half_width):
            return "too few seeds"
        if self.mean - self.half_width > 0:
            return f"{self.a} ahead"
        if self.mean + self.half_width < 0:
            return f"{self.b} ahead"
        return "level"


def run_final(run: Run, architecture: str = "") -> float:
    """The run's final mean test accuracy, or that of one architecture's clients (NaN where it lacks them)."""
    return run.architecture_finals.get(architecture, math.nan) if architecture else run.final


def paired_differences(groups: list[Group], architecture: str = "") -> list[Paired]:
    """Every pair of algorithms run in the same partition and setting, over the seeds both have (a seed run
    twice counts once: its last run in path order). With `architecture`, the difference of that architecture's
    clients' final accuracy, over the seeds where both runs have it."""
    def final(run: Run) -> float:
        return run_final(run, architecture)

    cells: dict[tuple, dict[str, Group]] = {}
    for g in groups:
        cells.setdefault((g.partition, g.setting), {})[g.algorithm] = g
    pairs = []
    for (partition, setting), by_algorithm in cells.items():
        names = sorted(by_algorithm, key=lambda a: _order(a, ALGORITHM_ORDER))
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                final_a = {r.seed: final(r) for r in by_algorithm[a].runs if math.isfinite(final(r))}
                final_b = {r.seed: final(r) for r in by_algorithm[b].runs if math.isfinite(final(r))}
                seeds = sorted(set(final_a) & set(final_b), key=lambda s: natural_key(str(s)))
                if seeds:
                    pairs.append(Paired(partition, setting, a, b, seeds,
                                        np.array([final_a[s] - final_b[s] for s in seeds]), architecture))
    return pairs


def paired_by_key(groups: list[Group], key: str, architecture: str = "") -> list[Paired]:
    """Every pair of values of one setting key (e.g. model.norm=batch against none), per partition, algorithm and
    the rest of the setting, over the seeds both have: the paired differences between settings that
    paired_differences gives between algorithms. `a` and `b` name the values; `setting` the algorithm and the rest."""
    def final(run: Run) -> float:
        return run_final(run, architecture)

    def rest(setting: str) -> str:
        return ", ".join(part for part in setting.split(", ") if part and not part.startswith(f"{key}="))

    cells: dict[tuple, dict[str, dict]] = {}
    for g in groups:
        value = canonical(g.setting_value(key, _MISSING))
        label = f"{key}={value}" if value != "" else f'{key}=""'
        # a borrowed local run is the run of another value: pairing it with that value would compare a run with itself
        finals = {r.seed: final(r) for r in g.runs if math.isfinite(final(r)) and r.seed not in g.borrowed}
        cells.setdefault((g.partition, g.algorithm, rest(g.setting)), {})[label] = finals
    pairs = []
    for (partition, algorithm, other), by_value in cells.items():
        names = sorted(by_value, key=natural_key)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                seeds = sorted(set(by_value[a]) & set(by_value[b]), key=lambda s: natural_key(str(s)))
                if seeds:
                    setting = ", ".join(filter(None, [algorithm, other]))
                    pairs.append(Paired(partition, setting, a, b, seeds,
                                        np.array([by_value[a][s] - by_value[b][s] for s in seeds]), architecture))
    return pairs


def paired_by_architecture(groups: list[Group], key: str | None = None) -> list[Paired]:
    """paired_differences (with `key`: paired_by_key) per architecture, where the runs federate more than one (a
    gain on the mean can hide an architecture that loses); [] otherwise."""
    archs = list(dict.fromkeys(a for g in groups for r in g.runs for a in r.architecture_finals))
    if len(archs) < 2:
        return []
    return [p for arch in archs
            for p in (paired_by_key(groups, key, arch) if key else paired_differences(groups, arch))]


@dataclass
class Report:
    out_dir: Path
    markdown: Path
    runs: list[Run]
    groups: list[Group]
    figures: list[Path]
    setting_keys: list[str]
    paired: list[Paired] = field(default_factory=list)
    paired_architectures: list[Paired] = field(default_factory=list)
    pair_key: str | None = None
    paired_settings: list[Paired] = field(default_factory=list)  # between the values of pair_key, all clients
    paired_settings_architectures: list[Paired] = field(default_factory=list)  # the same per architecture


# -----------------------------------------------------------------------------
# finding and reading runs

def shares_from_data(run: Run, data_root) -> dict[int, float]:
    """Each client's test-split majority share for a run recorded without them: the run's partition rebuilt from
    its config (a pure function of it) on the data set at data_root. {} (logged) when it cannot be rebuilt, or
    when the run's own partition.json says the rebuilt partition is not the one it ran on."""
    try:
        cfg, _ = recorded_config(run.config)
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, root=str(data_root)))
        data, partition = load_federation(cfg)
    except (ConfigError, DataError, OSError, ValueError) as error:
        log.warning("report: %s: majority shares not computed: %s: %s", run.label, type(error).__name__, error)
        return {}
    recorded = run.path / "partition.json"
    if recorded.exists() and Partition.from_json(recorded) != partition:
        log.warning("report: %s: the partition rebuilt on %s is not the one in its partition.json (another data "
                    "set?); majority shares not computed", run.label, data_root)
        return {}
    return dict(enumerate(partition.majority_shares(data.y_train.numpy())))


def find_runs(paths) -> list[Path]:
    """Every directory at or below the paths that holds config.json and summary.json (sorted naturally)."""
    found: dict[Path, None] = {}
    for root in map(Path, paths):
        if not root.exists():
            log.warning("report: %s does not exist", root)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            if "config.json" in filenames and "summary.json" in filenames:
                found[Path(dirpath).resolve()] = None
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "clients"]
    return sorted(found, key=lambda p: natural_key(str(p)))


def load_run(path: Path, roots: list[Path]) -> Run:
    config = read_json(path / "config.json")
    summary = read_json(path / "summary.json")
    if not isinstance(summary, dict):
        summary = {"status": "unreadable", "error": "summary.json missing or not valid JSON"}
    run = Run(path=path, label=_label(path, roots), config=config if isinstance(config, dict) else {},
              summary=summary)
    # a key added after the run was recorded takes the value that reproduces what it did, so that its runs and
    # runs that set the key otherwise are two settings (model.bfloat16="" before the key, [alexnet] after)
    run.flat = {**BEFORE_THE_KEY, **flatten(run.config)} if run.config else {}
    return run


def _label(path: Path, roots: list[Path]) -> str:
    for root in roots:
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        return str(rel) if str(rel) != "." else path.name
    return str(path)


def canonical(value):
    """A config value as settings compare it: a whole number as an int, so that 0 and 0.0 (written by versions
    that typed a key differently) are one setting, not two."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def setting_keys(runs: list[Run]) -> list[str]:
    """Config keys that take two or more values among the runs that have them, minus the ignored ones.
    A key only some runs have, with one value, is a key added to the config between runs (the others ran
    its default behaviour): it does not split groups."""
    keys = sorted({k for r in runs for k in r.flat})
    varying = []
    for key in keys:
        if key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES):
            continue
        if len({json.dumps(canonical(r.flat[key]), sort_keys=True, default=str) for r in runs if key in r.flat}) > 1:
            varying.append(key)
    return varying


_NUM = re.compile(r"(\d+)")


def natural_key(text: str):
    """'10_x' after '9_x'."""
    return [int(part) if part.isdigit() else part for part in _NUM.split(str(text))]


def _order(value: str, preferred) -> tuple:
    return (preferred.index(value) if value in preferred else len(preferred), natural_key(value))


def _group_order(partition: str, algorithm: str, setting: str) -> tuple:
    return _order(partition, PARTITION_ORDER), natural_key(setting), _order(algorithm, ALGORITHM_ORDER)


def group_runs(runs: list[Run]) -> list[Group]:
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.included:
            groups.setdefault((run.partition, run.algorithm, run.setting), []).append(run)
    ordered = sorted(groups, key=lambda k: _group_order(*k))
    return [Group(p, a, s, sorted(groups[(p, a, s)], key=lambda r: natural_key(str(r.seed)))) for p, a, s in ordered]


# The local arm exchanges nothing, so no algorithm.* key (the alignment size, KT-pFL's and the distillation's
# settings) touches its runs: one local run stands for every setting of the other arms that differs from its own only
# in those keys, and a sweep of algorithm.align_size need not train the same local clients once per value.
def share_local_runs(groups: list[Group], keys: list[str]) -> list[Group]:
    """Lend each local run to every setting of another algorithm, in its partition, that differs from the run's only
    in algorithm.* keys and has no local run of that seed of its own (where several could lend, the last in the
    groups' order; only a group's own runs are lent). A borrowing group records the setting each borrowed run ran
    in (Group.borrowed)."""
    others = [k for k in keys if not k.startswith("algorithm.")]

    def rest(run: Run) -> str:
        return json.dumps([canonical(run.flat.get(k, _MISSING)) for k in others], sort_keys=True, default=str)

    local = [g for g in groups if g.algorithm == "local"]
    if not local:
        return groups
    targets = {(g.partition, g.setting): g.runs[0] for g in groups if g.algorithm != "local"}
    result = list(groups)
    for (partition, setting), example in targets.items():
        own = next((g for g in local if g.partition == partition and g.setting == setting), None)
        have = {r.seed for r in own.runs} if own else set()
        wanted = rest(example)
        lent: dict = {}
        for g in local:
            if g.partition == partition and g.setting != setting:
                lent.update({r.seed: (r, g.setting) for r in g.runs
                             if r.seed not in have and r.seed not in g.borrowed and rest(r) == wanted})
        if not lent:
            continue
        if own is None:
            own = Group(partition, "local", setting, [], like=example)
            result.append(own)
        own.runs = sorted(own.runs + [run for run, _ in lent.values()], key=lambda r: natural_key(str(r.seed)))
        own.borrowed.update({seed: ran_in for seed, (_, ran_in) in lent.items()})
    return sorted(result, key=lambda g: _group_order(g.partition, g.algorithm, g.setting))


# -----------------------------------------------------------------------------
# figures

def plot_curves(runs: list[Run], groups: list[Group], out_dir: Path) -> list[Path]:
    """curves_<partition>.png: per round, each group's mean over seeds with a +-1 sample-std band; runs that
    did not complete, dotted."""
    written = []
    partitions = sorted({r.partition for r in runs if r.history}, key=lambda p: _order(p, PARTITION_ORDER))
    settings = sorted({r.setting for r in runs}, key=natural_key)
    dashes = ["-", "--", "-.", (0, (5, 1, 1, 1, 1, 1))]
    for partition in partitions:
        fig = new_figure(7.6, 4.6)
        ax = fig.add_subplot()
        top = 0.0
        max_round = 1
        for group in (g for g in groups if g.partition == partition):
            colour, marker = _algorithm_style(group.algorithm)
            width = max(len(r.history) for r in group.runs)
            stack = np.full((group.n, width), np.nan)
            for k, run in enumerate(group.runs):
                stack[k, :len(run.history)] = run.history
            with np.errstate(all="ignore"), _quiet():
                count = np.isfinite(stack).sum(axis=0)
                mean = np.where(count > 0, np.nanmean(stack, axis=0), np.nan)
                std = np.where(count > 1, np.nanstd(stack, axis=0, ddof=1), np.nan)
            xs = np.arange(1, width + 1)
            style = dashes[settings.index(group.setting) % len(dashes)] if len(settings) > 1 else "-"
            label = f"{group.algorithm} (n={group.n})" + (f" [{group.setting}]" if group.setting else "")
            ax.plot(xs, mean, ls=style, marker=marker, ms=4, lw=2, color=colour, label=label)
            if group.n > 1:
                ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.18, lw=0)
            top = max(top, float(np.nanmax(np.concatenate([mean + np.nan_to_num(std), [0.0]]))))
            max_round = max(max_round, width)
        for run in (r for r in runs if r.partition == partition and not r.included and r.history):
            colour, marker = _algorithm_style(run.algorithm)
            xs = np.arange(1, len(run.history) + 1)
            ax.plot(xs, run.history, ls=":", marker=marker, ms=3, lw=1.2, color=colour, alpha=0.8,
                    label=f"{run.algorithm} s{run.seed} ({run.status}, {run.rounds} rounds)")
            finite = [v for v in run.history if math.isfinite(v)]
            top = max(top, max(finite, default=0.0))
            max_round = max(max_round, len(run.history))
        ax.set_xlabel("round")
        ax.set_ylabel("mean test accuracy over clients")
        ax.set_ylim(0.0, min(1.0, max(0.1, top + 0.05)))
        ax.set_xlim(0.5, max_round + 0.5)
        if max_round <= 20:
            ax.set_xticks(range(1, max_round + 1))
        ax.grid(True, alpha=0.3)
        ax.set_title(f"Mean test accuracy per round — partition {partition}\n"
                     f"line: mean over seeds; band: ±1 sample std over seeds (n ≥ 2)", fontsize=9.5)
        ax.legend(loc="lower right", fontsize=7.5)
        written.append(save_figure(fig, out_dir / f"curves_{_safe(partition)}.png"))
    return written


def plot_seed_curves(groups: list[Group], out_dir: Path) -> list[Path]:
    """seeds_<partition>.png: one panel per seed, each group's mean test accuracy per round in that seed (a mean over
    seeds hides one seed's collapse); drawn where some group has two seeds or more."""
    written = []
    settings = sorted({g.setting for g in groups}, key=natural_key)
    dashes = ["-", "--", "-.", (0, (5, 1, 1, 1, 1, 1))]
    for partition in sorted({g.partition for g in groups}, key=lambda p: _order(p, PARTITION_ORDER)):
        mine = [g for g in groups if g.partition == partition]
        seeds = sorted({str(r.seed) for g in mine for r in g.runs}, key=natural_key)
        if len(seeds) < 2:
            continue
        cols = min(len(seeds), 5)
        rows = math.ceil(len(seeds) / cols)
        fig = new_figure(2.9 * cols, 2.6 * rows + 1.0)
        axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
        for ax, seed in zip(axes, seeds):
            for group in mine:
                colour, marker = _algorithm_style(group.algorithm)
                style = dashes[settings.index(group.setting) % len(dashes)] if len(settings) > 1 else "-"
                for run in (r for r in group.runs if str(r.seed) == seed):
                    label = group.algorithm + (f" [{group.setting}]" if group.setting else "")
                    ax.plot(range(1, len(run.history) + 1), run.history, ls=style, marker=marker, ms=3, lw=1.4,
                            color=colour, label=label)
            ax.set_title(f"seed {seed}", fontsize=9)
            ax.grid(True, alpha=0.3)
        for ax in axes[len(seeds):]:
            ax.set_visible(False)
        for ax in axes[::cols]:
            ax.set_ylabel("mean test acc", fontsize=8)
        for ax in axes[len(seeds) - cols:len(seeds)]:
            ax.set_xlabel("round", fontsize=8)
        legend = {}  # label -> handle, from every panel: a group may lack a seed
        for ax in axes[:len(seeds)]:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(label, handle)
        handles, labels = list(legend.values()), list(legend)
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize=7.5)
        fig.suptitle(f"Mean test accuracy per round, seed by seed — partition {partition}", fontsize=9.5)
        written.append(save_figure(fig, out_dir / f"seeds_{_safe(partition)}.png"))
    return written


def plot_sweep(groups: list[Group], paired: list[Paired], x_key: str, out_dir: Path) -> list[Path]:
    """sweep_<partition>.png: left, each algorithm's final accuracy against the config key x_key (mean over
    seeds, 95 % interval); right, the paired gains against x_key (0 = level). One line per algorithm (or pair)
    and per value of the other setting keys."""
    where = {(g.partition, g.setting): g.setting_value(x_key) for g in groups}

    def rest(setting: str) -> str:
        return ", ".join(part for part in setting.split(", ") if part and not part.startswith(f"{x_key}="))

    values = list(dict.fromkeys(v for v in where.values() if v is not None))
    numeric = all(math.isfinite(to_float(v)) for v in values)
    values.sort(key=lambda v: to_float(v) if numeric else natural_key(str(v)))
    position = {json.dumps(v, default=str): (to_float(v) if numeric else float(i)) for i, v in enumerate(values)}

    def x_of(partition, setting):
        return position.get(json.dumps(where.get((partition, setting)), default=str), math.nan)

    written = []
    for partition in sorted({g.partition for g in groups}, key=lambda p: _order(p, PARTITION_ORDER)):
        fig = new_figure(11.0, 4.4)
        ax_acc, ax_gain = fig.subplots(1, 2)
        series: dict[tuple, list] = {}
        for g in (g for g in groups if g.partition == partition):
            series.setdefault((g.algorithm, rest(g.setting)), []).append(
                (x_of(partition, g.setting), *mean_ci(g.finals)))
        for (algorithm, other), points in series.items():
            xs, means, halves = map(np.array, zip(*sorted(points)))
            colour, marker = _algorithm_style(algorithm)
            ax_acc.errorbar(xs, means, yerr=np.nan_to_num(halves), color=colour, marker=marker, capsize=3, lw=1.8,
                            label=algorithm + (f" [{other}]" if other else ""))
        gains: dict[tuple, list] = {}
        for p in (p for p in paired if p.partition == partition):
            gains.setdefault((p.a, p.b, rest(p.setting)), []).append((x_of(partition, p.setting), p.mean,
                                                                      p.half_width))
        for (a, b, other), points in gains.items():
            xs, means, halves = map(np.array, zip(*sorted(points)))
            colour, marker, line = _gain_style(a, b)
            ax_gain.errorbar(xs, 100 * means, yerr=100 * np.nan_to_num(halves), color=colour, marker=marker,
                             capsize=3, lw=1.5, ls=line, label=f"{a} − {b}" + (f" [{other}]" if other else ""))
        ax_gain.axhline(0.0, color="black", lw=0.8)
        for ax in (ax_acc, ax_gain):
            ax.set_xlabel(x_key)
            ax.grid(True, alpha=0.3)
            if not numeric:
                ax.set_xticks(range(len(values)), [str(v) for v in values])
            elif values and min(map(to_float, values)) > 0 and max(map(to_float, values)) >= 10 * min(
                    map(to_float, values)):
                ax.set_xscale("log")
                ax.minorticks_off()
                ax.set_xticks([to_float(v) for v in values], [str(v) for v in values])
            ax.legend(fontsize=7.5)
        ax_acc.set_ylabel("final mean test accuracy")
        ax_gain.set_ylabel("paired gain (points)")
        ax_acc.set_title(f"{partition}: accuracy (mean over seeds, 95 % CI)", fontsize=9.5)
        ax_gain.set_title(f"{partition}: paired gain on the same seeds (95 % CI)", fontsize=9.5)
        written.append(save_figure(fig, out_dir / f"sweep_{_safe(partition)}.png"))
    return written


class _quiet:
    """Silence numpy's 'mean of empty slice' warnings inside a block."""

    def __enter__(self):
        import warnings
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


def _algorithm_style(algorithm: str) -> tuple[str, str]:
    if algorithm in ALGORITHM_STYLE:
        return ALGORITHM_STYLE[algorithm]
    extra = ("#009E73", "#CC79A7", "#E69F00", "#56B4E9")
    return extra[sum(map(ord, algorithm)) % len(extra)], "D"


# The line of a gain a − b: a's colour, b's marker and line, so every pair of the known algorithms looks different
# (solid: against training alone).
SUBTRAHEND_LINE = {"local": "-", "fedmd": "--", "fedavg": ":", "ktpfl": "-."}


def _gain_style(a: str, b: str) -> tuple[str, str, str]:
    return _algorithm_style(a)[0], _algorithm_style(b)[1], SUBTRAHEND_LINE.get(b, "-.")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "_"


# -----------------------------------------------------------------------------
# markdown

def _cell(value) -> str:
    text = _MISSING if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _acc(value) -> str:
    value = to_float(value)
    return f"{value:.4f}" if math.isfinite(value) else _MISSING


def _duration(seconds) -> str:
    seconds = to_float(seconds)
    return format_duration(seconds) if math.isfinite(seconds) else _MISSING


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def mean_table(groups: list[Group], with_setting: bool) -> list[str]:
    header = ["partition", "algorithm"] + (["setting"] if with_setting else []) + [
        "n", "final acc mean", "final acc std", "acc at best-val round", "seeds"]
    rows = []
    for g in groups:
        rows.append([g.partition, g.algorithm] + ([g.setting or "(default)"] if with_setting else []) + [
            g.n, _acc(g.mean), _acc(g.std) if g.std is not None else _MISSING, _acc(g.val_selected_mean),
            ", ".join(str(r.seed) for r in g.runs)])
    return _table(header, rows)


def _points(value) -> str:
    value = to_float(value)
    return f"{100 * value:+.2f}" if math.isfinite(value) else _MISSING


def paired_table(paired: list[Paired], with_setting: bool) -> list[str]:
    by_arch = any(p.architecture for p in paired)
    with_setting = with_setting or any(p.setting for p in paired)
    header = ["partition"] + (["setting"] if with_setting else []) + (["architecture"] if by_arch else []) + [
        "difference", "n", "mean (points)", "95 % CI (points)", "verdict", "seeds"]
    rows = []
    for p in paired:
        low, high = p.mean - p.half_width, p.mean + p.half_width
        interval = f"[{_points(low)}, {_points(high)}]" if math.isfinite(p.half_width) else _MISSING
        rows.append([p.partition] + ([p.setting or "(default)"] if with_setting else [])
                    + ([p.architecture] if by_arch else []) + [
            f"{p.a} − {p.b}", p.n, _points(p.mean), interval, p.verdict + (" *" if p.no_spread else ""),
            ", ".join(map(str, p.seeds))])
    note = ["", "\\* The same difference on every seed: an interval of zero width says the seeds agree to the "
                "resolution of the clients' test splits, not that the difference is known to that precision; more "
                "seeds (or larger test splits) would tell."] if any(p.no_spread for p in paired) else []
    return _table(header, rows) + note


def architecture_table(groups: list[Group], with_setting: bool) -> list[str]:
    """Final test accuracy per architecture (columns in the order the runs name them), mean over seeds."""
    archs: list[str] = []
    for g in groups:
        for r in g.runs:
            archs += [a for a in r.architecture_finals if a not in archs]
    if not archs:
        return []
    header = ["partition", "algorithm"] + (["setting"] if with_setting else []) + ["n"] + archs
    rows = [[g.partition, g.algorithm] + ([g.setting or "(default)"] if with_setting else []) + [g.n]
            + [_acc(g.architecture_mean(a)) for a in archs] for g in groups]
    return _table(header, rows)


def floor_rows(groups: list[Group]) -> list[dict]:
    """Per group and architecture: client-runs (clients x seeds) with a final accuracy and a majority share, their
    mean accuracy, mean share, and how many end above their own share."""
    rows = []
    for g in groups:
        by_arch: dict[str, list[tuple[float, float]]] = {}
        for run in g.runs:
            for arch, pairs in run.against_floor().items():
                by_arch.setdefault(arch, []).extend(pairs)
        for arch, pairs in by_arch.items():
            acc, share = np.array(pairs).T
            rows.append({"partition": g.partition, "algorithm": g.algorithm, "setting": g.setting,
                         "architecture": arch, "client_runs": len(pairs), "final_acc_mean": float(acc.mean()),
                         "majority_share_mean": float(share.mean()), "above": int((acc > share).sum())})
    return rows


def floor_table(groups: list[Group], with_setting: bool) -> list[str]:
    rows = [[r["partition"], r["algorithm"]] + ([r["setting"] or "(default)"] if with_setting else [])
            + [r["architecture"], r["client_runs"], _acc(r["final_acc_mean"]), _acc(r["majority_share_mean"]),
               f"{r['above']}/{r['client_runs']}"] for r in floor_rows(groups)]
    if not rows:
        return []
    header = ["partition", "algorithm"] + (["setting"] if with_setting else []) + [
        "architecture", "client-runs", "final acc", "majority share", "above it"]
    return _table(header, rows)


def runs_table(runs: list[Run], with_setting: bool) -> list[str]:
    header = ["run", "algorithm", "partition", "seed"] + (["setting"] if with_setting else []) + [
        "status", "rounds", "final acc", "wall time", "bytes up", "bytes down"]
    rows = [[f"`{r.label}`", r.algorithm, r.partition, r.seed] + ([r.setting or "(default)"] if with_setting else [])
            + [r.status, r.rounds, _acc(r.final), _duration(r.summary.get("wall_seconds")),
               human_bytes(r.summary.get("bytes_up")), human_bytes(r.summary.get("bytes_down"))] for r in runs]
    return _table(header, rows)


_STATUS_NOTE = {"running": "still running, or stopped without a chance to record why",
                "incomplete": "the simulation ended before the last round",
                "failed": "stopped by an error",
                "unreadable": "summary.json missing or broken"}


def excluded_lines(runs: list[Run]) -> list[str]:
    excluded = [r for r in runs if not r.included]
    if not excluded:
        return ["None: every run completed and is in the mean table."]
    lines = [f"{len(excluded)} run(s) are left out of the mean table and listed here (their partial curves, "
             f"if any, are drawn dotted):", ""]
    for r in excluded:
        note = _STATUS_NOTE.get(r.status, "completed without a final accuracy" if r.status == "completed" else "")
        error = r.error.strip().replace("\n", " ")
        lines.append(f"- `{r.label}` ({r.algorithm}, {r.partition}, seed {r.seed}): **{r.status}**"
                     f"{f' ({note})' if note else ''} after {r.rounds} rounds"
                     f"{f'; error: `{error[:500]}`' if error else ''}")
    return lines


def render_markdown(report: Report, paths) -> str:
    runs, groups = report.runs, report.groups
    with_setting = bool(report.setting_keys)
    included = sum(r.included for r in runs)
    lines = ["# fedkt report", "",
             f"{len(runs)} run(s) under {', '.join(f'`{p}`' for p in paths)}; {included} completed. "
             f"Written {time.strftime('%Y-%m-%d %H:%M:%S')}.", "",
             "## Final mean test accuracy", "",
             "The metric is each run's final mean over clients of each client's test accuracy; the table gives "
             "its mean and sample standard deviation (ddof=1, '—' with one seed) over the n seeds of each group. "
             "Only completed runs count.", ""]
    if with_setting:
        lines += [f"Runs differ in {', '.join(f'`{k}`' for k in report.setting_keys)} besides seed, algorithm "
                  f"and partition; each distinct combination is a *setting* (a row group; '—': the run's "
                  f"config lacks the key).", ""]
    else:
        lines += ["All runs share one configuration apart from seed, algorithm and partition (keys that only "
                  "some runs have, with one value, and paths, devices and resources are not compared).", ""]
    lines += mean_table(groups, with_setting) if groups else ["No completed run."]
    lent = [g for g in groups if g.borrowed]
    if lent:
        lines += ["", "The local arm exchanges nothing, so the `algorithm.*` keys do not touch it: its runs also "
                  "count in the settings of the other arms that differ from theirs only in those keys (each row "
                  "below: where the local runs of that setting ran). They are paired there with the other arms, "
                  "and left out of the pairs between values of a key."] + [""] + [
                  f"- {g.partition}, local [{g.setting}]: seed {seed} from [{ran_in}]"
                  for g in lent for seed, ran_in in sorted(g.borrowed.items(), key=lambda i: natural_key(str(i[0])))]
    if report.paired:
        lines += ["", "### Paired differences", "",
                  "Final mean test accuracy of one algorithm minus another on the same seed (the same shards, the "
                  "same model initialisations), in percentage points: mean over the matching seeds and its 95 % "
                  "confidence interval (Student t). An arm is *ahead* only when the interval excludes zero; "
                  "otherwise the two are *level*.", ""] + paired_table(report.paired, with_setting)
    per_arch = architecture_table(groups, with_setting)
    if per_arch:
        lines += ["", "### Per architecture", "",
                  "Final test accuracy of each architecture's clients: their mean within a run, then the mean "
                  "over the group's seeds.", ""] + per_arch
    floor = floor_table(groups, with_setting)
    if floor:
        lines += ["", "### Do the clients learn?", "",
                  "Each client's final test accuracy against the share of its test split's most common class: what "
                  "always answering that class scores, the floor of a client that learned nothing from its images "
                  "(non-IID splits are skewed, so it is well above 1/classes). Means over the client-runs (clients "
                  "x seeds); 'above it' counts the client-runs that end above their own floor.", ""] + floor
    elif any(r.client_finals for r in groups_runs(groups)):
        lines += ["", "### Do the clients learn?", "",
                  "These runs did not record their clients' majority-class shares (fedkt before 2026-12-02): "
                  "`--data ROOT` (the data set they ran on) computes them.", ""]
    if report.paired_architectures:
        lines += ["", "### Paired differences per architecture", "",
                  "The same paired differences on each architecture's clients only (their mean final test "
                  "accuracy within a run): a gain on the mean over all clients can hide an architecture that "
                  "loses.", ""] + paired_table(report.paired_architectures, with_setting)
    if report.pair_key:
        lines += ["", f"### Paired differences between settings: `{report.pair_key}`", "",
                  f"Final mean test accuracy with one value of `{report.pair_key}` minus another, on the same seed, "
                  "for each algorithm and the rest of the setting, then per architecture; points, 95 % CI.", ""]
        lines += (paired_table(report.paired_settings + report.paired_settings_architectures, True)
                  if report.paired_settings else [f"No seed was run with two values of `{report.pair_key}`."])
    lines += ["", "## Runs left out", ""] + excluded_lines(runs)
    curves = [f for f in report.figures if f.name.startswith(("curves_", "seeds_"))]
    if curves:
        lines += ["", "## Accuracy per round", ""]
        for f in curves:
            lines += [f"![{f.stem}]({os.path.relpath(f, report.out_dir)})", ""]
    sweeps = [f for f in report.figures if f.name.startswith("sweep_")]
    if sweeps:
        lines += ["", "## Accuracy and paired gain against the swept key", ""]
        for f in sweeps:
            lines += [f"![{f.stem}]({os.path.relpath(f, report.out_dir)})", ""]
    lines += ["", "## Runs", ""] + runs_table(runs, with_setting)
    others = [f for f in report.figures if not f.name.startswith(("curves_", "seeds_", "sweep_"))]
    if others:
        lines += ["", "## Per-run figures", ""]
        lines += [f"- [{os.path.relpath(f, report.out_dir)}]({os.path.relpath(f, report.out_dir)})" for f in others]
    return "\n".join(lines) + "\n"


def groups_runs(groups: list[Group]) -> list[Run]:
    return [r for g in groups for r in g.runs]


def _number(v):
    return v if v is not None and math.isfinite(v) else None


def paired_json(p: Paired, with_architecture: bool = True) -> dict:
    return {"partition": p.partition, "setting": p.setting,
            **({"architecture": p.architecture} if with_architecture else {}), "a": p.a, "b": p.b, "n": p.n,
            "seeds": p.seeds, "diffs": [_number(d) for d in p.diffs], "mean": _number(p.mean),
            "ci95_half_width": _number(p.half_width), "verdict": p.verdict, "same_on_every_seed": p.no_spread}


def report_json(report: Report) -> dict:
    number = _number
    return {
        "setting_keys": report.setting_keys,
        "groups": [{"partition": g.partition, "algorithm": g.algorithm, "setting": g.setting, "n": g.n,
                    "seeds": [r.seed for r in g.runs], "final_mean": number(g.mean),
                    "final_std": number(g.std) if g.std is not None else None,
                    "val_selected_mean": number(g.val_selected_mean),
                    "finals": [number(r.final) for r in g.runs], "runs": [r.label for r in g.runs],
                    "borrowed": {str(seed): ran_in for seed, ran_in in g.borrowed.items()},
                    "architecture_means": {a: number(g.architecture_mean(a))
                                           for a in dict.fromkeys(a for r in g.runs for a in r.architecture_finals)}}
                   for g in report.groups],
        "paired": [paired_json(p, with_architecture=False) for p in report.paired],
        "paired_by_architecture": [paired_json(p) for p in report.paired_architectures],
        "pair_key": report.pair_key,
        "paired_settings": [paired_json(p) for p in report.paired_settings + report.paired_settings_architectures],
        "clients_against_majority_share": floor_rows(report.groups),
        "runs": [{"run": r.label, "path": os.path.relpath(r.path, report.out_dir), "algorithm": r.algorithm,
                  "partition": r.partition,
                  "seed": r.seed, "setting": r.setting, "status": r.status, "error": r.error,
                  "included": r.included, "rounds_completed": r.summary.get("rounds_completed"),
                  "num_rounds": r.summary.get("num_rounds"), "final_mean_test_acc": number(r.final),
                  "wall_seconds": r.summary.get("wall_seconds"), "bytes_up": r.summary.get("bytes_up"),
                  "bytes_down": r.summary.get("bytes_down")} for r in report.runs],
        "figures": [os.path.relpath(f, report.out_dir) for f in report.figures],
    }


# -----------------------------------------------------------------------------
# entry points

def write_report(paths, out_dir=None, run_figures: bool = False, x_key: str | None = None,
                 data_root=None, pair_key: str | None = None) -> Report:
    """Find the runs under paths, write report.md, report.json and curves_<partition>.png (and, with x_key,
    sweep_<partition>.png) into out_dir (default: the first path); returns what it wrote. With data_root, runs
    that did not record their clients' majority shares get them from that data set (shares_from_data). Raises
    FileNotFoundError when no run is found, ValueError when no run's config has x_key."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise ValueError("write_report: give at least one path")
    roots = [p.resolve() for p in paths]
    dirs = find_runs(paths)
    if not dirs:
        raise FileNotFoundError(f"no run directory (config.json + summary.json) under {', '.join(map(str, paths))}")
    out = Path(out_dir) if out_dir is not None else paths[0]
    if out.is_file():
        out = out.parent
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(d, roots) for d in dirs]
    keys = setting_keys(runs)
    for run in runs:
        run.setting = ", ".join(f"{k}={canonical(run.flat.get(k, _MISSING))}" for k in keys)
    groups = share_local_runs(group_runs(runs), keys)
    paired = paired_differences(groups)
    if x_key and not any(x_key in r.flat for r in runs):
        raise ValueError(f"--x {x_key}: no run's config has that key; keys that vary: {', '.join(keys) or 'none'}")
    if pair_key and pair_key not in keys:
        raise ValueError(f"--pair {pair_key}: not a key whose value differs between the runs; keys that do: "
                         f"{', '.join(keys) or 'none'}")
    if data_root is not None:  # after the checks above: rebuilding partitions reads the data set
        for run in runs:
            if run.client_finals and not run.majority_shares:
                run.rebuilt_shares = shares_from_data(run, data_root)
    figures: list[Path] = []
    try:
        figures += plot_curves(runs, groups, out)
        figures += plot_seed_curves(groups, out)
        if x_key:
            figures += plot_sweep(groups, paired, x_key, out)
    except Exception as error:  # the tables matter more than a figure
        log.warning("report: figures not drawn: %s: %s", type(error).__name__, error)
    if run_figures:
        for run in runs:
            figures += write_run_figures(run.path, out / "runs" / _safe(run.label.replace(os.sep, "__")))
    report = Report(out_dir=out, markdown=out / "report.md", runs=runs, groups=groups, figures=figures,
                    setting_keys=keys, paired=paired, paired_architectures=paired_by_architecture(groups),
                    pair_key=pair_key)
    if pair_key:
        report.paired_settings = paired_by_key(groups, pair_key)
        report.paired_settings_architectures = paired_by_architecture(groups, pair_key)
    write_atomic(report.markdown, render_markdown(report, paths))
    write_atomic(out / "report.json", json.dumps(report_json(report), indent=2, default=str))
    return report


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # hydra-core is a dependency; this only keeps `fedkt.report` importable without it
    _HydraCallback = object


class ReportCallback(_HydraCallback):
    """Hydra callback: at the end of a multirun, write the report into the sweep directory (or `out`).
    Logs where it wrote it; a failure is logged as a warning, never raised."""

    def __init__(self, out: str | None = None, run_figures: bool = False) -> None:
        self.out = out or None
        self.run_figures = bool(run_figures)

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            from omegaconf import OmegaConf

            sweep_dir = OmegaConf.select(config, "hydra.sweep.dir")
            if not sweep_dir:
                raise ValueError("config has no hydra.sweep.dir")
            report = write_report([sweep_dir], self.out, run_figures=self.run_figures)
            done = sum(r.included for r in report.runs)
            log.info("report of %d run(s) (%d completed) written to %s", len(report.runs), done, report.markdown)
        except Exception as error:
            log.warning("report not written: %s: %s", type(error).__name__, error)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedkt.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="a multirun directory or run directories")
    parser.add_argument("--out", default=None, help="where report.md and figures go (default: the first PATH)")
    parser.add_argument("--run-figures", action="store_true",
                        help="also draw every run's own figures into OUT/runs/<run>/")
    parser.add_argument("--x", dest="x_key", default=None, metavar="KEY",
                        help="a swept config key (e.g. data.samples_per_client): also draw accuracy and paired gain "
                             "against it (sweep_<partition>.png)")
    parser.add_argument("--pair", dest="pair_key", default=None, metavar="KEY",
                        help="a config key whose value differs between the runs (e.g. model.norm): also give the "
                             "paired differences between its values, seed by seed, per algorithm and architecture")
    parser.add_argument("--data", dest="data_root", default=None, metavar="ROOT",
                        help="the data set the runs used: computes each client's majority-class share for runs "
                             "recorded without it (fedkt before 2026-12-02)")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.paths, args.out, run_figures=args.run_figures, x_key=args.x_key,
                              data_root=args.data_root, pair_key=args.pair_key)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n".join(mean_table(report.groups, bool(report.setting_keys))) if report.groups else "no completed run")
    if report.paired:
        print("\n".join(paired_table(report.paired, bool(report.setting_keys))))
    if report.paired_settings:
        print("\n".join(paired_table(report.paired_settings, True)))
    floor = floor_table(report.groups, bool(report.setting_keys))
    if floor:
        print("\n".join(floor))
    left_out = [r for r in report.runs if not r.included]
    if left_out:
        print("left out: " + "; ".join(f"{r.label} ({r.status})" for r in left_out))
    print(f"report: {report.markdown} ({len(report.runs)} runs, {len(report.figures)} figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
