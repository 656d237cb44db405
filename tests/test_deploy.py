"""Real deployment (docs/deploy.md): the app's configuration, and `flwr run` on a SuperLink with three
SuperNodes as real processes on 127.0.0.1, with TLS and SuperNode authentication, and a SuperNode killed
mid-run.

Every process is started through tests/deploy_harness.py, bounded in time and stopped at the end (by an
environment tag, so also what Flower's SuperExec spawned in its own session), pass or fail.
"""

import io
import json
import tomllib
import zipfile

import httpx
import numpy as np
import pytest

from deploy_harness import REPO, Federation, Processes, running, wait_for
from fedkt.app_config import cfg_from_run_config, check_data_root, check_federation_size, client_cfg
from fedkt.config import ConfigError, build_config, flatten, synthetic_data_note, unflatten
from fedkt.deploy import (APP_CONFIG_MARKER, PRESETS, app_config_table, main, run_config_overrides, write_app_config,
                          write_presets)
from fedkt.server_app import warn_low_priority_clients, warn_runtime_install

TINY = {  # three LeNet clients on generated data, two rounds: what a deployment test can afford
    "num_clients": 3, "num_rounds": 2, "model.architectures": "lenet", "data.public_size": 200,
    "data.samples_per_client": 120, "algorithm.align_size": 64, "client.batch_size": 32,
}
RUN_SECONDS = 300  # bound on one `flwr run` of two rounds (about 70 s on 2 busy cores; round 1 about 40 s)


def app_config() -> dict:
    with open(REPO / "pyproject.toml", "rb") as handle:
        return flatten(tomllib.load(handle)["tool"]["flwr"]["app"]["config"])


# -- the app's configuration (fast) ------------------------------------------------------------------

def test_app_config_is_generated_from_conf_and_current():
    """[tool.flwr.app.config] is what `python -m fedkt.deploy presets` writes below its marker line: what
    `python -m fedkt.sim` runs with when given no overrides (conf/config.yaml with its default groups:
    ktpfl, type1 and the `quick` preset), so that `flwr run` and the simulation start from the same
    experiment. Run that command after changing conf/."""
    text = (REPO / "pyproject.toml").read_text()
    assert text.count(APP_CONFIG_MARKER) == 1
    assert text.split(APP_CONFIG_MARKER)[1] == app_config_table(), (
        "pyproject.toml's [tool.flwr.app.config] is stale: run `python -m fedkt.deploy presets`")
    app = app_config()
    assert app == run_config_overrides([])  # the committed file, as Flower reads it: every key and value
    assert app["output_dir"] == "outputs/deploy" and app["num_clients"] == 20


def test_app_config_writer_replaces_only_the_generated_table(tmp_path):
    """The command keeps everything above the marker, rewrites everything below it, and refuses a file
    without the marker (it would not know where the generated table begins)."""
    pyproject = tmp_path / "pyproject.toml"
    above = (REPO / "pyproject.toml").read_text().split(APP_CONFIG_MARKER)[0]
    pyproject.write_text(above + APP_CONFIG_MARKER + "[tool.flwr.app.config]\nseed = 99\n")
    write_app_config(pyproject)
    assert pyproject.read_text() == above + APP_CONFIG_MARKER + app_config_table()
    assert tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]["seed"] == 0
    pyproject.write_text(above)
    with pytest.raises(ValueError, match="has no line '# Generated from conf/"):
        write_app_config(pyproject)


def test_run_config_file_for_any_preset_is_accepted_by_the_app(tmp_path, capsys):
    """`python -m fedkt.deploy run-config experiment=smoke` prints a TOML file for `flwr run --run-config`;
    every key in it must exist in [tool.flwr.app.config] (Flower refuses unknown keys)."""
    assert main(["run-config", "experiment=smoke", "algorithm=fedmd"]) == 0
    written = tomllib.loads(capsys.readouterr().out)
    assert set(written) <= set(app_config())
    assert written["algorithm.name"] == "fedmd" and written["data.name"] == "synthetic"
    assert written["num_clients"] == 4


