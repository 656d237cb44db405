"""fedkt.plots and fedkt.report on fabricated run directories, written by the real RunRecorder."""

import functools
import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from fedkt.config import base_defaults, build_config
from fedkt.partition import make_partition
from fedkt.plots import architectures_by_client, client_classes, row_entropy, write_run_figures
from fedkt.report import ALGORITHM_ORDER, ReportCallback, _gain_style, find_runs, main, write_report
from fedkt.results import RunRecorder, dump_json

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ARCHS = ["lenet", "alexnet", "resnet18", "shufflenetv2"]
CLASS_NAMES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_config(run_dir, algorithm, partition, seed, num_rounds, num_clients=4, norm="none"):
    return {"seed": seed, "num_rounds": num_rounds, "num_clients": num_clients,
            "data": {"name": "synthetic", "root": "data", "public_size": 50, "samples_per_client": 0},
            "partition": {"scheme": partition, "alpha": 0.5, "classes_per_client": 2},
            "model": {"architectures": ",".join(ARCHS), "norm": norm, "stem": "cifar"},
            "algorithm": {"name": algorithm, "rho": 0.7},
            "client": {"lr": 0.02, "lr_policy": "constant", "device": "cpu", "num_cpus": 1},
            "run_dir": str(run_dir)}


@functools.lru_cache(maxsize=None)
def recorder_config(algorithm, partition, seed, num_rounds, num_clients):
    """What RunRecorder needs of the run (config.json itself is the short, old-style dict above); from
    conf/config.yaml without Hydra, which may be running already (the multirun test's app calls fake_run)."""
    values = base_defaults()
    values.update(seed=seed, num_rounds=num_rounds, num_clients=num_clients)
    values["algorithm"]["name"], values["partition"]["scheme"] = algorithm, partition
    values["model"]["architectures"] = "lenet"
    return build_config(values)


def fake_run(run_dir, algorithm="ktpfl", partition="type1", seed=0, history=(0.2, 0.3, 0.4), num_rounds=None,
             status="completed", error="", num_clients=4, norm="none", nan_round=None, extra=None, val_history=None,
             shares=None):
    """A run directory as fedkt.sim leaves it: config, partition, then RunRecorder's files round by round."""
    run_dir = Path(run_dir)
    num_rounds = num_rounds or len(history)
    cfg = make_config(run_dir, algorithm, partition, seed, num_rounds, num_clients, norm)
    for section, values in (extra or {}).items():  # keys added to the config since older runs
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    run_dir.mkdir(parents=True, exist_ok=True)
    labels = np.repeat(np.arange(10), 30)
    part = make_partition(labels, num_clients, scheme=partition, seed=seed, public_size=50)
    (run_dir / "partition.txt").write_text(part.summary(labels, CLASS_NAMES))
    part.to_json(run_dir / "partition.json")
    dump_json(run_dir / "config.json", cfg)
    rng = np.random.default_rng(seed)
    recorder = RunRecorder(run_dir, recorder_config(algorithm, partition, seed, num_rounds, num_clients))
    for k, mean in enumerate(history, start=1):
        accs = np.clip(mean + rng.normal(0, 0.05, num_clients), 0, 1)
        accs += mean - accs.mean()
        if nan_round == k:
            accs[0] = math.nan
        with warnings.catch_warnings():  # a NaN round: all-NaN statistics are what we want
            warnings.simplefilter("ignore", RuntimeWarning)
            spread = [float(f(accs)) for f in (np.nanstd, np.nanmin, np.nanmax)]
        record = {"round": k, "mean_test_acc": mean, "std_test_acc": spread[0],
                  "min_test_acc": spread[1], "max_test_acc": spread[2],
                  "mean_test_loss": 2.0 - mean, "eval_clients": num_clients, "fit_clients": num_clients,
                  "fit_failures": 0, "eval_failures": 0, "rejected": 0, "bytes_up": 4000 * num_clients,
                  "bytes_down": 0 if k == 1 or algorithm == "local" else 4000 * num_clients, "seconds": 1.5}
        if val_history is not None:
            record["mean_val_acc"] = val_history[k - 1]
        rows = []
        for pid in range(num_clients):
            row = {"round": k, "partition_id": pid, "architecture": ARCHS[pid % len(ARCHS)],
                   "test_acc": float(accs[pid]), "test_loss": 1.0, "fit_train_acc": 0.5, "fit_val_acc": 0.4,
                   "fit_lr": 0.02, "fit_seconds": 0.1, "fit_bytes_sent": 4000}
            if k > 1:
                row["fit_distill_loss"] = 0.3
            if shares is not None:
                row["test_majority_share"] = shares[pid]
            rows.append(row)
        c = None
        if algorithm == "ktpfl":
            c = rng.random((num_clients, num_clients)) + np.eye(num_clients) * k
            c /= c.sum(axis=1, keepdims=True)
            if nan_round == k:
                c[1, :] = math.nan
        recorder(record, rows, c)
    recorder.finish(status, error)
    return run_dir


