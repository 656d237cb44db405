"""`python -m fedkt.sim` end to end through Flower's real Ray simulation engine, and its early errors."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fedkt.config import ConfigError, build_config, compose, load_config, recorded_config
from fedkt.deploy import PRESETS  # every preset in conf/experiment/ (tests/test_deploy.py checks the list)
from fedkt.report import write_report
from fedkt.task import load_federation
from test_tracking import read_events


def run_cli(tmp_path, *overrides, timeout=600):
    env = dict(os.environ, FEDKT_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "fedkt.sim", f"hydra.run.dir={tmp_path / 'run'}", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("algorithm", ["ktpfl", "fedmd", "local"])
def test_smoke_run_writes_metrics(tmp_path, algorithm):
    tensorboard = algorithm == "ktpfl"  # logging.tensorboard: off by default; on for one arm
    proc = run_cli(tmp_path, "experiment=smoke", f"algorithm={algorithm}", f"logging.tensorboard={tensorboard}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["rounds_completed"] == 2
    assert len(summary["mean_test_acc_history"]) == 2
    assert 0.0 <= summary["final_mean_test_acc"] <= 1.0
    assert set(summary["final_client_test_acc"]) == {"0", "1", "2", "3"}
    # each client's floor, as its own test split gives it, and fedkt.report --data rebuilds it for older runs
    config = json.loads((run / "config.json").read_text())
    data, partition = load_federation(recorded_config(config)[0])
    expected = partition.majority_shares(data.y_train.numpy())
    assert [summary["final_client_test_majority_share"][str(pid)] for pid in range(4)] == expected
    if algorithm == "local":
        older = tmp_path / "older" / "run"
        shutil.copytree(run, older, ignore=shutil.ignore_patterns("clients"))
        del summary["final_client_test_majority_share"]
        (older / "summary.json").write_text(json.dumps(summary))
        assert write_report([older]).runs[0].majority_shares == {}
        assert write_report([older], data_root="anywhere").runs[0].majority_shares == dict(enumerate(expected))
    metrics = (run / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 3 and "mean_test_acc" in metrics[0]
    clients = (run / "clients.csv").read_text().splitlines()
    assert len(clients) == 1 + 2 * 4
    assert "round 2/2 | mean test acc" in proc.stderr + proc.stdout  # the progress line
    for figure in ("accuracy.png", "clients.png", "bytes.png", "partition.png"):
        assert (run / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "coefficients.png").exists() == (algorithm == "ktpfl")
    if algorithm == "ktpfl":
        c = np.load(run / "coefficients.npy")
        assert c.shape == (2, 4, 4)
        np.testing.assert_allclose(c.sum(axis=2), 1.0, atol=1e-5)
        assert np.abs(c[-1] - 0.25).max() > 1e-3  # c moved from 1/N
        rows = json.loads((run / "metrics.json").read_text())
        assert rows[1]["bytes_down"] > 0  # round 2 sent personalised targets
        for r in rows:  # the server's step: at most coef_steps on c, stopped by coef_tol, the objective recorded
            assert 0 < r["coef_steps"] <= 20 and r["coef_loss"] > 0 and 0 < r["server_seconds"] < r["seconds"]
    else:
        assert not (run / "coefficients.npy").exists()
    assert (run / "tensorboard").exists() == tensorboard
    if tensorboard:
        events = read_events(run)
        assert [e.step for e in events.Scalars("round/mean_test_acc")] == [1, 2]
        assert events.Scalars("client_03/test_acc")[-1].value == pytest.approx(summary["final_client_test_acc"]["3"])
        assert len(events.Images("coefficients")) == 2


def test_bad_config_fails_before_ray(tmp_path):
    proc = run_cli(tmp_path, "experiment=smoke", "client.lr=-1", timeout=120)
    assert proc.returncode == 2
    assert "client.lr=-1" in proc.stderr + proc.stdout
    assert "Ray" not in proc.stderr  # nothing started


def test_partition_the_data_cannot_give_fails_before_ray(tmp_path):
    proc = run_cli(tmp_path, "experiment=smoke", "partition=type2", "partition.classes_per_client=11", timeout=120)
    assert proc.returncode == 2
    out = proc.stderr + proc.stdout
    assert "partition.classes_per_client" in out and "Traceback" not in out


def test_missing_data_names_the_key(tmp_path):
    proc = run_cli(tmp_path, "data.root=/nonexistent/cifar", timeout=120)
    assert proc.returncode == 2
    out = proc.stderr + proc.stdout
    assert "/nonexistent/cifar" in out and "data.root" in out


@pytest.mark.parametrize("override, key", [
    ("algorithm.name=fedavg", "algorithm.name"),
    ("model.architectures=[lenet,vgg]", "model.architectures"),
    ("model.architectures='lenet,alexnet,resnet18'", "model.architectures"),
    ("num_rounds=0", "num_rounds"),
    ("client.batch_size=0", "client.batch_size"),
    ("algorithm.align_size=6000", "algorithm.align_size"),
    ("algorithm.distill_loss=l1", "algorithm.distill_loss"),
    ("min_fit_fraction=1.5", "min_fit_fraction"),
    ("faults.inject=1:2:explode", "faults.inject"),
    ("model.norm=layer", "model.norm"),
    ("partition.val_fraction=1.0", "partition.val_fraction"),
])
def test_validate_names_the_key(override, key):
    cfg = compose([override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config(cfg)


@pytest.mark.parametrize("loss, ok", [("kl", False), ("l1", True), ("mse", True)])
def test_fedmd_logit_consensus_needs_a_logit_loss(loss, ok):
    """Mean logits distilled with kl fail every client in round 2 ("targets must be probabilities"):
    refused before Ray starts, naming both keys and the combinations that work."""
    cfg = compose(["algorithm=fedmd", "algorithm.consensus=logits", f"algorithm.distill_loss={loss}"])
    if ok:
        build_config(cfg)
        return
    with pytest.raises(ConfigError) as error:
        build_config(cfg)
    for words in ("algorithm.consensus=logits", "algorithm.distill_loss=kl", "consensus=probs with distill_loss=kl",
                  "distill_loss=l1 or mse"):
        assert words in str(error.value)


def test_default_and_presets_validate():
    for preset in PRESETS:
        for algorithm in ("ktpfl", "fedmd", "local"):
            build_config(compose([f"experiment={preset}", f"algorithm={algorithm}"]))
    assert compose(["experiment=paper_type2"])["partition"]["scheme"] == "type2"
    # paper_cpu leaves the partition to the command line
    shrunk = compose(["experiment=paper_cpu", "partition=type2"])
    assert shrunk["partition"]["scheme"] == "type2"
    assert (shrunk["model"]["stem"], shrunk["algorithm"]["align_size"], shrunk["num_rounds"]) == ("imagenet", 500, 20)


def test_architectures_as_list_or_string_in_blocks():
    assert load_config(["num_clients=4", "model.architectures=[lenet,alexnet]"]).architectures == [
        "lenet", "lenet", "alexnet", "alexnet"]
    assert load_config(["num_clients=3", "model.architectures='resnet18,lenet,lenet'"]).architectures == [
        "resnet18", "lenet", "lenet"]
    assert load_config([]).architectures[::5] == ["lenet", "alexnet", "resnet18", "shufflenetv2"]


def test_hydra_multirun_runs_each_into_its_own_directory(tmp_path):
    env = dict(os.environ, FEDKT_CACHE=str(tmp_path / "cache"))
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "fedkt.sim", "-m", "experiment=smoke", "num_rounds=1", "algorithm=ktpfl,local",
           f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = sorted(p.name for p in sweep.iterdir() if (p / "summary.json").exists())
    assert runs == ["0_ktpfl_type1_s0", "1_local_type1_s0"]
    for name in runs:
        summary = json.loads((sweep / name / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["algorithm"] == name.split("_")[1]
    report = (sweep / "report.md").read_text()  # written by the Hydra callback at the end of the sweep
    assert "ktpfl" in report and "local" in report


def test_disk_room_is_told_and_a_disk_too_small_is_warned_before_the_first_round(tmp_path, monkeypatch, caplog):
    import shutil
    from types import SimpleNamespace

    from fedkt import sim
    from fedkt.learner import state_size

    cfg = load_config(["experiment=smoke", "model.architectures=lenet", "num_clients=4"])
    need = 2 * 4 * state_size(cfg, "lenet", 10)  # each client's last two rounds
    free = {"bytes": need * 10}
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=free["bytes"]))

    def check(config=cfg):
        caplog.clear()
        with caplog.at_level("INFO", logger="fedkt"):
            sim.check_disk_room(config, tmp_path, 10)
        return [r.levelname for r in caplog.records]

    assert check() == ["INFO"] and f"client state: about {need / 1e6:.1f} MB" in caplog.text
    free["bytes"] = need // 2
    assert check() == ["INFO", "WARNING"]
    assert "less than the" in caplog.text and "client.state_store=context" in caplog.text
    # a resumed run already holds most of it: only what is still missing counts
    (tmp_path / "clients" / "client_0000").mkdir(parents=True)
    (tmp_path / "clients" / "client_0000" / "round_0001.pt").write_bytes(b"x" * (need - need // 4))
    assert check() == ["INFO"]
    in_memory = load_config(["experiment=smoke", "model.architectures=lenet", "num_clients=4",
                             "client.state_store=context"])
    assert check(in_memory) == []  # nothing goes to disk


def test_clients_trained_too_few_steps_are_warned_about_before_the_first_round(caplog):
    """A run whose smallest shard takes fewer than FEW_PRIVATE_STEPS private steps is warned about, naming the
    client and the two ways out; paper_quick's shards, client.min_steps and generated data are not."""
    from fedkt import sim

    def warnings(*overrides, sizes=(480, 21, 480), preset="paper_quick"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="fedkt"):
            sim.check_private_steps(load_config([f"experiment={preset}", *overrides]), list(sizes))
        return caplog.text

    assert sim.private_steps(load_config(["experiment=paper_quick"]), 480) == 56 * 15  # warm-up + ramp 1 -> 10, 15 an epoch
    text = warnings()
    assert "client 1 takes 56 private SGD steps" in text and "1 of the 3 clients take fewer than 100" in text
    assert "client.local_epochs" in text and "client.min_steps" in text
    assert warnings(sizes=(480, 480)) == ""
    assert warnings("client.min_steps=10") == ""  # 1 warm-up step + 10 rounds of 10
    assert warnings("client.local_epochs=10", "client.max_local_epochs=0") == ""
    assert warnings("client.min_steps=9") != ""  # 91 steps
    assert warnings(sizes=(21,), preset="smoke") == ""