def test_fab_holds_the_code_and_config_only():
    """The app bundle `flwr run` uploads: source and configuration, never data, outputs, certificates,
    .venv or tests; far below Flower's 10 MB cap."""
    from flwr.cli.build import build_fab_from_disk

    fab = build_fab_from_disk(REPO)
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert len(fab) < 1_000_000
    assert "src/fedkt/server_app.py" in names and "src/fedkt/deploy.py" in names
    assert "conf/config.yaml" in names and "pyproject.toml" in names
    allowed = ("src/fedkt/", "conf/", ".info/")
    assert all(name.startswith(allowed) or name in ("pyproject.toml", "README.md") for name in names), names


def test_server_config_from_run_config():
    cfg = cfg_from_run_config(app_config())
    assert cfg.client.lr == 0.02 and cfg.data.num_classes == 10
    with pytest.raises(ConfigError, match="client.lr"):
        cfg_from_run_config({**app_config(), "client.lr": -1.0})
    with pytest.raises(ConfigError, match="data.num_classes"):
        cfg_from_run_config({**app_config(), "data.num_classes": 1})
    with pytest.raises(ConfigError, match="resume"):
        cfg_from_run_config({**app_config(), "resume": "outputs/runs/x"})


def test_client_config_from_node_config(tmp_path):
    """A SuperNode's --node-config names its data (a site's own image folder) and where its state lives."""
    run = {**app_config(), "num_clients": 3, "model.architectures": "lenet,alexnet,resnet18"}
    node = {"partition-id": 2, "num-partitions": 3, "data-root": str(tmp_path / "site"),
            "data-name": "imagefolder", "state-dir": str(tmp_path / "state")}
    cfg = client_cfg(run, node, run_id=7)
    assert cfg.data.root == str(tmp_path / "site") and cfg.data.name == "imagefolder"
    assert cfg.run_dir == str(tmp_path / "state" / "run_7")
    assert cfg.num_clients == 3 and cfg.client.lr == 0.02
    with pytest.raises(ConfigError, match="num-partitions=4.*num_clients=3"):
        client_cfg(run, {**node, "num-partitions": 4}, run_id=7)
    with pytest.raises(ConfigError, match="partition-id"):
        client_cfg(run, {"num-partitions": 3}, run_id=7)
    with pytest.raises(ConfigError, match="partition-id=3"):
        client_cfg(run, {**node, "partition-id": 3}, run_id=7)
    with pytest.raises(ConfigError, match="data.name"):
        client_cfg(run, {**node, "data-name": "mnist"}, run_id=7)


# -- real processes ------------------------------------------------------------------------------------

def run_dirs(out):
    return sorted(p for p in out.iterdir() if p.is_dir()) if out.exists() else []


def node_config(tmp_path, **extra):
    return lambda i: {"state-dir": str(tmp_path / "state" / f"node{i}"), **extra}