HISTORIES = {  # (algorithm, partition, seed) -> mean test accuracy per round
    (a, p, s): tuple(np.round(0.1 + 0.05 * r + 0.03 * i + 0.11 * j + 0.02 * s + 0.013 * s * r, 6) for r in range(4))
    for i, a in enumerate(["ktpfl", "local"]) for j, p in enumerate(["type1", "type2"]) for s in (0, 1)
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """2 algorithms x 2 partitions x 2 seeds, plus a fedmd run that failed after 2 of 4 rounds."""
    root = tmp_path_factory.mktemp("sweep")
    n = 0
    for (algorithm, partition, seed), history in HISTORIES.items():
        fake_run(root / f"{n}_{algorithm}_{partition}_s{seed}", algorithm, partition, seed, history)
        n += 1
    fake_run(root / f"{n}_fedmd_type1_s0", "fedmd", "type1", 0, history=(0.15, 0.2), num_rounds=4,
             status="failed", error="RuntimeError: client 3 ran out of memory")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def assert_png(path):
    path = Path(path)
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert width > 100 and height > 100
    assert len(data) < 400_000  # small files


def test_finds_every_run(sweep):
    runs = find_runs([sweep])
    assert len(runs) == 9
    assert runs[-1].name == "8_fedmd_type1_s0"  # natural order: 8 after 7, not after 0


def test_report_numbers(sweep, tmp_path):
    report = write_report([sweep], tmp_path / "out")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    md = report.markdown.read_text()
    assert data["setting_keys"] == []  # only seeds, algorithms, partitions and run_dir differ
    # run paths relative to the report, like its figures: a committed report names no machine's directories
    assert all(not Path(r["path"]).is_absolute() and (tmp_path / "out" / r["path"] / "summary.json").exists()
               for r in data["runs"])
    groups = {(g["algorithm"], g["partition"]): g for g in data["groups"]}
    assert set(groups) == {(a, p) for a, p, _ in HISTORIES}  # the failed fedmd run makes no group
    for (algorithm, partition), g in groups.items():
        finals = np.array([HISTORIES[(algorithm, partition, s)][-1] for s in (0, 1)])
        assert g["n"] == 2 and g["seeds"] == [0, 1]
        assert g["final_mean"] == pytest.approx(finals.mean(), abs=1e-12)
        assert g["final_std"] == pytest.approx(finals.std(ddof=1), abs=1e-12)
        assert g["final_std"] > 0
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {partition} | {algorithm} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == "2"
        assert cells[3] == f"{finals.mean():.4f}" and cells[4] == f"{finals.std(ddof=1):.4f}"
    for g in data["groups"]:  # per architecture: each client's final accuracy, through model.architectures
        summaries = [json.loads((sweep / run / "summary.json").read_text()) for run in g["runs"]]
        assert list(g["architecture_means"]) == ARCHS
        for pid, arch in enumerate(ARCHS):
            expected = np.mean([s["final_client_test_acc"][str(pid)] for s in summaries])
            assert g["architecture_means"][arch] == pytest.approx(expected, abs=1e-12)
    per_arch = md.split("### Per architecture")[1].split("##")[0]
    assert "| partition | algorithm | n | lenet | alexnet | resnet18 | shufflenetv2 |" in per_arch
    assert len([ln for ln in per_arch.splitlines() if ln.startswith("| type")]) == len(groups)
    failed = [r for r in data["runs"] if r["status"] == "failed"]
    assert len(failed) == 1 and not failed[0]["included"] and failed[0]["rounds_completed"] == 2
    assert "8_fedmd_type1_s0" in md and "**failed**" in md and "ran out of memory" in md
    runs_rows = [ln for ln in md.split("## Runs\n")[1].splitlines() if ln.startswith("| `")]
    assert len(runs_rows) == 9  # every run in the runs table, the failed one with its status
    assert any("8_fedmd_type1_s0" in ln and "| failed | 2/4 |" in ln for ln in runs_rows)


def test_report_figures_and_cli(sweep, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main([str(sweep), "--out", str(out), "--run-figures"]) == 0
    printed = capsys.readouterr().out
    assert "report.md" in printed and "8_fedmd_type1_s0 (failed)" in printed
    for name in ("curves_type1.png", "curves_type2.png"):
        assert_png(out / name)
        assert f"]({name})" in (out / "report.md").read_text()
    assert len(list(out.glob("curves_*.png"))) == 2
    ktpfl = out / "runs" / "0_ktpfl_type1_s0"
    for name in ("accuracy.png", "clients.png", "coefficients.png", "coefficients_rounds.png", "bytes.png"):
        assert_png(ktpfl / name)
    assert not (out / "runs" / "4_local_type1_s0" / "coefficients.png").exists()
    assert_png(out / "runs" / "8_fedmd_type1_s0" / "accuracy.png")  # the crashed run's partial figures
    assert not list(sweep.rglob("*.png"))  # the run directories stay untouched


def test_report_default_out_is_first_path(sweep, tmp_path):
    a = fake_run(tmp_path / "a", "ktpfl", "type1", 0, history=(0.3,))
    b = fake_run(tmp_path / "b", "ktpfl", "type1", 1, history=(0.5,))
    report = write_report([a, b])
    assert report.markdown == a / "report.md"
    (group,) = report.groups
    assert group.n == 2 and group.mean == pytest.approx(0.4)
    assert group.std == pytest.approx(np.std([0.3, 0.5], ddof=1))


def test_one_seed_shows_dash_and_settings_split_groups(tmp_path):
    fake_run(tmp_path / "s/0", "ktpfl", "type1", 0, history=(0.3, 0.35), norm="none")
    fake_run(tmp_path / "s/1", "ktpfl", "type1", 0, history=(0.3, 0.45), norm="batch")
    fake_run(tmp_path / "s/2", "ktpfl", "type1", 1, history=(0.3, 0.55), norm="batch",
             extra={"faults": {"fail_prob": 0.0}, "resume": ""})  # keys the other runs' code did not have yet
    report = write_report([tmp_path / "s"])
    assert report.setting_keys == ["model.norm"]  # run_dir, seed and the new keys differ too, but do not count
    by_setting = {g.setting: g for g in report.groups}
    assert set(by_setting) == {"model.norm=none", "model.norm=batch"}
    assert by_setting["model.norm=none"].std is None
    md = report.markdown.read_text()
    line = next(ln for ln in md.splitlines() if "| model.norm=none |" in ln and ln.startswith("| type1"))
    assert "| 1 | 0.3500 | — |" in line
    assert "| model.norm=batch | 2 | 0.5000 | 0.0707 |" in md
    fake_run(tmp_path / "s/3", "ktpfl", "type1", 2, history=(0.3, 0.6), norm="batch",
             extra={"faults": {"fail_prob": 0.3}})  # a new key that does vary splits groups
    report = write_report([tmp_path / "s"])
    assert report.setting_keys == ["faults.fail_prob", "model.norm"]
    assert {g.setting: g.n for g in report.groups} == {
        "faults.fail_prob=—, model.norm=none": 1, "faults.fail_prob=—, model.norm=batch": 1,
        "faults.fail_prob=0, model.norm=batch": 1, "faults.fail_prob=0.3, model.norm=batch": 1}


def test_a_number_written_as_int_by_one_version_and_float_by_another_is_one_setting(tmp_path):
    fake_run(tmp_path / "s/0", "ktpfl", "type1", 0, history=(0.3, 0.4), extra={"round_timeout": 0})
    fake_run(tmp_path / "s/1", "ktpfl", "type1", 1, history=(0.3, 0.5), extra={"round_timeout": 0.0})
    fake_run(tmp_path / "s/2", "local", "type1", 0, history=(0.3, 0.2), extra={"round_timeout": 0.0})
    fake_run(tmp_path / "s/3", "local", "type1", 1, history=(0.3, 0.3), extra={"round_timeout": 0})
    report = write_report([tmp_path / "s"])
    assert report.setting_keys == []
    assert {(g.algorithm, g.n) for g in report.groups} == {("ktpfl", 2), ("local", 2)}
    assert [p.seeds for p in report.paired] == [[0, 1]]  # paired across the two versions' runs
    fake_run(tmp_path / "s/4", "ktpfl", "type1", 2, history=(0.3, 0.5), extra={"round_timeout": 30.0})
    assert write_report([tmp_path / "s"]).setting_keys == ["round_timeout"]  # a real difference still splits


def test_report_without_runs_fails_cleanly(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no run directory" in capsys.readouterr().err


def test_run_figures_ktpfl_type2(tmp_path):
    run = fake_run(tmp_path / "k", "ktpfl", "type2", 3, history=(0.2, 0.3, 0.35, 0.4, 0.42))
    paths = write_run_figures(run)
    names = sorted(p.name for p in paths)
    assert names == sorted(["accuracy.png", "clients.png", "coefficients.png", "coefficients_rounds.png",
                            "bytes.png", "partition.png"])
    for p in paths:
        assert p.parent == run
        assert_png(p)
    counts = make_partition(np.repeat(np.arange(10), 30), 4, scheme="type2", seed=3, public_size=50).class_counts(
        np.repeat(np.arange(10), 30))
    classes = client_classes(run)  # read back from partition.txt for the heatmap's tick labels
    assert classes == {i: [CLASS_NAMES[k] for k in np.flatnonzero(row)] for i, row in enumerate(counts)}
    assert all(len(v) == 2 for v in classes.values())


def test_run_figures_local_has_no_coefficients(tmp_path):
    run = fake_run(tmp_path / "l", "local", "type1", 0)
    names = {p.name for p in write_run_figures(run)}
    assert names == {"accuracy.png", "clients.png", "bytes.png", "partition.png"}
    assert not (run / "coefficients.png").exists()


def test_run_figures_survive_odd_runs(tmp_path):
    one = fake_run(tmp_path / "one", "ktpfl", "type1", 0, history=(0.3,))  # a single round
    assert len(write_run_figures(one)) == 6
    nan = fake_run(tmp_path / "nan", "ktpfl", "type1", 0, history=(0.3, math.nan, 0.4), nan_round=2)
    for p in write_run_figures(nan):
        assert_png(p)
    assert len(list(nan.glob("*.png"))) == 6
    crashed = fake_run(tmp_path / "crash", "fedmd", "type2", 0, history=(0.3, 0.35), num_rounds=10,
                       status="failed", error="KeyboardInterrupt: ")
    (crashed / "clients.csv").write_text("round,partition_id,archi")  # cut mid-write
    names = {p.name for p in write_run_figures(crashed)}
    assert {"accuracy.png", "bytes.png"} <= names
    bare = tmp_path / "bare"  # started, nothing recorded yet
    bare.mkdir()
    (bare / "summary.json").write_text('{"status": "running"}')
    assert write_run_figures(bare) == []
    assert write_run_figures(tmp_path / "does-not-exist-yet") == []


def test_row_entropy():
    c = np.array([[[0.25] * 4, [1, 0, 0, 0], [0.5, 0.5, 0, 0], [np.nan] * 4]])
    h = row_entropy(c)[0]
    assert h[:3] == pytest.approx([1.0, 0.0, 0.5])
    assert math.isnan(h[3])


def test_callback_writes_report(sweep, tmp_path, caplog):
    from hydra.experimental.callback import Callback

    callback = ReportCallback(out=str(tmp_path / "cb"))
    assert isinstance(callback, Callback)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    with caplog.at_level(logging.INFO, logger="fedkt"):
        callback.on_multirun_end(config=config)
    assert (tmp_path / "cb" / "report.md").is_file()
    assert any("report of 9 run(s) (8 completed) written to" in r.getMessage() for r in caplog.records)


def test_callback_default_out_is_sweep_dir_and_never_raises(tmp_path, caplog):
    fake_run(tmp_path / "sw" / "0_ktpfl_type1_s0", history=(0.3, 0.4))
    ReportCallback().on_multirun_end(config=OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sw")}}}))
    assert (tmp_path / "sw" / "report.md").is_file()
    with caplog.at_level(logging.WARNING, logger="fedkt"):
        ReportCallback().on_multirun_end(config=OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "x")}}}))
        ReportCallback().on_multirun_end(config=OmegaConf.create({}))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum(w.startswith("report not written") for w in warnings) == 2


