"""`flwr run` on Flower's local simulation, as a Flower user runs it: a SuperLink in simulation mode (the
one `flwr run .` starts on its own for the `local` connection: `flower-superlink --simulation`, here on free
ports so that nobody else's is used), the smoke preset file, offline, nothing installed per run.

Processes are started and stopped through tests/deploy_harness.py (tagged; nothing is left behind).
"""

import json

from deploy_harness import BIN, REPO, Processes, app_copy, free_port, running, wait_port

RUN_SECONDS = 240


def run_dirs(out):
    return sorted(p for p in out.iterdir() if "_run" in p.name)


def test_flwr_run_local_simulation_smoke_preset(tmp_path):
    home, work = tmp_path / "flwr-home", tmp_path / "superlink"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "local-sim"\n\n[superlink.local-sim]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    # what `. .venv/bin/activate` exports (Makefile): Flower installs nothing per run; the clients' actors at
    # the run's priority
    env = {"FLWR_HOME": str(home), "FEDKT_CACHE": str(tmp_path / "cache"),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_worker_niceness": "0"}
    procs = Processes(work, env=env)  # the SuperLink runs in `work`: relative paths are taken from there
    with running(procs):
        link = procs.start("superlink", [BIN / "flower-superlink", "--insecure", "--simulation", "--isolation",
                                         "subprocess", "--control-api-address", f"127.0.0.1:{free_port()}",
                                         "--host", "127.0.0.1", "--port", port], timeout=RUN_SECONDS + 120)
        wait_port(port, 60, link, procs.log("superlink"))
        app = app_copy(tmp_path)
        preset = REPO / "presets" / "smoke.toml"

        # as the preset's header says: one simulated SuperNode per client
        done = procs.run("flwr-run", [BIN / "flwr", "run", app, "--stream", "--run-config", preset,
                                      "--federation-config", "num-supernodes=4"], timeout=RUN_SECONDS)
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-4000:] + procs.logs()
        out = work / "outputs" / "deploy"  # output_dir="outputs/deploy", taken from the SuperLink's folder
        (run,) = run_dirs(out)
        assert (out / "client-state" / f"run_{run.name.rsplit('_run', 1)[1]}").is_dir()  # the clients' too
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["rounds_completed"] == 2, summary
        assert set(summary["final_client_test_acc"]) == {"0", "1", "2", "3"}
        metrics = json.loads((run / "metrics.json").read_text())
        assert [r["round"] for r in metrics] == [1, 2] and all(r["eval_clients"] == 4 for r in metrics)
        assert len((run / "clients.csv").read_text().splitlines()) == 1 + 2 * 4
        assert json.loads((run / "config.json").read_text())["data"]["name"] == "synthetic"
        for name in ("accuracy.png", "clients.png", "coefficients.npy"):
            assert (run / name).exists(), name
        assert "round 2/2 | mean test acc" in output
        assert "nice levels below" not in output  # RAY_worker_niceness reached the simulation's process
        assert not (home / "runtime-envs").exists() and "Installing application dependencies" not in output

        # Flower's default: 2 simulated SuperNodes for 4 clients. One line says the fix; nothing starts.
        done = procs.run("flwr-run-2", [BIN / "flwr", "run", app, "--stream", "--run-config", preset],
                         timeout=120)
        output = done.stdout + done.stderr
        assert ("the run has num_clients=4 but the federation has 2 SuperNodes (fedkt runs one client per "
                "SuperNode); fix: local simulation `flwr run . --federation-config 'num-supernodes=4'`") in output
        assert "the run FAILED before it started" in output
        assert run_dirs(out) == [run]