def test_deployment_with_tls_auth_and_a_lost_supernode(tmp_path):
    """SuperLink + three SuperNodes over TLS (certificates from scripts/make_certificates.sh) with SuperNode
    authentication, three rounds of KT-pFL through `flwr run`; a fourth SuperNode with an unregistered key is
    refused; a run config that cannot work stops the ServerApp at once. The run config keeps data.name=cifar10:
    each node's --node-config data-name=synthetic must win.

    SuperNode 2 is killed (SIGKILL, with everything it started) after round 1: round 2 waits at most
    round_timeout for it (fit, then evaluate; the SuperLink declares it offline within a minute), goes on with the
    other two, records the absence; round 3 does not wait for it again (it used to wait out the whole
    round_timeout), and the run completes with the same files as a simulation run; nothing hangs.

    One federation for all of it: a second one (plain, for the lost node) cost the suite two and a half minutes.
    The insecure set-up is what `flwr run .` on the local simulation uses (tests/test_flwr_run.py)."""
    out = tmp_path / "out"
    round_timeout = 120  # above the SuperLink's ~60 s offline delay, and far above a round's work
    run_seconds = RUN_SECONDS + 2 * round_timeout  # so that a round 3 that waits still finishes, and fails below
    procs = Processes(tmp_path / "logs", env={"FEDKT_CACHE": str(tmp_path / "cache")})
    with running(procs):
        fed = Federation(procs, tmp_path, 3, tls=True, auth=True,
                         node_config=node_config(tmp_path, **{"data-name": "synthetic"}))
        fed.start(timeout=run_seconds + 240)
        for name in ("ca.crt", "ca.key", "server.pem", "server.key", "supernode_0", "supernode_0.pub"):
            assert (fed.certs / name).exists(), name
        # TLS is on: HTTPS with our CA answers, plain HTTP does not
        assert httpx.get(f"https://127.0.0.1:{fed.port}/health", verify=str(fed.certs / "ca.crt"),
                         timeout=10).is_success
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{fed.port}/health", timeout=10)
        # an intruder: a valid key pair the SuperLink never registered
        done = procs.run("keygen", ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f",
                                    tmp_path / "intruder"], timeout=30)
        assert done.returncode == 0, done.stderr
        intruder = procs.start("intruder", fed.node_command(0, key=tmp_path / "intruder"), timeout=120,
                               env=fed.env)
        # a run config that cannot work stops the ServerApp at once, saying which key and why
        # (`flwr run` itself exits 0 whatever the ServerApp does; the stream shows the error)
        done = fed.flwr_run({**TINY, "client.lr": -1.0, "output_dir": str(out)}, timeout=120)
        assert "client.lr=-1.0 must be a number > 0" in done.stdout + done.stderr
        assert run_dirs(out) == []  # no run directory for it

        run = procs.start("flwr-run", fed.flwr_run_command(
            {**TINY, "num_rounds": 3, "round_timeout": round_timeout, "output_dir": str(out)}),
            timeout=run_seconds, env=fed.env)

        def round_one_done():
            dirs = run_dirs(out)
            if run.poll() is not None:
                raise AssertionError(f"flwr run ended early with {run.returncode}\n{procs.logs()}")
            return dirs and (dirs[0] / "metrics.json").exists() and \
                len(json.loads((dirs[0] / "metrics.json").read_text())) >= 1

        wait_for(round_one_done, RUN_SECONDS, "round 1")
        procs.stop("supernode-2", sig_kill_first=True)
        wait_for(lambda: run.poll() is not None, run_seconds, "the run to end after the node loss")
        output = procs.log("flwr-run").read_text()
        assert run.returncode == 0, output[-3000:] + procs.logs()
        wait_for(lambda: intruder.poll() is not None, 60, "the unregistered SuperNode to be refused")
        assert intruder.returncode != 0
        assert "Failed to initialize the connection" in procs.log("intruder").read_text()

    (run_dir,) = run_dirs(out)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 3, summary
    assert summary["num_clients"] == 3 and set(summary["final_client_test_acc"]) == {"0", "1"}
    assert all(0.0 <= acc <= 1.0 for acc in summary["final_client_test_acc"].values())
    rows = json.loads((run_dir / "metrics.json").read_text())
    print("round seconds", [round(r["seconds"], 1) for r in rows], "round_timeout", round_timeout)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[0]["eval_clients"] == 3 and rows[0]["fit_clients"] == 3 and rows[0]["missing_clients"] == ""
    assert rows[1]["eval_clients"] == 2 and rows[1]["missing_clients"] == "2"
    assert rows[1]["fit_clients"] == 2 and rows[1]["fit_failures"] >= 1
    assert rows[1]["bytes_down"] > 0  # round 2 sent personalised targets
    assert rows[1]["seconds"] < 2 * round_timeout + 60  # bounded by the round timeout, fit + evaluate
    assert rows[2]["eval_clients"] == 2 and rows[2]["missing_clients"] == "2"
    assert rows[2]["fit_clients"] == 2 and rows[2]["fit_failures"] == 0  # not sent to the lost node
    # not waited for either: round 3 (two clients) takes no longer than round 1 (three) plus half the
    # timeout, where waiting for the lost node made it round 1's time plus the whole timeout
    assert rows[2]["seconds"] < rows[0]["seconds"] + round_timeout / 2, [r["seconds"] for r in rows]
    assert "round 3/3 | mean test acc" in output  # our progress line, streamed by `flwr run --stream`
    assert "no test result from client(s) 2" in output
    assert output.count("client 2 (node") == 1 and "nor wait for it" in output  # said once

    # the same files as a simulation run; c of shape 3 x 3 a round, moved from 1/3
    assert len((run_dir / "clients.csv").read_text().splitlines()) == 1 + 3 + 2 + 2
    c = np.load(run_dir / "coefficients.npy")
    assert c.shape == (3, 3, 3)
    np.testing.assert_allclose(c.sum(axis=2), 1.0, atol=1e-5)
    assert np.abs(c[-1] - 1 / 3).max() > 1e-3, c[-1]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["num_clients"] == 3 and config["data"]["num_classes"] == 10 and config["data"]["name"] == "cifar10"
    assert (run_dir / "checkpoint.npz").exists() and (run_dir / "accuracy.png").exists()
    # each SuperNode kept its client's state where its --node-config said, the lost one until it was lost
    run_id = run_dir.name.rsplit("_run", 1)[1]
    for i, last_round in ((0, 3), (1, 3), (2, 1)):
        clients = tmp_path / "state" / f"node{i}" / f"run_{run_id}" / "clients" / f"client_{i:04d}"
        assert (clients / f"round_{last_round:04d}.pt").exists(), sorted(clients.iterdir())