HYDRA_APP = '''
import json, sys
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig
sys.path.insert(0, {tests!r})
from test_report import fake_run

@hydra.main(config_path=None, config_name="cfg", version_base=None)
def main(cfg):
    fake_run(HydraConfig.get().runtime.output_dir, "ktpfl", "type1", int(cfg.seed), history=(0.2, 0.3 + cfg.seed / 10))

from hydra.core.config_store import ConfigStore
ConfigStore.instance().store(name="cfg", node={{"seed": 0, "hydra": {{"callbacks": {{"report": {{
    "_target_": "fedkt.report.ReportCallback"}}}}}}}})
main()
'''


def test_callback_runs_at_the_end_of_a_real_multirun(tmp_path):
    """The YAML `hydra.callbacks.report._target_: fedkt.report.ReportCallback` wires it into Hydra."""
    import subprocess
    import sys

    app = tmp_path / "app.py"
    app.write_text(HYDRA_APP.format(tests=str(Path(__file__).parent)))
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, str(app), "-m", "seed=0,1", f"hydra.sweep.dir={sweep}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((sweep / "report.json").read_text())
    (group,) = data["groups"]
    assert group["n"] == 2 and group["final_mean"] == pytest.approx(0.35)
    assert (sweep / "curves_type1.png").is_file()
    assert "written to" in proc.stdout + proc.stderr