def test_a_run_that_reads_validation_accuracy_is_refused_when_a_client_has_none():
    """type 1 with 20 samples a client leaves some clients no validation image; the plateau rate (and the
    distillation guard) would then fail every client in round 1. Refused before it, naming the ways out."""
    from fedkt import sim

    for setting in ("client.lr_policy=plateau", "client.distill_guard=val"):
        with pytest.raises(ConfigError, match=f"1 of 3 clients \\(first: client 1\\) have no validation image.*"
                                              f"{setting}.*raise data.samples_per_client"):
            sim.check_validation_splits(load_config([setting]), [3, 0, 2])
        sim.check_validation_splits(load_config([setting]), [3, 1, 2])
    sim.check_validation_splits(load_config(["client.lr_policy=constant"]), [3, 0, 2])  # nothing reads it


def test_the_clients_actors_run_at_the_drivers_priority():
    """Ray's default starts workers 15 nice levels below the driver, so any other work on the machine would take the
    cores from the clients' training; the simulation's actors keep the driver's priority (RAY_worker_niceness)."""
    code = ("import os, ray\n"
            "from fedkt.sim import set_ray_environment\n"
            "set_ray_environment()\n"
            "ray.init(num_cpus=1, logging_level='ERROR', log_to_driver=False)\n"
            "print(os.nice(0), ray.get(ray.remote(lambda: os.nice(0)).remote()))\n")
    env = {key: value for key, value in os.environ.items() if key != "RAY_worker_niceness"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    driver, worker = map(int, proc.stdout.split()[-2:])
    assert worker == driver


def test_the_local_ray_starts_no_second_set_of_idle_workers_for_the_driver():
    """Ray starts a worker a CPU ahead as it starts, and as many again for the first driver; the client actors use
    none of them (each gets a new worker), so on 2 cores they only slowed the actors' start. The local Ray the
    simulation starts has the first set only (a worker a CPU at most), and still runs work."""
    code = textwrap.dedent("""
        import os, time, ray
        from fedkt.config import load_config
        from fedkt.sim import backend_config

        def parent(pid):
            return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])

        def mine(pid):  # started by this process, through Ray's raylet
            while pid > 1 and pid != os.getpid():
                pid = parent(pid)
            return pid == os.getpid()

        def workers():
            found = 0
            for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
                try:
                    cmd = open(f"/proc/{pid}/cmdline").read()
                    found += ("default_worker" in cmd or "ray::IDLE" in cmd) and mine(pid)
                except OSError:  # gone meanwhile
                    pass
            return found

        ray.init(**backend_config(load_config(["experiment=smoke"]))["init_args"])
        time.sleep(5)
        before = workers()
        print(before, ray.get(ray.remote(lambda: 41 + 1).remote()), workers())
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, answer, after = map(int, proc.stdout.split()[-3:])
    assert before <= (os.cpu_count() or 1) and answer == 42 and after >= 1  # Ray's default: two a CPU


def test_make_run_puts_a_sweep_flag_before_the_overrides():
    """`make run ARGS="-m ..."` sweeps: Hydra refuses -m after an override, and the Makefile adds data.root=."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    def command(args):
        out = subprocess.run(["make", "-n", "-C", root, "run", f"ARGS={args}", "DATA=d"], capture_output=True,
                             text=True, check=True).stdout
        return next(line for line in out.splitlines() if "fedkt.sim" in line).split("fedkt.sim", 1)[1].split()
    assert command("-m algorithm=local,fedmd seed=0,1") == ["-m", "data.root=d", "algorithm=local,fedmd", "seed=0,1"]
    assert command("algorithm=fedmd") == ["data.root=d", "algorithm=fedmd"]