# -- `flwr run` as Flower users try it: federation size, paths, presets, versions (fast) ---------------

def test_federation_size_mismatch_says_both_fixes_in_one_line():
    """Flower's local simulation has 2 SuperNodes unless told otherwise; fedkt needs one per client. The
    ServerApp (and every ClientApp) says so in one line, with the fix for a simulation and for a deployment."""
    with pytest.raises(ConfigError) as error:
        check_federation_size(2, 20)
    text = str(error.value)
    assert "\n" not in text and text.startswith("the run has num_clients=20 but the federation has 2 SuperNodes")
    assert "--federation-config 'num-supernodes=20'" in text and "num-partitions=20" in text
    check_federation_size(4, 4)
    run = {**app_config(), "num_clients": 4, "model.architectures": "lenet"}
    with pytest.raises(ConfigError, match="num-partitions=2 SuperNodes but the run has num_clients=4.*"
                                          "num-supernodes=4") as error:
        client_cfg(run, {"partition-id": 0, "num-partitions": 2}, run_id=1)
    assert "\n" not in str(error.value)


def test_relative_paths_resolve_against_the_working_folder(tmp_path, monkeypatch):
    """Relative data.root / cache_dir / output_dir mean: from the folder of the process that reads them
    (the SuperLink's for the ServerApp, a SuperNode's for its clients), made absolute at once."""
    monkeypatch.chdir(tmp_path)
    run = {**app_config(), "data.root": "cifar", "data.cache_dir": "cache", "output_dir": "out"}
    cfg = cfg_from_run_config(run)
    assert cfg.data.root == str(tmp_path / "cifar") and cfg.output_dir == str(tmp_path / "out")
    assert cfg.data.cache_dir == str(tmp_path / "cache")
    assert cfg_from_run_config(app_config()).data.cache_dir == ""  # "" keeps meaning the default cache
    node = client_cfg({**run, "num_clients": 2, "model.architectures": "lenet"},
                      {"partition-id": 0, "num-partitions": 2}, run_id=5)
    assert node.data.root == str(tmp_path / "cifar")
    assert node.run_dir == str(tmp_path / "out" / "client-state" / "run_5")
    # a data.root that is not there stops a simulation at once, saying where it looked and the fix
    with pytest.raises(ConfigError, match=r"data.root='cifar' is not there \(looked for .*cifar; relative paths "
                                          r"are taken from the folder the SuperLink was started in") as error:
        check_data_root(run, cfg)
    assert "data.root=\"/abs/path" in str(error.value)
    (tmp_path / "cifar").mkdir()
    check_data_root(run, cfg)
    check_data_root({**run, "data.name": "synthetic"}, cfg_from_run_config({**run, "data.name": "synthetic"}))