def test_the_best_round_is_chosen_by_validation_never_by_test_accuracy(tmp_path):
    """Round 2 has the best test accuracy, round 3 the best validation accuracy: the summary and the report
    quote round 3's test accuracy, and nothing picked by test accuracy appears."""
    run = fake_run(tmp_path / "run", history=(0.2, 0.5, 0.4), val_history=(0.3, 0.35, 0.6))
    summary = json.loads((run / "summary.json").read_text())
    assert "best_mean_test_acc" not in summary
    assert summary["val_selected_round"] == 3 and summary["val_selected_mean_test_acc"] == pytest.approx(0.4)
    report = write_report([run], tmp_path / "report")
    text = report.markdown.read_text()
    assert "acc at best-val round" in text and "0.4000" in text and "0.5000" not in text
    group = json.loads((tmp_path / "report" / "report.json").read_text())["groups"][0]
    assert group["val_selected_mean"] == pytest.approx(0.4) and "best_mean" not in group


def test_t_quantiles():
    from fedkt.report import t975

    assert t975(1) == 12.706 and t975(4) == 2.776 and t975(30) == 2.042
    assert t975(40) == pytest.approx(2.021, abs=1e-3) and t975(120) == pytest.approx(1.980, abs=1e-3)


def test_paired_differences_match_seeds_and_give_a_t_interval(tmp_path):
    import statistics

    finals = {"ktpfl": {0: 0.50, 1: 0.52, 2: 0.55, 3: 0.9}, "local": {0: 0.45, 1: 0.50, 2: 0.49},
              "fedmd": {0: 0.45, 1: 0.47, 2: 0.50}}  # ktpfl's seed 3 has no partner: not paired
    for algorithm, by_seed in finals.items():
        for seed, final in by_seed.items():
            fake_run(tmp_path / f"{algorithm}_s{seed}", algorithm=algorithm, seed=seed, history=(0.3, final))
    report = write_report([tmp_path], tmp_path / "report")
    pairs = {(p.a, p.b): p for p in report.paired}
    assert set(pairs) == {("ktpfl", "fedmd"), ("ktpfl", "local"), ("fedmd", "local")}
    vs_local = pairs[("ktpfl", "local")]
    diffs = [0.05, 0.02, 0.06]
    assert vs_local.seeds == [0, 1, 2] and vs_local.diffs == pytest.approx(diffs)
    assert vs_local.mean == pytest.approx(statistics.mean(diffs))
    assert vs_local.half_width == pytest.approx(4.303 * statistics.stdev(diffs) / 3 ** 0.5)
    assert vs_local.verdict == "level"  # the interval [-0.84, +9.50] points holds zero
    assert pairs[("ktpfl", "fedmd")].verdict == "ktpfl ahead"  # +5 points on every seed
    text = report.markdown.read_text()
    assert "### Paired differences" in text and "| ktpfl − local | 3 | +4.33 | [-0.84, +9.50] | level |" in text
    saved = json.loads((tmp_path / "report" / "report.json").read_text())["paired"]
    assert {(p["a"], p["b"], p["verdict"]) for p in saved} >= {("ktpfl", "local", "level")}
    # +5 points on every seed: ahead by the t interval, which has zero width, and flagged as such
    assert "| ktpfl − fedmd | 3 | +5.00 | [+5.00, +5.00] | ktpfl ahead * |" in text
    assert "The same difference on every seed" in text
    assert {(p["a"], p["b"]): p["same_on_every_seed"] for p in saved} == {
        ("ktpfl", "fedmd"): True, ("ktpfl", "local"): False, ("fedmd", "local"): False}
    # per architecture: client i is ARCHS[i] here (4 clients), so a difference is that client's
    per_arch = {(p.architecture, p.a, p.b): p for p in report.paired_architectures}
    assert {arch for arch, _, _ in per_arch} == set(ARCHS)

    def client_final(algorithm, seed, pid):
        return json.loads((tmp_path / f"{algorithm}_s{seed}" / "summary.json").read_text())[
            "final_client_test_acc"][str(pid)]

    for pid, arch in enumerate(ARCHS):
        pair = per_arch[(arch, "ktpfl", "local")]
        assert pair.seeds == [0, 1, 2]
        assert pair.diffs == pytest.approx([client_final("ktpfl", s, pid) - client_final("local", s, pid)
                                            for s in (0, 1, 2)])
        # fedmd and local draw the same client spread on a seed: each client's difference is the mean's
        assert per_arch[(arch, "fedmd", "local")].diffs == pytest.approx([0.0, -0.03, 0.01], abs=1e-9)
    assert "### Paired differences per architecture" in text
    assert "| resnet18 | fedmd − local | 3 | -0.67 | [-5.84, +4.50] | level |" in text
    saved = json.loads((tmp_path / "report" / "report.json").read_text())["paired_by_architecture"]
    assert {(p["architecture"], p["a"], p["b"]) for p in saved} == set(per_arch)


