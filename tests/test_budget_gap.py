"""bench/budget_gap.py: the preset's budget (the local arm) against the same arm with more epochs, on generated data."""

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedkt.aggregation import local_epochs
from fedkt.config import load_config
from fedkt.learner import Learner, round_seed
from fedkt.train import steps_per_epoch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "budget_gap.py"
SMOKE = ["experiment=smoke", "model.architectures=[lenet,alexnet]"]


def load_script():
    spec = importlib.util.spec_from_file_location("budget_gap", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_budget_gap_prints_a_row_per_client_and_architecture(tmp_path):
    env = dict(os.environ, FEDKT_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", "unused", "--set", *SMOKE, "--clients-per-arch",
                           "1", "--epochs-per-round", "3"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("$ python ") and "num_rounds 2" in lines[1]
    header = next(line for line in lines if line.startswith("| architecture"))
    for column in ("pid", "budget epochs", "budget val acc", "budget test acc", "reference epochs", "reference val acc",
                   "reference test acc", "val gap (points)", "test gap (points)"):
        assert f" {column} |" in header, column
    cfg = load_config(["experiment=smoke"])
    budget_epochs = cfg.client.warmup_epochs + sum(local_epochs(cfg, r) for r in range(1, cfg.num_rounds + 1))
    for arch in ("lenet", "alexnet"):
        rows = [line.split("|")[1:-1] for line in lines if line.startswith(f"| {arch} |")]
        assert len(rows) == 1, (arch, proc.stdout)
        assert int(rows[0][2]) == budget_epochs
        assert int(rows[0][5]) == cfg.client.warmup_epochs + 3 * cfg.num_rounds  # 3 epochs in every round
        budget_val, budget_test, _, reference_val, reference_test, val_gap, test_gap = map(float,
                                                                                           rows[0][3:10])
        assert val_gap == pytest.approx(reference_val - budget_val, abs=0.11)
        assert test_gap == pytest.approx(reference_test - budget_test, abs=0.11)
        assert any(line.startswith(f"| **{arch} (mean of 1)** |") for line in lines)
    assert any(line.startswith("| **all architectures (mean of 2)** |") for line in lines)
    assert lines[-1].startswith(("budget enough", "budget too small", "unresolved"))

    # another budget against those references: they are reused, not measured again; other settings are refused
    earlier = tmp_path / "earlier.txt"
    earlier.write_text(proc.stdout)
    # (seed=0 spelled out is the default the earlier output ran with: the same settings)
    again = subprocess.run([sys.executable, str(SCRIPT), "--data", "unused", "--set", *SMOKE, "client.max_local_epochs=3",
                            "seed=0", "--clients-per-arch", "1", "--epochs-per-round", "3", "--reference-from", str(earlier)],
                           capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    for arch in ("lenet", "alexnet"):
        (old,) = [line.split("|")[1:-1] for line in lines if line.startswith(f"| {arch} |")]
        (new,) = [line.split("|")[1:-1] for line in again.stdout.splitlines() if line.startswith(f"| {arch} |")]
        assert new[5:8] == old[5:8] and new[10].strip().endswith("/ reused")
        assert int(new[2]) == cfg.client.warmup_epochs + sum(  # the ramp 1 -> 3 over the two rounds
            local_epochs(load_config([*SMOKE, "client.max_local_epochs=3"]), r) for r in (1, 2))
    other = subprocess.run([sys.executable, str(SCRIPT), "--data", "unused", "--set", *SMOKE, "client.lr=0.05",
                            "--epochs-per-round", "3", "--reference-from", str(earlier)],
                           capture_output=True, text=True, timeout=120, env=env)
    assert other.returncode == 2 and "its references were made with other settings" in other.stderr
    assert "client.lr=0.02 there, 0.05 here" in other.stderr
    missing = subprocess.run([sys.executable, str(SCRIPT), "--data", "unused", "--set", *SMOKE, "--reference-from",
                              str(tmp_path / "absent.txt")], capture_output=True, text=True, timeout=120, env=env)
    assert missing.returncode == 2 and "absent.txt: No such file or directory" in missing.stderr


def test_budget_is_the_local_arm_and_the_reference_the_same_arm_with_more_epochs():
    script = load_script()
    cfg = load_config(["algorithm=local", *SMOKE, "client.max_local_epochs=6"])

    # budget: what the local arm's loop gives, written out step by step
    learner = Learner(cfg, 0)
    for r in range(1, cfg.num_rounds + 1):
        if r == 1:
            learner.warm_up(round_seed(cfg.seed, 0, 1))
        learner.train(local_epochs(cfg, r), round_seed(cfg.seed, 0, r))
        learner.policy.step(learner.validate()[1])
    budget = script.budget_result(cfg, 0)
    assert (budget["val_loss"], budget["val_acc"]) == learner.validate()
    assert (budget["test_loss"], budget["test_acc"]) == learner.test()

    # reference: the same loop with the given epochs in every round, the ramp off, nothing else changed
    reference_cfg = script.reference_config(cfg, 4)
    assert [local_epochs(reference_cfg, r) for r in range(1, cfg.num_rounds + 1)] == [4] * cfg.num_rounds
    assert reference_cfg.replace(client=cfg.client) == cfg
    assert dataclasses.replace(reference_cfg.client, local_epochs=1, max_local_epochs=6) == cfg.client
    assert script.budget_result(reference_cfg, 0)["epochs"] == cfg.client.warmup_epochs + 4 * cfg.num_rounds

    # client.min_steps raises the epochs of a round on a small shard: the count says so
    steps_cfg = load_config(["algorithm=local", *SMOKE, "client.min_steps=40"])
    per_epoch = steps_per_epoch(Learner(steps_cfg, 0).num_train, steps_cfg.client.batch_size)
    assert per_epoch < 40
    assert script.budget_result(steps_cfg, 0)["epochs"] == (steps_cfg.client.warmup_epochs
                                                            + steps_cfg.num_rounds * -(-40 // per_epoch))


def test_verdict_needs_the_interval_above_zero_to_call_a_budget_too_small():
    verdict = load_script().verdict
    assert verdict([1.0, 3.0, 2.0])[2] == "enough"  # mean 2.0: at the limit
    mean, half, said = verdict([3.0, 3.5, 2.5])
    assert (mean, said) == (3.0, "too small") and 0 < half < 3.0
    mean, half, said = verdict([-7.0, 18.0, 1.0])  # the spread of single clients seen on paper_cpu
    assert said == "unresolved" and mean - half < 0 < mean
    assert verdict([5.0])[2] == "unresolved"  # one client: no interval, no verdict beyond the mean


def test_a_reference_without_epochs_is_refused_with_the_option_named(tmp_path):
    env = dict(os.environ, FEDKT_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", "unused", "--set", *SMOKE, "--epochs-per-round", "0"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "--epochs-per-round" in proc.stderr, proc.stderr[-2000:]


def test_architectures_picks_which_to_measure_and_refuses_one_not_in_the_federation(tmp_path):
    script = load_script()
    cfg = load_config(["experiment=quick"])  # 5 each of lenet, alexnet, resnet18, shufflenetv2
    everyone = script.clients_by_architecture(cfg, 2)
    assert list(everyone) == ["lenet", "alexnet", "resnet18", "shufflenetv2"]
    assert script.clients_by_architecture(cfg, 2, ["shufflenetv2", "resnet18"]) == {
        "resnet18": everyone["resnet18"], "shufflenetv2": everyone["shufflenetv2"]}
    env = dict(os.environ, FEDKT_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", "unused", "--set", *SMOKE, "--architectures",
                           "lenet,resnet18"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "--architectures resnet18: not in this config's federation" in proc.stderr


def fake_output(path, arch_gaps, max_local_epochs=3, test_gaps=None):
    """An output of the script as it prints one: command, settings line, header, one row per client (validation
    gaps as given; test gaps the same unless given)."""
    lines = ["$ python bench/budget_gap.py --data d --set experiment=quick",
             f"2026-11-30 17:50 | 2 cores, load 3.1 | num_rounds 10, max_local_epochs {max_local_epochs}, partition "
             "type2 | reference: 10 epochs a round", "| architecture | pid | ... |", "|---|"]
    for pid, (arch, gap) in enumerate(arch_gaps):
        test_gap = gap if test_gaps is None else test_gaps[pid]
        lines.append(f"| {arch} | {pid} | 21 | 80.0 | 70.0 | 101 | {80 + gap:.1f} | {70 + test_gap:.1f} | "
                     f"{gap:+.1f} | {test_gap:+.1f} | 2.0 / 9.0 |")
    path.write_text("\n".join(lines + ["budget enough: ..."]) + "\n")
    return str(path)


def test_combine_pools_outputs_and_finds_a_shortfall_no_architecture_shows_alone(tmp_path):
    """Per architecture, five clients leave a 3-4 point gap unresolved; over all of them it is too small."""
    gaps = {"lenet": [5.5, 4.5, 5.5, -1.0, 0.0], "alexnet": [-1.0, 5.0, 2.0, 9.0, 0.0],
            "resnet18": [0.0, 10.5, 1.0, 15.0, 4.5]}
    files = [fake_output(tmp_path / f"{arch}.txt", [(arch, g) for g in values]) for arch, values in gaps.items()]
    proc = subprocess.run([sys.executable, str(SCRIPT), "--combine", *files], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.startswith("3 outputs, num_rounds 10, max_local_epochs 3")
    for arch in gaps:
        assert f"| **{arch} (mean of 5)** |" in out and "unresolved" in out.split(f"**{arch} (mean of 5)**")[1].split("\n")[0]
    pooled = next(line for line in out.splitlines() if line.startswith("| **all architectures (mean of 15)** |"))
    assert pooled.split("|")[9].strip().startswith("+4.0 [") and pooled.split("|")[9].strip().endswith("**too small**")
    assert out.rstrip().splitlines()[-1].startswith("budget too small") and "all architectures" in out.splitlines()[-1]
    other = fake_output(tmp_path / "other.txt", [("lenet", 1.0)], max_local_epochs=10)
    mixed = subprocess.run([sys.executable, str(SCRIPT), "--combine", files[0], other], capture_output=True,
                           text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    assert mixed.returncode == 2 and "made with other budgets or references" in mixed.stderr
    assert "max_local_epochs 10" in mixed.stderr


def test_the_verdict_reads_validation_gaps_and_old_test_only_outputs_are_refused(tmp_path):
    """A budget short on test but not on validation is enough: no choice is made on test data; the test gap is
    printed beside it."""
    val_gaps, test_gaps = [0.5, 1.0, 1.5, 0.0, 1.0], [5.0, 6.0, 4.0, 5.5, 4.5]
    path = fake_output(tmp_path / "lenet.txt", [("lenet", g) for g in val_gaps], test_gaps=test_gaps)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--combine", path], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("| **lenet (mean of 5)** |")]
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert cells[3:5] == ["80.0", "70.0"] and cells[6:8] == ["80.8", "75.0"]
    assert cells[8].startswith("+0.8 [") and cells[8].endswith("**enough**")
    assert cells[9].startswith("+5.0 [") and "enough" not in cells[9]
    assert proc.stdout.rstrip().endswith("budget enough: no mean validation gap exceeds 2 points")

    old = tmp_path / "old.txt"  # 8 cells a row: the test accuracy only, as printed before the validation columns
    old.write_text("$ python bench/budget_gap.py --data d --set experiment=quick\n"
                   "2026-11-30 17:50 | 2 cores, load 3.1 | num_rounds 10 | reference: 10 epochs a round\n"
                   "| lenet | 0 | 21 | 80.0 | 101 | 85.0 | +5.0 | 2.0 / 9.0 |\n")
    refused = subprocess.run([sys.executable, str(SCRIPT), "--combine", str(old)], capture_output=True, text=True,
                             timeout=120, env=env)
    assert refused.returncode == 2 and "written before the validation columns" in refused.stderr


def test_a_client_without_a_validation_image_is_refused_before_it_is_trained():
    cfg = load_config(["algorithm=local", *SMOKE, "data.samples_per_client=20"])
    pid = next(pid for pid in range(cfg.num_clients) if len(Learner(cfg, pid).data.y_val) == 0)
    with pytest.raises(SystemExit, match=f"client {pid} has no validation image .*the verdict reads validation"):
        load_script().budget_result(cfg, pid)
