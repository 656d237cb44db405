"""The benchmark scripts that drive the algorithm layer run (their figures are timings: nothing here times them)."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_round_profile_prints_every_step_for_every_architecture(tmp_path):
    env = dict(os.environ, FEDKT_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "profile_round.py"), "--data", "unused", "--set",
                           "experiment=smoke", "model.architectures=[lenet,alexnet]", "--reps", "2",
                           "--variant", "", "--variant", "model.channels_last=[lenet]"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| architecture"))
    for step in ("set-up", "warm-up (round 1 only)", "distillation", "training", "validation", "prediction", "state",
                 "test", "round 2 total"):
        assert f" {step} |" in header, step
    assert any(line.startswith("| lenet (2) |") for line in lines)
    assert any(line.startswith("| alexnet (2) |") for line in lines)
    share = next(line for line in lines if line.startswith("| share of a round"))
    assert share.rstrip().endswith("| 100 % |")
    assert any(line.startswith("server step (KT-pFL, 4 clients):") for line in lines)
    bare = next(line for line in lines if line.startswith("bare eager PyTorch, the same passes"))
    assert "lenet " in bare and "alexnet " in bare
    assert [line for line in lines if line.startswith("variant: ")] == ["variant: (defaults)",
                                                                          "variant: model.channels_last=[lenet]"]
    assert len([line for line in lines if re.search(
        r"^round 2, all clients: fedkt [\d.]+ s, bare passes [\d.]+ s: ratio [\d.]+x$", line)]) == 2
    assert re.search(r"^model.channels_last=\[lenet\] against \(defaults\): [\d.]+x$", lines[-1])


def test_same_figures_ignores_wall_time_and_names_what_moved(tmp_path):
    import numpy as np

    def run(name, loss="2.25", seconds="1.0", c=0.5, steps="", cached=0):
        folder = tmp_path / name
        folder.mkdir()
        extra = (",coef_steps", f",{steps}") if steps else ("", "")
        (folder / "metrics.csv").write_text(f"round,mean_test_acc,mean_test_loss,seconds{extra[0]}\n"
                                            f"1,0.5,{loss},{seconds}{extra[1]}\n")
        (folder / "clients.csv").write_text(f"round,partition_id,test_acc,fit_seconds,fit_pretrain_cached\n"
                                            f"1,0,0.5,{seconds},{cached}\n")
        np.save(folder / "coefficients.npy", np.full((1, 2, 2), c))
        return str(folder)

    script = [sys.executable, str(REPO / "scripts" / "same_figures.py")]
    same = subprocess.run([*script, run("a"), run("b", seconds="9.9", cached=1)], capture_output=True, text=True,
                          timeout=60)
    assert same.returncode == 0 and "SAME" in same.stdout, same.stdout + same.stderr
    newer = subprocess.run([*script, run("e"), run("f", steps="20")], capture_output=True, text=True, timeout=60)
    assert newer.returncode == 0 and "not compared: coef_steps" in newer.stdout, newer.stdout + newer.stderr
    moved = subprocess.run([*script, run("c"), run("d", loss="2.2500001", c=0.6)], capture_output=True, text=True,
                           timeout=60)
    assert moved.returncode == 1
    assert "mean_test_loss (2.25 -> 2.2500001)" in moved.stdout and "coefficients.npy: differs" in moved.stdout


def test_coef_steps_replays_kept_rounds_at_each_tolerance(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    for r in (1, 2):
        logits = rng.normal(size=(5, 40, 4)) * 2
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        np.savez(tmp_path / f"round{r:03d}.npz", probs=probs.astype(np.float32), c=np.full((5, 5), 0.2),
                 present=np.ones(5, bool))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "coef_steps.py"), "--replay", str(tmp_path),
                           "--max-steps", "30", "--tol", "0", "0.01"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| 0")]
    plain, watched = ([float(x) for x in row] for row in rows)
    assert plain[:4] == [0, 20, 20, 20]  # tol 0: every step of algorithm.coef_steps
    assert watched[0] == 0.01 and watched[3] <= 20 and watched[2] >= 5  # at least PATIENCE steps, at most 20
    assert -1 < plain[4] <= 1 and -1 < watched[4] <= 1


def test_restore_bench_prints_a_row_per_architecture():
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_restore.py"), "--reps", "1"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and line.endswith("x |")]
    assert [row.split("|")[1].strip() for row in rows] == ["lenet", "alexnet", "resnet18", "shufflenetv2"]


def test_pretrain_variants_pairs_each_variant_with_the_first(tmp_path):
    """scripts/pretrain_variants.py: LeNet has no padded convolution, so skipping padding taps moves nothing (a
    difference of exactly zero), while another learning rate does move the pre-training."""
    env = dict(os.environ, FEDKT_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "pretrain_variants.py"), "--data", "unused",
                           "--set", "experiment=smoke", "client.warmup_public_epochs=1",
                           "--variant", "model.skip_padding_taps=false", "--variant", "model.skip_padding_taps=true",
                           "--variant", "client.lr=0.2", "--seeds", "0,1", "--clients", "0"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["seed 0 client 0", "seed 1 client 0"]
    assert lines[2] == ("model.skip_padding_taps=true − model.skip_padding_taps=false: mean +0.0 points over 2 "
                        "pre-trainings (min +0.0, max +0.0, sd 0.0)")
    assert lines[3].startswith("client.lr=0.2 − model.skip_padding_taps=false: mean ")
    assert lines[3] != lines[2].replace("model.skip_padding_taps=true", "client.lr=0.2")