def test_sweep_figure_against_any_swept_key(tmp_path):
    for size in (60, 300, 800):
        for algorithm, gain in (("ktpfl", 0.03), ("local", 0.0)):
            for seed in (0, 1):
                final = 0.3 + size / 2000 + gain + 0.01 * seed
                fake_run(tmp_path / "runs" / f"{algorithm}_{size}_s{seed}", algorithm=algorithm, seed=seed,
                         history=(0.2, final), extra={"data": {"samples_per_client": size}})
    report = write_report([tmp_path / "runs"], tmp_path / "report", x_key="data.samples_per_client")
    sweep = tmp_path / "report" / "sweep_type1.png"
    assert sweep in report.figures and sweep.read_bytes().startswith(PNG_SIGNATURE)
    assert "sweep_type1.png" in report.markdown.read_text()
    assert sorted(p.setting for p in report.paired) == [f"data.samples_per_client={s}" for s in (300, 60, 800)]
    assert all(p.mean == pytest.approx(0.03) and p.verdict == "ktpfl ahead" for p in report.paired)
    with pytest.raises(ValueError, match="no run's config has that key"):
        write_report([tmp_path / "runs"], tmp_path / "report", x_key="data.no_such_key")


def test_local_runs_count_in_every_alignment_size_they_do_not_depend_on(tmp_path):
    """The local arm exchanges nothing: a local run at one algorithm.align_size is paired with KT-pFL at another,
    unless that setting has its own local run of the seed; never with itself between the key's values, nor across
    a key that does touch it (model.norm)."""
    finals = {("local", 500, 0): 0.40, ("local", 500, 1): 0.42, ("local", 500, 2): 0.44,
              ("local", 5000, 2): 0.45,  # its own run at 5000 for seed 2: used there, not the 500 one
              ("ktpfl", 500, 0): 0.41, ("ktpfl", 500, 1): 0.44, ("ktpfl", 500, 2): 0.46,
              ("ktpfl", 5000, 0): 0.45, ("ktpfl", 5000, 1): 0.47, ("ktpfl", 5000, 2): 0.49,
              ("ktpfl", 1000, 0): 0.43}  # no local run at 1000: a local group of borrowed runs only
    for (algorithm, size, seed), final in finals.items():
        fake_run(tmp_path / "runs" / f"{algorithm}_{size}_s{seed}", algorithm=algorithm, seed=seed,
                 history=(0.3, final), extra={"algorithm": {"align_size": size}})
    fake_run(tmp_path / "runs" / "ktpfl_bn_s0", algorithm="ktpfl", seed=0, history=(0.3, 0.6), norm="batch",
             extra={"algorithm": {"align_size": 5000}})
    report = write_report([tmp_path / "runs"], tmp_path / "report", pair_key="algorithm.align_size",
                          x_key="algorithm.align_size")
    assert tmp_path / "report" / "sweep_type1.png" in report.figures
    vs_local = {p.setting: p for p in report.paired if (p.a, p.b) == ("ktpfl", "local")}
    big = "algorithm.align_size=5000, model.norm=none"
    assert set(vs_local) == {"algorithm.align_size=500, model.norm=none", big,  # none for model.norm=batch
                             "algorithm.align_size=1000, model.norm=none"}
    local_1000 = next(g for g in report.groups
                      if g.algorithm == "local" and g.setting.startswith("algorithm.align_size=1000"))
    assert local_1000.setting_value("algorithm.align_size") == 1000  # where the sweep figure draws it
    assert [r.seed for r in local_1000.runs] == [0, 1, 2] and vs_local[local_1000.setting].seeds == [0]
    assert local_1000.borrowed[0] == local_1000.borrowed[1] == "algorithm.align_size=500, model.norm=none"
    assert vs_local[big].seeds == [0, 1, 2]
    assert vs_local[big].diffs == pytest.approx([0.05, 0.05, 0.04])  # seeds 0, 1 against 500's local, 2 its own
    local_big = next(g for g in report.groups if g.algorithm == "local" and g.setting == big)
    assert local_big.borrowed == {0: "algorithm.align_size=500, model.norm=none",
                                  1: "algorithm.align_size=500, model.norm=none"}
    between = {(p.setting, p.a, p.b): p for p in report.paired_settings}
    assert ("local, model.norm=none", "algorithm.align_size=500", "algorithm.align_size=5000") in between
    assert between[("local, model.norm=none", "algorithm.align_size=500", "algorithm.align_size=5000")].seeds == [2]
    ktpfl_between = between[("ktpfl, model.norm=none", "algorithm.align_size=500", "algorithm.align_size=5000")]
    assert ktpfl_between.seeds == [0, 1, 2]
    text = report.markdown.read_text()
    assert f"- type1, local [{big}]: seed 0 from [algorithm.align_size=500, model.norm=none]" in text
    saved = json.loads((tmp_path / "report" / "report.json").read_text())["groups"]
    assert next(g for g in saved if g["algorithm"] == "local" and g["setting"] == big)["borrowed"] == {
        "0": "algorithm.align_size=500, model.norm=none", "1": "algorithm.align_size=500, model.norm=none"}


