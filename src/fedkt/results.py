"""What a run leaves in its directory, written after every round so a killed run keeps what it had:

- metrics.csv / metrics.json: one row per round (mean, spread, failures, seconds, bytes);
- clients.csv: one row per client per round (architecture, test/val/train accuracy, losses, seconds, bytes);
- coefficients.npy: KT-pFL's c after every round, shape (rounds, N, N);
- summary.json: status, final_mean_test_acc, the per-round mean history, the round chosen by mean validation
  accuracy and its test accuracy (never a round chosen on test data), and the wall time;
- checkpoint.npz: the server's state after the last complete round (with clients/ it resumes a run); arrays
  and JSON only, so loading it runs no code (`read_checkpoint`).

Reading them back for figures and reports is tolerant (`read_json`, `read_csv`, `to_float`): a missing or
broken file reads as nothing, a bad cell as NaN.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from fedkt.config import RunConfig
from fedkt.files import write_atomic

log = logging.getLogger("fedkt")


def to_csv(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def dump_json(path: Path, value) -> None:
    write_atomic(path, json.dumps(_json_safe(value), indent=2))


CHECKPOINT = "checkpoint.npz"
OLD_CHECKPOINT = "checkpoint.pkl"  # fedkt before 2026-11-29: a pickle, never loaded (unpickling can run code)


def pack_state(state) -> bytes:
    """A nested state (dicts, lists, tuples, numbers, strings, None, numpy arrays) as the bytes of one .npz
    file: each array stored as itself, the rest as JSON in the array "__state__". Tuples come back as lists."""
    arrays: dict[str, np.ndarray] = {}

    def encode(value):
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise TypeError("object arrays cannot be stored without pickle")
            arrays[f"a{len(arrays)}"] = value
            return {"__array__": f"a{len(arrays) - 1}"}
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value):
                return {k: encode(v) for k, v in value.items()}
            return {"__items__": [[encode(k), encode(v)] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        return value.item() if isinstance(value, np.generic) else value

    text = json.dumps(encode(state))
    buffer = io.BytesIO()
    np.savez(buffer, __state__=np.frombuffer(text.encode(), dtype=np.uint8), **arrays)
    return buffer.getvalue()


def unpack_state(path: str | Path):
    """What pack_state wrote, read with allow_pickle=False."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}

    def decode(value):
        if isinstance(value, dict):
            if set(value) == {"__array__"}:
                return arrays[value["__array__"]]
            if set(value) == {"__items__"}:
                return {decode(k): decode(v) for k, v in value["__items__"]}
            return {k: decode(v) for k, v in value.items()}
        return [decode(v) for v in value] if isinstance(value, list) else value

    return decode(json.loads(arrays.pop("__state__").tobytes().decode()))


def read_checkpoint(run_dir: str | Path) -> dict | None:
    """The run's checkpoint, or None when it has none; ValueError for a checkpoint in the old pickle format."""
    run_dir = Path(run_dir)
    if (run_dir / CHECKPOINT).exists():
        return unpack_state(run_dir / CHECKPOINT)
    if (run_dir / OLD_CHECKPOINT).exists():
        raise ValueError(
            f"{run_dir / OLD_CHECKPOINT} is a pickle written by an older fedkt; fedkt no longer loads pickles (loading "
            "one can run any code), so this run cannot be resumed: start it again. Its records (metrics.csv, "
            "clients.csv, summary.json) stay readable by fedkt.report.")
    return None


