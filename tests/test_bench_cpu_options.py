"""bench/bench_cpu_options.py runs and prints its tables (its figures are timings: nothing here checks them)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_cpu_options_bench_prints_every_table_with_a_lenet_row():
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_cpu_options.py"), "--archs", "lenet",
                           "--reps", "1", "--steps", "1", "--distill-steps", "1", "--samples", "64"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "cores" in lines[0] and "load average" in lines[0]
    assert lines[1].startswith("bfloat16 units: ")
    for title in ("### training step (batch 32): memory format, bf16 autocast, and the augmentation's cost",
                  "### distillation step (batch 256): memory format, bf16 autocast",
                  "### prediction (64 samples)", "### verdict (faster than the default by more than 5 %)"):
        assert title in lines, title
    variants = "| channels_last | bf16 | bf16 + channels_last | skip padding taps | skip padding taps + bf16 |"
    assert f"| arch | default ms/step {variants} with augmentation |" in lines
    assert f"| arch | default ms/step {variants}" in lines
    assert ("| arch | no_grad s (batch 512) | inference_mode | faster mode | batch 128 | batch 512 | batch 2048 |"
            in lines)
    lenet_rows = [line for line in lines if line.startswith("| lenet |")]
    assert len(lenet_rows) == 3  # training, distillation, prediction
    assert all(line.rstrip().endswith("x |") for line in lenet_rows)
    assert any(line.startswith("- lenet: ") for line in lines)
    assert "torch.compile" not in proc.stdout  # only with --compile