def test_every_pair_of_algorithms_gets_its_own_line_in_the_gain_figure():
    """With four arms at one point, three differences used to share FedAvg's colour and dashes."""
    pairs = [(a, b) for i, a in enumerate(ALGORITHM_ORDER) for b in ALGORITHM_ORDER[i + 1:]]
    styles = [_gain_style(a, b) for a, b in pairs]
    assert len(set(styles)) == len(pairs) == 6
    assert {_gain_style(a, "local")[2] for a in ("ktpfl", "fedmd")} == {"-"}  # solid: against local


def test_figures_name_architectures_from_the_config_when_clients_csv_lacks_them():
    """config.json holds model.architectures as a list (Hydra): the names come out bare, in blocks, as the run
    used them (the copy of the rule that plots.py kept read the list's text and gave "'lenet'")."""
    config = {"model": {"architectures": ["lenet", "alexnet"]}, "num_clients": 4}
    assert architectures_by_client([], config) == {0: "lenet", 1: "lenet", 2: "alexnet", 3: "alexnet"}
    assert architectures_by_client([{"partition_id": "1", "architecture": "resnet18"}], config) == {1: "resnet18"}
    assert architectures_by_client([], {"model": {"architectures": "lenet,nosuchnet"}, "num_clients": 2}) == {}



