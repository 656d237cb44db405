"""Figures of one run directory (see fedkt.results for its files), drawn with matplotlib's Agg canvas.

    write_run_figures(run_dir)            # -> the PNGs written into run_dir
    write_run_figures(run_dir, out_dir)   # ... or into another folder

- accuracy.png: mean test accuracy over clients per round, with the min-max band over clients;
- clients.png: every client's test accuracy per round, coloured by architecture (the paper's Figs. 3-4);
- coefficients.png (KT-pFL): the final knowledge coefficient matrix c, clients grouped by architecture;
- coefficients_rounds.png (KT-pFL): the normalised entropy of every row of c per round, and c at a few rounds;
- bytes.png: bytes the server sent and received per round;
- partition.png: every client's class counts as stacked bars (simulation runs: the ServerApp of `flwr run`
  holds no data and draws none).

Each figure is drawn on its own from whatever files the run has: a missing or unreadable file, a single round,
NaN values or a crashed run give fewer (or emptier) figures, never an exception. No pyplot (no global state,
no display needed) and no Flower import.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from fedkt.config import ConfigError, flatten, recorded_architectures
from fedkt.files import write_atomic
from fedkt.results import human_bytes, read_csv, read_json, to_float

log = logging.getLogger("fedkt")

DPI = 110
ARCH_STYLE = {  # colour-blind friendly colours plus a marker, so architecture reads without colour too
    "lenet": ("#0072B2", "o"),
    "alexnet": ("#E69F00", "s"),
    "resnet18": ("#009E73", "^"),
    "shufflenetv2": ("#CC79A7", "D"),
}
_EXTRA_COLOURS = ("#D55E00", "#56B4E9", "#F0E442", "#000000", "#999999")
_EXTRA_MARKERS = ("v", "P", "X", "*", "h")


# -----------------------------------------------------------------------------
# reading (tolerant: a missing or broken file reads as nothing)

def read_metrics(run_dir: Path) -> list[dict]:
    """Per-round rows from metrics.csv (else metrics.json), sorted by round; rows without a round dropped."""
    rows = read_csv(run_dir / "metrics.csv")
    if not rows:
        data = read_json(run_dir / "metrics.json")
        rows = [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []
    rows = [r for r in rows if math.isfinite(to_float(r.get("round")))]
    return sorted(rows, key=lambda r: to_float(r["round"]))


def read_coefficients(run_dir: Path) -> np.ndarray | None:
    """KT-pFL's c per round, shape (rounds, N, N), or None."""
    try:
        c = np.load(run_dir / "coefficients.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    c = np.asarray(c, dtype=float)
    if c.ndim == 2:
        c = c[None]
    if c.ndim != 3 or c.shape[0] == 0 or c.shape[1] != c.shape[2] or c.shape[1] == 0:
        return None
    return c


def run_title(run_dir: Path, config: dict | None = None, summary: dict | None = None) -> str:
    """'ktpfl · type2 · seed 0' (plus the status when the run did not complete)."""
    config = config if config is not None else read_json(run_dir / "config.json") or {}
    summary = summary if summary is not None else read_json(run_dir / "summary.json") or {}
    flat = flatten(config)
    algorithm = summary.get("algorithm") or flat.get("algorithm.name") or "?"
    partition = summary.get("partition") or flat.get("partition.scheme") or "?"
    seed = summary.get("seed", flat.get("seed"))
    title = f"{algorithm} · {partition} · seed {seed if seed is not None else '?'}"
    status = summary.get("status")
    if status and status != "completed":
        title += f" ({status}, {summary.get('rounds_completed', '?')}/{summary.get('num_rounds', '?')} rounds)"
    return title


def architectures_by_client(clients: list[dict], config: dict) -> dict[int, str]:
    """partition id -> architecture, from clients.csv's rows, else from the config's model.architectures
    (fedkt.config.recorded_architectures); {} when neither says."""
    archs: dict[int, str] = {}
    for row in clients:
        pid = to_float(row.get("partition_id"))
        if math.isfinite(pid) and row.get("architecture"):
            archs.setdefault(int(pid), str(row["architecture"]))
    if archs:
        return archs
    try:
        return dict(enumerate(recorded_architectures(config)))
    except (ConfigError, TypeError, ValueError):  # an old or hand-written config: no names, not an error
        return {}


def read_class_counts(run_dir: Path) -> tuple[list[str], np.ndarray] | None:
    """(class names, counts of shape (clients, classes)) from partition.json ('class_counts') if there, else
    from the table in partition.txt; None when neither has them."""
    data = read_json(run_dir / "partition.json")
    names: list[str] | None = None
    counts = None
    if isinstance(data, dict) and data.get("class_counts") is not None:
        counts = data["class_counts"]
        names = data.get("class_names")
    else:
        try:
            lines = (run_dir / "partition.txt").read_text().splitlines()
        except OSError:
            return None
        header = next((i for i, line in enumerate(lines) if line.split()[:1] == ["client"]), None)
        if header is None:
            return None
        cols = lines[header].split()[1:]
        names = cols[:-4] if cols[-4:] == ["train", "val", "test", "total"] else cols
        counts = []
        for line in lines[header + 1:]:
            cells = line.split()
            if len(cells) < len(names) + 1 or not cells[0].isdigit():
                continue
            counts.append([int(v) if v.isdigit() else 0 for v in cells[1:len(names) + 1]])
    try:
        counts = np.asarray(counts, dtype=float)
    except (TypeError, ValueError):
        return None
    if counts.ndim != 2 or counts.size == 0:
        return None
    names = list(names) if names and len(names) == counts.shape[1] else [str(k) for k in range(counts.shape[1])]
    return names, counts


def client_classes(run_dir: Path) -> dict[int, list[str]]:
    """partition id -> the classes it holds (read_class_counts); {} when the run has no class counts."""
    found = read_class_counts(run_dir)
    if found is None:
        return {}
    names, counts = found
    return {i: [names[k] for k in np.flatnonzero(row > 0)] for i, row in enumerate(counts)}


def arch_style(arch: str, known: list[str]) -> tuple[str, str]:
    if arch in ARCH_STYLE:
        return ARCH_STYLE[arch]
    extra = [a for a in known if a not in ARCH_STYLE]
    k = extra.index(arch) if arch in extra else 0
    return _EXTRA_COLOURS[k % len(_EXTRA_COLOURS)], _EXTRA_MARKERS[k % len(_EXTRA_MARKERS)]


def arch_order(archs: dict[int, str]) -> list[str]:
    known = [a for a in ARCH_STYLE if a in archs.values()]
    return known + sorted({a for a in archs.values() if a not in ARCH_STYLE})


# -----------------------------------------------------------------------------
# drawing

def new_figure(width: float = 7.0, height: float = 4.2) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """PNG at DPI, written atomically (the run directory may be read while a run writes it)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    write_atomic(path, buffer.getvalue())
    return path


def _round_axis(ax, rounds) -> None:
    ax.set_xlabel("round")
    finite = [r for r in rounds if math.isfinite(r)]
    if finite and max(finite) - min(finite) <= 20:
        ax.set_xticks(sorted({int(r) for r in finite}))
    if len(finite) == 1:
        ax.set_xlim(finite[0] - 1, finite[0] + 1)
    ax.grid(True, alpha=0.3)


def _accuracy_axis(ax, values) -> None:
    finite = np.asarray([v for v in values if math.isfinite(v)])
    top = 1.0 if finite.size == 0 else min(1.0, max(0.1, float(finite.max()) + 0.05))
    ax.set_ylim(0.0, top)
    ax.set_ylabel("test accuracy")


def plot_accuracy(run_dir: Path, out_dir: Path, title: str) -> Path | None:
    metrics = read_metrics(run_dir)
    if not metrics:
        return None
    rounds = np.array([to_float(r["round"]) for r in metrics])
    col = {k: np.array([to_float(r.get(k)) for r in metrics]) for k in
           ("mean_test_acc", "std_test_acc", "min_test_acc", "max_test_acc")}
    fig = new_figure()
    ax = fig.add_subplot()
    ax.fill_between(rounds, col["min_test_acc"], col["max_test_acc"], color="#0072B2", alpha=0.15,
                    label="min–max over clients")
    ax.fill_between(rounds, col["mean_test_acc"] - col["std_test_acc"], col["mean_test_acc"] + col["std_test_acc"],
                    color="#0072B2", alpha=0.2, label="± std over clients")
    ax.plot(rounds, col["mean_test_acc"], "o-", color="#0072B2", lw=2, ms=4, label="mean over clients")
    last = next((i for i in range(len(rounds) - 1, -1, -1) if math.isfinite(col["mean_test_acc"][i])), None)
    if last is not None:
        ax.annotate(f"{col['mean_test_acc'][last]:.3f}", (rounds[last], col["mean_test_acc"][last]),
                    textcoords="offset points", xytext=(4, 6), fontsize=8)
    _round_axis(ax, rounds)
    _accuracy_axis(ax, np.concatenate([col["max_test_acc"], col["mean_test_acc"]]))
    ax.set_title(f"Mean test accuracy — {title}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, out_dir / "accuracy.png")


def plot_clients(run_dir: Path, out_dir: Path, title: str, config: dict) -> Path | None:
    rows = read_csv(run_dir / "clients.csv")
    rows = [r for r in rows
            if math.isfinite(to_float(r.get("round"))) and math.isfinite(to_float(r.get("partition_id")))]
    if not rows:
        return None
    archs = architectures_by_client(rows, config)
    order = arch_order(archs)
    series: dict[int, dict[float, float]] = {}
    for r in rows:
        series.setdefault(int(to_float(r["partition_id"])), {})[to_float(r["round"])] = to_float(r.get("test_acc"))
    fig = new_figure(8.2, 4.6)
    ax = fig.add_subplot()
    all_rounds = sorted({x for s in series.values() for x in s})
    by_arch: dict[str, list[np.ndarray]] = {}
    for pid in sorted(series):
        xs = np.array(all_rounds)
        ys = np.array([series[pid].get(x, math.nan) for x in all_rounds])
        arch = archs.get(pid, "?")
        colour, marker = arch_style(arch, order)
        ax.plot(xs, ys, "-", marker=marker, ms=2.5, lw=0.9, alpha=0.55, color=colour)
        by_arch.setdefault(arch, []).append(ys)
    handles = []
    for arch in order + (["?"] if "?" in by_arch else []):
        if arch not in by_arch:
            continue
        colour, marker = arch_style(arch, order)
        with np.errstate(all="ignore"):
            stack = np.vstack(by_arch[arch])
            mean = np.array([np.nanmean(col) if np.isfinite(col).any() else math.nan for col in stack.T])
        ax.plot(all_rounds, mean, "--", marker=marker, ms=5, lw=2.2, color=colour)
        handles.append(Line2D([], [], color=colour, marker=marker, lw=2.2, ls="--",
                              label=f"{arch} ({len(by_arch[arch])})"))
    _round_axis(ax, all_rounds)
    _accuracy_axis(ax, [v for s in series.values() for v in s.values()])
    ax.set_title(f"Per-client test accuracy — {title}", fontsize=10)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title_fontsize=8,
              title="architecture\n(clients)\nthin: a client\ndashed: mean")
    return save_figure(fig, out_dir / "clients.png")


def _coefficient_order(n: int, archs: dict[int, str]) -> tuple[list[int], list[int]]:
    """Client order grouped by architecture (stable by partition id) and the group boundaries."""
    order_archs = arch_order(archs)
    rank = {a: k for k, a in enumerate(order_archs)}
    order = sorted(range(n), key=lambda i: (rank.get(archs.get(i), len(rank)), i))
    bounds = [k for k in range(1, n) if archs.get(order[k]) != archs.get(order[k - 1])]
    return order, bounds


def _heatmap(ax, matrix: np.ndarray, order: list[int], bounds: list[int], vmax: float):
    im = ax.imshow(matrix[np.ix_(order, order)], cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
    for b in bounds:
        ax.axhline(b - 0.5, color="white", lw=1.2)
        ax.axvline(b - 0.5, color="white", lw=1.2)
    return im


def plot_coefficients(run_dir: Path, out_dir: Path, title: str, config: dict, c: np.ndarray) -> Path:
    n = c.shape[1]
    archs = architectures_by_client(read_csv(run_dir / "clients.csv"), config)
    order, bounds = _coefficient_order(n, archs)
    classes = client_classes(run_dir) if (flatten(config).get("partition.scheme") == "type2") else {}
    labels = []
    for i in order:
        label = f"{i}:{archs.get(i, '?')}"
        if classes.get(i):
            label += " " + ",".join(name[:5] for name in classes[i])
        labels.append(label)
    final = c[-1]
    finite = final[np.isfinite(final)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    size = min(9.0, 4.5 + 0.2 * n)
    fig = new_figure(size + 1.2, size)
    ax = fig.add_subplot()
    im = _heatmap(ax, final, order, bounds, vmax)
    fontsize = 8 if n <= 12 else 6.5 if n <= 24 else 5
    if n <= 60:
        ax.set_xticks(range(n), labels, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(n), labels, fontsize=fontsize)
    ax.set_xlabel("j (whose predictions)")
    ax.set_ylabel("i (whose target)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="c_ij")
    ax.set_title(f"Knowledge coefficients c after round {c.shape[0]} (1/N = {1 / n:.3f})\n{title}", fontsize=9.5)
    return save_figure(fig, out_dir / "coefficients.png")


def row_entropy(c: np.ndarray) -> np.ndarray:
    """Entropy of each row of c per round divided by log N: 1 = uniform (FedMD-like), 0 = one source."""
    n = c.shape[-1]
    with np.errstate(all="ignore"):
        p = np.where(np.isfinite(c) & (c > 0), c, 0.0)
        h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1)
        h = np.where(np.isfinite(c).all(axis=-1), h, math.nan)
    return h / math.log(n) if n > 1 else np.zeros_like(h)


def plot_coefficient_rounds(run_dir: Path, out_dir: Path, title: str, config: dict, c: np.ndarray) -> Path:
    rounds, n = c.shape[0], c.shape[1]
    archs = architectures_by_client(read_csv(run_dir / "clients.csv"), config)
    order_archs = arch_order(archs)
    order, bounds = _coefficient_order(n, archs)
    picks = sorted({0, rounds // 3, (2 * rounds) // 3, rounds - 1}) if rounds > 1 else [0]
    fig = new_figure(9.0, 6.0)
    grid = fig.add_gridspec(2, len(picks), height_ratios=[1.15, 1.0])
    ax = fig.add_subplot(grid[0, :])
    h = row_entropy(c)
    xs = np.arange(1, rounds + 1)
    for i in range(n):
        colour, marker = arch_style(archs.get(i, "?"), order_archs)
        ax.plot(xs, h[:, i], "-", marker=marker, ms=3, lw=0.9, alpha=0.6, color=colour)
    with np.errstate(all="ignore"):
        mean = np.array([np.nanmean(r) if np.isfinite(r).any() else math.nan for r in h])
    ax.plot(xs, mean, "k-", lw=2.2, label="mean over clients")
    handles = [Line2D([], [], color=arch_style(a, order_archs)[0], marker=arch_style(a, order_archs)[1], label=a)
               for a in order_archs] + [Line2D([], [], color="k", lw=2.2, label="mean")]
    ax.legend(handles=handles, fontsize=7.5, loc="lower right", ncol=len(handles))
    _round_axis(ax, list(xs))
    finite = h[np.isfinite(h)]
    low = float(finite.min()) if finite.size else 0.0
    ax.set_ylim(max(0.0, min(low - 0.05, 0.9)), 1.02)
    ax.set_ylabel("row entropy / log N")
    ax.set_title(f"Concentration of c per row (1 = uniform) — {title}", fontsize=10)
    finite_c = c[np.isfinite(c)]
    vmax = float(finite_c.max()) if finite_c.size and finite_c.max() > 0 else 1.0
    im = None
    for k, r in enumerate(picks):
        sub = fig.add_subplot(grid[1, k])
        im = _heatmap(sub, c[r], order, bounds, vmax)
        sub.set_title(f"c after round {r + 1}", fontsize=8.5)
        sub.set_xticks([])
        sub.set_yticks([])
    if im is not None:
        fig.colorbar(im, ax=fig.axes[1:], shrink=0.9, pad=0.02, label="c_ij")
    return save_figure(fig, out_dir / "coefficients_rounds.png")


def _byte_scale(values) -> tuple[float, str]:
    finite = [v for v in values if math.isfinite(v)]
    top = max(finite) if finite else 0.0
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if top >= scale:
            return scale, unit
    return 1.0, "bytes"


def plot_bytes(run_dir: Path, out_dir: Path, title: str) -> Path | None:
    metrics = read_metrics(run_dir)
    if not metrics or not any("bytes_up" in r or "bytes_down" in r for r in metrics):
        return None
    rounds = np.array([to_float(r["round"]) for r in metrics])
    up = np.array([to_float(r.get("bytes_up")) for r in metrics])
    down = np.array([to_float(r.get("bytes_down")) for r in metrics])
    scale, unit = _byte_scale(np.concatenate([up, down]))
    fig = new_figure(7.0, 3.8)
    ax = fig.add_subplot()
    width = 0.4
    ax.bar(rounds - width / 2, np.nan_to_num(up / scale), width, color="#0072B2",
           label=f"received by the server (clients' uploads), total {human_bytes(np.nansum(up))}")
    ax.bar(rounds + width / 2, np.nan_to_num(down / scale), width, color="#E69F00",
           label=f"sent by the server (targets), total {human_bytes(np.nansum(down))}")
    _round_axis(ax, rounds)
    ax.set_ylabel(f"{unit} per round")
    ax.set_title(f"Communication per round — {title}", fontsize=10)
    ax.legend(fontsize=7.5, loc="upper left")
    ax.set_ylim(0, max(1e-9, float(np.nanmax(np.concatenate([up, down, [0.0]])) / scale)) * 1.3)
    return save_figure(fig, out_dir / "bytes.png")


def plot_partition(run_dir: Path, out_dir: Path, title: str) -> Path | None:
    """partition.png: every client's class counts as one stacked bar (classes in colour), the way Flower
    Datasets' plot_label_distributions draws a partitioning; None when the run has no class counts."""
    found = read_class_counts(run_dir)
    if found is None:
        return None
    names, counts = found
    n, k = counts.shape
    fig = new_figure(width=min(14.0, max(6.0, 0.35 * n + 3.0)))
    ax = fig.add_subplot(1, 1, 1)
    palette = [matplotlib.colormaps["tab10" if k <= 10 else "tab20"](i % 20) for i in range(k)]
    bottom = np.zeros(n)
    for j in range(k):
        ax.bar(np.arange(n), counts[:, j], bottom=bottom, color=palette[j], width=0.8, label=names[j])
        bottom += counts[:, j]
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("samples (train + val + test)")
    ax.set_xticks(np.arange(n) if n <= 40 else np.arange(0, n, max(1, n // 20)))
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_title(f"Label distribution per client — {title}", fontsize=10)
    ax.legend(title="class", fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 if k <= 20 else 2)
    return save_figure(fig, out_dir / "partition.png")


def write_run_figures(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw every figure the run's files allow into out_dir (default: run_dir); returns the PNGs written.
    Never raises on a run's content: a figure that cannot be drawn is logged and skipped."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    config = read_json(run_dir / "config.json")
    config = config if isinstance(config, dict) else {}
    summary = read_json(run_dir / "summary.json")
    summary = summary if isinstance(summary, dict) else {}
    title = run_title(run_dir, config, summary)
    c = read_coefficients(run_dir)
    jobs = [("accuracy", lambda: plot_accuracy(run_dir, out_dir, title)),
            ("clients", lambda: plot_clients(run_dir, out_dir, title, config))]
    if c is not None:
        jobs += [("coefficients", lambda: plot_coefficients(run_dir, out_dir, title, config, c)),
                 ("coefficients_rounds", lambda: plot_coefficient_rounds(run_dir, out_dir, title, config, c))]
    jobs.append(("bytes", lambda: plot_bytes(run_dir, out_dir, title)))
    jobs.append(("partition", lambda: plot_partition(run_dir, out_dir, title)))
    written = []
    for name, job in jobs:
        try:
            path = job()
        except Exception as error:  # a figure is never worth a crash
            log.warning("figure %s of %s not drawn: %s: %s", name, run_dir, type(error).__name__, error)
            continue
        if path is not None:
            written.append(path)
    return written
