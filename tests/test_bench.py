"""The benchmark scripts that drive the algorithm layer run (their figures are timings: nothing here times them)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_round_profile_prints_every_step_for_every_architecture(tmp_path):
    env = dict(os.environ, FEDKT_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "profile_round.py"), "--data", "unused", "--set",
                           "experiment=smoke", "model.architectures=[lenet,alexnet]"],
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