def test_seed_by_seed_curves_show_what_the_mean_hides(tmp_path):
    fake_run(tmp_path / "one" / "ktpfl_s0", seed=0, history=(0.3, 0.4))
    assert not (write_report(tmp_path / "one").out_dir / "seeds_type1.png").exists()  # one seed: the mean says it
    for seed, history in ((0, (0.3, 0.5, 0.6)), (1, (0.3, 0.5, 0.2))):  # seed 1 collapses in round 3
        fake_run(tmp_path / "two" / f"ktpfl_s{seed}", seed=seed, history=history)
        fake_run(tmp_path / "two" / f"local_s{seed}", algorithm="local", seed=seed, history=(0.3, 0.35, 0.4))
    report = write_report(tmp_path / "two")
    figure = report.out_dir / "seeds_type1.png"
    assert figure in report.figures and figure.stat().st_size > 10_000
    assert "![seeds_type1](seeds_type1.png)" in report.markdown.read_text()


def test_clients_against_their_majority_share_per_architecture(tmp_path, caplog):
    """The 'Do the clients learn?' table: per architecture, the final accuracy against each client's floor (the
    share of its test split's commonest class), and the client-runs above it; the run warns of those at it."""
    shares = [0.1, 0.25, 0.9, 0.2]  # client 2's floor is above anything it reaches
    with caplog.at_level(logging.WARNING, logger="fedkt"):
        for seed in (0, 1):
            fake_run(tmp_path / f"s{seed}", "local", "type1", seed, history=(0.3, 0.4), shares=shares)
    assert "1 of 4 clients end no better than answering their test split's most common class (partition ids 2)" \
        in caplog.text
    report = write_report([tmp_path])
    summary = json.loads((tmp_path / "s0" / "summary.json").read_text())
    assert summary["final_client_test_majority_share"] == {str(pid): v for pid, v in enumerate(shares)}
    rows = json.loads((tmp_path / "report.json").read_text())["clients_against_majority_share"]
    assert [r["architecture"] for r in rows] == ARCHS
    finals = [json.loads((tmp_path / f"s{seed}" / "summary.json").read_text())["final_client_test_acc"]
              for seed in (0, 1)]
    for pid, row in enumerate(rows):  # one client an architecture, two seeds
        accs = [f[str(pid)] for f in finals]
        assert row["client_runs"] == 2 and row["majority_share_mean"] == pytest.approx(shares[pid])
        assert row["final_acc_mean"] == pytest.approx(np.mean(accs))
        assert row["above"] == sum(a > shares[pid] for a in accs)
    assert rows[2]["above"] == 0
    text = report.markdown.read_text()
    assert "### Do the clients learn?" in text and "| type1 | local | alexnet | 2 |" in text