def test_run_config_file_writes_a_given_path_absolute(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run-config", "experiment=quick", "data.root=cifar10.tar.gz"]) == 0
    out = capsys.readouterr()
    assert tomllib.loads(out.out)["data.root"] == str(tmp_path / "cifar10.tar.gz")
    assert "--federation-config 'num-supernodes=20'" in out.err


def test_preset_files_are_generated_from_conf(tmp_path):
    """presets/*.toml (for `flwr run . --run-config presets/X.toml`) are exactly what
    `python -m fedkt.deploy presets` writes from conf/ today: run it after changing conf/."""
    written = write_presets(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{name}.toml" for name in PRESETS)
    app = app_config()
    for path in written:
        committed = REPO / "presets" / path.name
        assert committed.exists() and committed.read_text() == path.read_text(), (
            f"{committed} is stale: run `python -m fedkt.deploy presets`")
        flat = tomllib.loads(path.read_text())
        assert set(flat) == set(app), path  # every key, and only keys, that the app accepts
        assert flat == run_config_overrides([f"experiment={path.stem}"])
        assert f"--federation-config 'num-supernodes={flat['num_clients']}'" in path.read_text()
    names = {p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")}
    assert names == set(PRESETS), "a preset in conf/experiment/ without its presets/*.toml (or the reverse)"


def test_smoke_with_a_data_root_says_it_uses_generated_data():
    cfg = build_config(unflatten({**app_config(), "data.name": "synthetic", "data.root": "/data/cifar"}))
    assert "does not read data.root=/data/cifar" in synthetic_data_note(cfg)
    assert synthetic_data_note(build_config(unflatten({**app_config(), "data.name": "synthetic"}))) is None
    assert synthetic_data_note(build_config(unflatten({**app_config(), "data.root": "/data/cifar"}))) is None


def test_flower_is_pinned_to_the_version_the_suite_runs_on():
    """pyproject accepts exactly one Flower (run_simulation is deprecated in 1.42: an upgrade is a decision,
    docs/deploy.md), and it is the one installed here."""
    from importlib.metadata import version

    with open(REPO / "pyproject.toml", "rb") as handle:
        deps = tomllib.load(handle)["project"]["dependencies"]
    (flwr,) = [d for d in deps if d.startswith("flwr")]
    assert flwr.split("==")[1] == version("flwr"), (flwr, version("flwr"))


def test_a_per_run_dependency_install_is_reported_with_the_fix(monkeypatch, caplog):
    """Flower's local SuperLink, started without FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1, runs the
    ServerApp in a fresh environment under FLWR_HOME/runtime-envs/: the run says so, and how to stop it."""
    import logging

    monkeypatch.setenv("VIRTUAL_ENV", str(REPO / ".venv"))
    with caplog.at_level(logging.WARNING, logger="fedkt"):
        warn_runtime_install()
    assert caplog.text == ""
    monkeypatch.setenv("VIRTUAL_ENV", "/root/.flwr/runtime-envs/1234")
    with caplog.at_level(logging.WARNING, logger="fedkt"):
        warn_runtime_install()
    assert "installed this app's dependencies for this run" in caplog.text
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in caplog.text


def test_low_priority_clients_under_flwr_run_are_reported_with_the_fix(monkeypatch, caplog):
    """Under `flwr run` Flower's simulation starts Ray with the SuperLink's environment: without
    RAY_worker_niceness there, Ray's default puts the clients 15 nice levels down; the run says so and how."""
    import logging

    monkeypatch.setenv("RAY_worker_niceness", "0")
    with caplog.at_level(logging.WARNING, logger="fedkt"):
        warn_low_priority_clients()
    assert caplog.text == ""
    monkeypatch.delenv("RAY_worker_niceness")
    with caplog.at_level(logging.WARNING, logger="fedkt"):
        warn_low_priority_clients()
    assert "15 nice levels below" in caplog.text and "export RAY_worker_niceness=0" in caplog.text