class RunRecorder:
    """Called by the strategy after every round; keeps the run directory up to date and logs progress."""

    def __init__(self, run_dir: str | Path, cfg: RunConfig):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.num_rounds = cfg.num_rounds
        self.rounds: list[dict] = []
        self.client_rows: list[dict] = []
        self.coefficients: list[np.ndarray] = []
        self.start = time.time()
        self.seconds_before = 0.0  # wall time of the run before a resume
        self.resumed_rounds = 0
        self.status = "running"
        self.error = ""
        self._write_summary()

    def __call__(self, record: dict, rows: list[dict], c: np.ndarray | None) -> None:
        self.rounds.append(record)
        self.client_rows.extend(rows)
        write_atomic(self.run_dir / "metrics.csv", to_csv(self.rounds))
        dump_json(self.run_dir / "metrics.json", self.rounds)
        write_atomic(self.run_dir / "clients.csv", to_csv(self.client_rows))
        if c is not None:
            self.coefficients.append(c)
            buffer = io.BytesIO()
            np.save(buffer, np.stack(self.coefficients))
            write_atomic(self.run_dir / "coefficients.npy", buffer.getvalue())
        self._write_summary()
        log.info(self.progress_line(record))

    def save_checkpoint(self, server_state: dict) -> None:
        """After a complete round: the server's state plus what this recorder holds, written atomically."""
        state = {"server": server_state, "coefficients": self.coefficients, "wall_seconds": self.wall_seconds()}
        write_atomic(self.run_dir / CHECKPOINT, pack_state(state))

    def restore(self, checkpoint: dict) -> dict:
        """Take up a killed run's records; returns the server's state to load into the strategy."""
        server = checkpoint["server"]
        self.rounds = list(server["history"])
        self.client_rows = list(server["client_rows"])
        self.coefficients = list(checkpoint["coefficients"])
        self.seconds_before = float(checkpoint["wall_seconds"])
        self.resumed_rounds = len(self.rounds)
        return server

    def wall_seconds(self) -> float:
        return self.seconds_before + time.time() - self.start

    def progress_line(self, record: dict) -> str:
        # time left from the rounds after this session's first (the first holds the warm-up epochs and the
        # clients' start-up: several times a later round); from the first alone until there is another
        seconds = [float(r["seconds"]) for r in self.rounds[self.resumed_rounds:]]
        later = seconds[1:] or seconds
        left = sum(later) / len(later) * (self.num_rounds - len(self.rounds))
        basis = "" if len(seconds) > 1 or len(self.rounds) == self.num_rounds else " (from round 1, with its warm-up)"
        return (f"round {record['round']}/{self.num_rounds} | mean test acc {record['mean_test_acc']:.4f} "
                f"(min {record['min_test_acc']:.3f}, max {record['max_test_acc']:.3f}) | "
                f"clients {record['eval_clients']}/{self.cfg.num_clients}, failures "
                f"{record.get('fit_failures', 0) + record.get('eval_failures', 0)}, rejected {record.get('rejected', 0)} | "
                f"{record['seconds']:.1f} s | about {format_duration(left)} left{basis}")

    def finish(self, status: str, error: str = "") -> dict:
        self.status, self.error = status, error
        floor = at_majority_share(self._last_round_rows())
        if floor and self.cfg.data.name != "synthetic":  # experiment=smoke checks the pipeline, not learning
            log.warning("%d of %d clients end no better than answering their test split's most common class "
                        "(partition ids %s): they may not have learned from their images; fedkt.report's "
                        "'Do the clients learn?' table shows it per architecture", len(floor),
                        len(self._last_round_rows()), ", ".join(map(str, floor)))
        return self._write_summary()

    def _last_round_rows(self) -> list[dict]:
        last = self.rounds[-1]["round"] if self.rounds else -1
        return [r for r in self.client_rows if r["round"] == last]

    def _write_summary(self) -> dict:
        history = [r["mean_test_acc"] for r in self.rounds]
        summary = {
            "status": self.status,
            "error": self.error,
            "algorithm": self.cfg.algorithm.name,
            "partition": self.cfg.partition.scheme,
            "seed": self.cfg.seed,
            "num_clients": self.cfg.num_clients,
            "num_rounds": self.num_rounds,
            "rounds_completed": len(self.rounds),
            "final_mean_test_acc": history[-1] if history else None,
            "mean_test_acc_history": history,
            **val_selected(self.rounds),
            "final_client_test_acc": {r["partition_id"]: r.get("test_acc") for r in self._last_round_rows()},
            # each client's floor: the test accuracy of always answering its test split's most common class
            "final_client_test_majority_share": {r["partition_id"]: r.get("test_majority_share")
                                                 for r in self._last_round_rows()},
            "wall_seconds": self.wall_seconds(),
            "bytes_up": sum(r.get("bytes_up", 0) for r in self.rounds),
            "bytes_down": sum(r.get("bytes_down", 0) for r in self.rounds),
        }
        dump_json(self.run_dir / "summary.json", summary)
        return summary


def at_majority_share(rows: list[dict]) -> list[int]:
    """Partition ids whose test accuracy is at or below their test split's majority-class share (rows without
    either figure are left out)."""
    return sorted(r["partition_id"] for r in rows
                  if math.isfinite(to_float(r.get("test_acc"))) and math.isfinite(to_float(r.get("test_majority_share")))
                  and to_float(r["test_acc"]) <= to_float(r["test_majority_share"]))


def val_selected(rounds: list[dict]) -> dict:
    """The round with the highest mean validation accuracy (the earliest of ties) and that round's mean test
    accuracy: the figure to quote for "the best round", chosen without looking at test data."""
    scored = [(r["mean_val_acc"], -i) for i, r in enumerate(rounds) if math.isfinite(r.get("mean_val_acc", math.nan))]
    if not scored:
        return {"val_selected_round": None, "val_selected_mean_test_acc": None}
    chosen = rounds[-max(scored)[1]]
    return {"val_selected_round": chosen["round"], "val_selected_mean_test_acc": chosen["mean_test_acc"]}


def format_duration(seconds: float) -> str:
    """12 s, 3 min 05 s, 1 h 02 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def human_bytes(value) -> str:
    """1234567 -> '1.23 MB'; NaN/None -> '—'."""
    value = to_float(value)
    if not math.isfinite(value):
        return "—"
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


# -----------------------------------------------------------------------------
# reading a run directory back (tolerant: a missing or broken file reads as nothing)

def to_float(value) -> float:
    """A CSV/JSON cell as a float; empty, None or garbage -> NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_json(path: Path):
    """The file's JSON, or None when it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_csv(path: Path) -> list[dict]:
    """The file's rows as dicts of strings, or [] when it is missing or unreadable."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []
