"""Failing and lying clients, kill-and-resume, and identical results from identical seeds, end to end
through the real Ray simulation (the `smoke` preset on generated data)."""

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

SMOKE = ["experiment=smoke", "num_rounds=4"]


def sim(tmp_path, name, *overrides, timeout=600):
    env = dict(os.environ, FEDKT_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "fedkt.sim", f"hydra.run.dir={tmp_path / name}", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def client_results(run_dir):
    """Per round and client: the figures that must repeat exactly (not timings)."""
    with open(run_dir / "clients.csv") as f:
        return [(r["round"], r["partition_id"], r["test_acc"], r["test_loss"], r.get("fit_val_acc"),
                 r.get("fit_distill_loss")) for r in csv.DictReader(f)]


def round_results(run_dir):
    rows = json.loads((run_dir / "metrics.json").read_text())
    return [(r["round"], r["mean_test_acc"], r["mean_test_loss"], r["fit_failures"], r["rejected"]) for r in rows]


def test_failing_and_lying_clients_are_counted_and_kept_out_of_c(tmp_path):
    proc = sim(tmp_path, "faults", "experiment=smoke", "num_rounds=3", "min_fit_fraction=0.25",
               "faults.inject='1:2:crash,2:2:nan,3:3:impersonate'")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "faults"
    rounds = json.loads((run / "metrics.json").read_text())
    assert [(r["fit_failures"], r["rejected"], r["fit_clients"]) for r in rounds] == [(0, 0, 4), (1, 1, 2), (0, 1, 3)]
    c = np.load(run / "coefficients.npy")
    for absent in (1, 2):  # round 2: the crashed and the NaN client's rows and columns did not move
        np.testing.assert_array_equal(c[1][absent], c[0][absent])
        np.testing.assert_array_equal(c[1][:, absent], c[0][:, absent])
    assert np.abs(c[1][0] - c[0][0]).max() > 0  # the others' did
    np.testing.assert_array_equal(c[2][3], c[1][3])  # round 3: the impersonator is out
    assert "rejected an upload claiming partition id 0" in proc.stdout + proc.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_too_few_clients_stops_with_a_clear_error_and_keeps_results(tmp_path):
    proc = sim(tmp_path, "fail", *SMOKE, "faults.inject='1:2:crash,2:2:crash,3:2:crash'")
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "only 1 of 4 clients answered" in out and "min_fit_fraction" in out
    summary = json.loads((tmp_path / "fail" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rounds_completed"] == 1
    assert "min_fit_fraction" in summary["error"]
    assert (tmp_path / "fail" / "checkpoint.npz").exists()


def test_same_seed_same_metrics_and_kill_resume_equals_straight_run(tmp_path):
    # a slow client in round 3 gives the test time to kill the run after round 2's checkpoint
    overrides = [*SMOKE, "faults.inject='0:3:slow'", "faults.slow_seconds=4"]
    # same seed, same figures: the killed run's first rounds come from another process than the straight
    # run's, and the resumed run must then equal the straight one row for row (a second straight run adds nothing)
    straight = sim(tmp_path, "straight", *overrides)
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    env = dict(os.environ, FEDKT_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "fedkt.sim", f"hydra.run.dir={killed_dir}", *overrides]
    with open(tmp_path / "killed.err", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            summary = killed_dir / "summary.json"
            if summary.exists() and json.loads(summary.read_text())["rounds_completed"] >= 2:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
        # the driver dies as from a crash in native code: it says where each thread was (faulthandler)
        os.kill(proc.pid, signal.SIGSEGV)
        proc.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the Ray processes it started (and the driver, if left)
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in (tmp_path / "killed.err").read_text()
    summary = json.loads((killed_dir / "summary.json").read_text())
    assert summary["status"] == "running" and 2 <= summary["rounds_completed"] < 4

    resumed = sim(tmp_path, "resume-log", f"resume={killed_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout + resumed.stderr
    assert json.loads((killed_dir / "summary.json").read_text())["status"] == "completed"
    assert client_results(killed_dir) == client_results(tmp_path / "straight")
    assert round_results(killed_dir) == round_results(tmp_path / "straight")
    np.testing.assert_array_equal(np.load(killed_dir / "coefficients.npy"),
                                  np.load(tmp_path / "straight" / "coefficients.npy"))


def test_client_refuses_a_target_meant_for_another_client(tmp_path, monkeypatch):
    import pytest
    from flwr.app import RecordDict
    from flwr.common import Context

    from fedkt.client_app import KnowledgeClient
    from fedkt.config import load_config

    monkeypatch.setenv("FEDKT_CACHE", str(tmp_path / "cache"))
    cfg = load_config(["experiment=smoke"], run_dir=str(tmp_path))
    context = Context(run_id=0, node_id=7, node_config={"partition-id": 1}, state=RecordDict(), run_config={})
    client = KnowledgeClient(cfg, context)
    target = np.full((64, 10), 0.1, dtype=np.float32)
    config = {"round": 2, "epochs": 1, "next_seed": 5, "target_seed": 4, "target_partition": 0}
    with pytest.raises(ValueError, match="sent the target of client 0"):
        client.fit([target], config)
    uploads, _, metrics = client.fit([target], dict(config, target_partition=1))
    assert metrics["partition_id"] == 1 and uploads[0].shape == (64, 10) and metrics["distill_loss"] >= 0


def test_resume_refuses_in_memory_client_state(tmp_path):
    import pytest

    from fedkt.config import ConfigError, load_config
    from fedkt.results import dump_json
    from fedkt.sim import resume

    dump_json(tmp_path / "config.json", load_config(["experiment=smoke", "client.state_store=context"],
                                                    run_dir=str(tmp_path)).to_dict())
    with pytest.raises(ConfigError, match="client.state_store=context"):
        resume(tmp_path)
    with pytest.raises(ConfigError, match="no config.json"):
        resume(tmp_path / "nowhere")


def test_resume_fills_settings_added_after_the_run_with_what_it_did(tmp_path, caplog):
    from fedkt.config import BEFORE_THE_KEY, base_defaults, flatten, load_config
    from fedkt.results import dump_json
    from fedkt.sim import load_run_config

    assert set(BEFORE_THE_KEY) <= set(flatten(base_defaults()))  # every entry names a real key
    cfg = load_config(["experiment=smoke", "algorithm.rho=0.3"], run_dir=str(tmp_path)).to_dict()
    for section, key in (("algorithm", "target_shift"), ("model", "channels_last"), ("algorithm", "coef_tol")):
        del cfg[section][key]  # as recorded by a version without the key
    dump_json(tmp_path / "config.json", cfg)
    with caplog.at_level("WARNING", logger="fedkt"):
        loaded = load_run_config(tmp_path)
    assert loaded.algorithm.target_shift == "none"
    # defaults that changed after the key came in: the run resumes doing what it did, not today's default
    assert loaded.channels_last == frozenset() and load_config([]).channels_last == {"lenet", "shufflenetv2"}
    assert loaded.algorithm.coef_tol == 0.0 and load_config([]).algorithm.coef_tol > 0
    assert loaded.algorithm.rho == 0.3 and loaded.num_rounds == 2  # the run's own values stay
    assert "algorithm.target_shift=none" in caplog.text and "model.channels_last=" in caplog.text


def test_checkpoint_holds_no_pickle_and_an_old_pickle_is_refused_unloaded(tmp_path):
    import pickle

    import pytest

    from fedkt.config import ConfigError, load_config
    from fedkt.results import RunRecorder, dump_json, read_checkpoint
    from fedkt.sim import resume
    from fedkt.strategy import KnowledgeTransfer

    cfg = load_config(["experiment=smoke"], run_dir=str(tmp_path))
    strategy = KnowledgeTransfer(cfg, num_classes=10)
    strategy.coefficients.c = np.random.default_rng(0).dirichlet(np.ones(4), size=4)
    strategy.server.targets = {2: (1, np.full((64, 10), 0.1, dtype=np.float32)), 0: (3, np.eye(64, 10, dtype=np.float32))}
    strategy.history = [{"round": 1, "mean_test_acc": 0.25, "mean_val_acc": float("nan"), "missing_clients": "1"}]
    strategy.client_rows = [{"round": 1, "partition_id": 0, "architecture": "lenet", "test_acc": 0.5}]
    recorder = RunRecorder(tmp_path, cfg)
    recorder.coefficients = [strategy.coefficients.c.copy()]
    recorder.save_checkpoint(strategy.state_dict())
    with np.load(tmp_path / "checkpoint.npz", allow_pickle=False) as npz:  # no object arrays inside
        assert "__state__" in npz.files
    checkpoint = read_checkpoint(tmp_path)
    restored = KnowledgeTransfer(cfg, num_classes=10)
    restored.load_state_dict(RunRecorder(tmp_path, cfg).restore(checkpoint))
    np.testing.assert_array_equal(restored.coefficients.c, strategy.coefficients.c)
    assert sorted(restored.targets) == [0, 2]
    for pid, (rnd, target) in strategy.targets.items():
        assert restored.targets[pid][0] == rnd
        np.testing.assert_array_equal(restored.targets[pid][1], target)
    assert restored.history[0]["round"] == 1 and np.isnan(restored.history[0]["mean_val_acc"])
    assert restored.client_rows == strategy.client_rows and restored.round_offset == 1

    old = tmp_path / "old"
    old.mkdir()
    dump_json(old / "config.json", cfg.replace(run_dir=str(old)).to_dict())
    marker = tmp_path / "code-ran"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (old / "checkpoint.pkl").write_bytes(pickle.dumps({"server": Exploit()}))
    with pytest.raises(ConfigError, match="pickle written by an older fedkt"):
        resume(old)
    assert not marker.exists()


def test_a_crashed_simulation_runtime_ends_the_process_with_the_reason(tmp_path):
    """When Flower's simulation runtime dies (Ray could not start on a loaded machine: 'The current node timed out
    during startup'), a worker thread it leaves behind used to keep the process alive forever at exit."""
    script = tmp_path / "crash.py"
    script.write_text(
        "import concurrent.futures, threading, sys\n"
        "import fedkt.sim\n"
        "def crashed_runtime(**kwargs):\n"
        "    pool = concurrent.futures.ThreadPoolExecutor(1)\n"
        "    pool.submit(threading.Event().wait)  # a thread nobody will ever release, as Flower's ServerApp's\n"
        "    raise RuntimeError('Simulation Runtime crashed.')\n"
        "fedkt.sim.run_simulation = crashed_runtime\n"
        f"sys.argv = ['fedkt.sim', 'experiment=smoke', 'hydra.run.dir={tmp_path / 'run'}']\n"
        "fedkt.sim.main()\n")
    env = dict(os.environ, FEDKT_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "the simulation stopped: RuntimeError: Simulation Runtime crashed." in proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "Simulation Runtime crashed" in summary["error"]
