"""`python -m fedkt.sim ray.address=...`: the simulation on an existing Ray cluster (docs/deploy.md).

The test starts a one-node Ray cluster of its own on 127.0.0.1 (its own ports and temp folder, bound to
loopback only), runs the `smoke` preset against it and checks that the run's driver connected to that
cluster (its log lands in the cluster's session folder) rather than starting a Ray of its own.
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

from deploy_harness import BIN, REPO, Processes, free_port, tail, wait_port

# Ray binds to 127.0.0.1 only (on Linux it otherwise picks the machine's outward address).
LOOPBACK_RAY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def test_smoke_simulation_on_existing_ray_cluster(tmp_path):
    temp = Path(tempfile.mkdtemp(prefix="fkray", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    procs = Processes(tmp_path / "logs", env={**LOOPBACK_RAY, "FEDKT_CACHE": str(tmp_path / "cache")})
    port = free_port()
    head = [BIN / "ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", port,
            "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp,
            "--object-store-memory", 100_000_000, "--min-worker-port", 0, "--max-worker-port", 0]
    for flag in ("--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                 "--metrics-export-port", "--runtime-env-agent-port", "--node-manager-port",
                 "--object-manager-port"):  # never the defaults another Ray on this machine may hold
        head += [flag, free_port()]
    try:
        ray = procs.start("ray-head", head, timeout=400)
        wait_port(port, 90, ray, procs.log("ray-head"))
        logs = temp / "session_latest" / "logs"
        drivers_before = set(logs.glob("python-core-driver-*"))
        run_dir = tmp_path / "run"
        done = procs.run("sim", [sys.executable, "-m", "fedkt.sim", "experiment=smoke", f"hydra.run.dir={run_dir}",
                                 f"ray.address=127.0.0.1:{port}"], timeout=300, cwd=REPO)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + tail(procs.log("ray-head"))
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["rounds_completed"] == 2
        assert set(summary["final_client_test_acc"]) == {"0", "1", "2", "3"}
        assert json.loads((run_dir / "config.json").read_text())["ray"]["address"] == f"127.0.0.1:{port}"
        # the run's driver joined this cluster (a driver log of it in the cluster's session folder)
        assert set(logs.glob("python-core-driver-*")) - drivers_before, sorted(p.name for p in logs.iterdir())
        assert ray.poll() is None  # the cluster outlives the run: it belongs to whoever started it
    except BaseException:
        print(procs.logs())
        raise
    finally:
        procs.stop_all()
        shutil.rmtree(temp, ignore_errors=True)
    assert procs.leftovers() == []