def test_runs_recorded_without_majority_shares_say_how_to_get_them(tmp_path, caplog):
    fake_run(tmp_path / "old", "local", "type1", 0, history=(0.3, 0.4))
    report = write_report([tmp_path])
    assert "`--data ROOT` (the data set they ran on) computes them" in report.markdown.read_text()
    # fake_run's partition.json was not drawn from the data its config names: the rebuilt one is refused
    with caplog.at_level(logging.WARNING, logger="fedkt"):
        report = write_report([tmp_path], data_root="anywhere")
    assert report.runs[0].majority_shares == {}
    assert "is not the one in its partition.json" in caplog.text


def test_paired_differences_between_the_values_of_a_setting_key(tmp_path, capsys):
    """--pair KEY: one value of a setting minus another on the same seed, per algorithm, and per architecture."""
    finals = {("batch", "local"): (0.40, 0.44, 0.41), ("none", "local"): (0.38, 0.40, 0.40),
              ("batch", "ktpfl"): (0.45, 0.47, 0.46), ("none", "ktpfl"): (0.45, 0.45, 0.46)}
    for (norm, algorithm), by_seed in finals.items():
        for seed, final in enumerate(by_seed):
            fake_run(tmp_path / f"{norm}_{algorithm}_s{seed}", algorithm, seed=seed, history=(0.3, final), norm=norm)
    assert main([str(tmp_path), "--out", str(tmp_path / "r"), "--pair", "model.norm"]) == 0
    report = write_report([tmp_path], tmp_path / "r", pair_key="model.norm")
    pairs = {p.setting: p for p in report.paired_settings}
    assert set(pairs) == {"local", "ktpfl"}
    for algorithm, pair in pairs.items():
        assert (pair.a, pair.b, pair.seeds) == ("model.norm=batch", "model.norm=none", [0, 1, 2])
        assert pair.diffs == pytest.approx(np.subtract(finals[("batch", algorithm)], finals[("none", algorithm)]))
    assert {p.architecture for p in report.paired_settings_architectures} == set(ARCHS)
    assert "| type1 | local | — | model.norm=batch − model.norm=none | 3 | +2.33 |" in report.markdown.read_text()
    assert "model.norm=batch − model.norm=none" in capsys.readouterr().out
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["pair_key"] == "model.norm" and len(saved["paired_settings"]) == 2 + 2 * len(ARCHS)
    with pytest.raises(ValueError, match="--pair client.lr: not a key whose value differs"):
        write_report([tmp_path], tmp_path / "r", pair_key="client.lr")


def test_a_key_added_after_older_runs_counts_as_what_they_did(tmp_path):
    """Runs recorded before model.bfloat16 existed ran in float32: they are the model.bfloat16="" setting, paired
    against runs that set it, not pooled with them."""
    for seed in (0, 1):
        fake_run(tmp_path / f"old_s{seed}", "local", seed=seed, history=(0.3, 0.40 + seed / 100))
        fake_run(tmp_path / f"new_s{seed}", "local", seed=seed, history=(0.3, 0.42 + seed / 100),
                 extra={"model": {"bfloat16": "alexnet,lenet"}})
    report = write_report([tmp_path], pair_key="model.bfloat16")
    assert report.setting_keys == ["model.bfloat16"] and len(report.groups) == 2
    (pair,) = report.paired_settings
    assert (pair.a, pair.b) == ('model.bfloat16=""', "model.bfloat16=alexnet,lenet")
    assert pair.diffs == pytest.approx([-0.02, -0.02])
