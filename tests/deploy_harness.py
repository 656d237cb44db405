"""Real processes for the deployment tests: a SuperLink, SuperNodes, a Ray head, all on 127.0.0.1.

Every process a `Processes` starts carries FEDKT_TEST_PROCESS=<tag>:<name> in its environment, and so
does everything it starts in turn (Flower's SuperExec, ServerApp and ClientApp processes, Ray's
daemons and workers, even the ones that detach into their own session). `stop(name)` and `stop_all()`
find them by that tag in /proc and end exactly those (SIGTERM, then SIGKILL): nothing else on the
machine is touched, and nothing is left behind, even when a test fails half-way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TAG_VAR = "FEDKT_TEST_PROCESS"

# No update checks and no telemetry: nothing may leave 127.0.0.1.
QUIET_ENV = {"FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0",
             "PYTHONUNBUFFERED": "1"}


def app_copy(dest: Path) -> Path:
    """The Flower app's files (what its bundle holds) copied to DEST/fedkt: Flower requires the app's
    folder name to be a valid app name, and a checkout's folder (CI's clone, say) may be named anything."""
    import shutil

    app = Path(dest) / "fedkt"
    if not app.exists():
        shutil.copytree(REPO / "src" / "fedkt", app / "src" / "fedkt", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "conf", app / "conf")
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(REPO / name, app / name)
    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before port {port} opened\n{tail(log)}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s\n{tail(log)}")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what}: not after {timeout:.0f} s")


def tail(path: Path | None, chars: int = 4000) -> str:
    if path is None or not Path(path).exists():
        return ""
    text = Path(path).read_text(errors="replace")
    return f"--- {path.name} ---\n{text[-chars:]}"


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def toml_value(value) -> str:
    """A value as Flower's --run-config / --node-config parse it (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tagged_pids(prefix: str) -> list[int]:
    """Processes whose environment holds FEDKT_TEST_PROCESS=<prefix>... (our own, started by a test)."""
    needle = f"{TAG_VAR}={prefix}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                env = handle.read()
        except OSError:  # gone, or not ours
            continue
        if any(item.startswith(needle) for item in env.split(b"\0")):
            pids.append(int(entry))
    return pids


def _end(pids: list[int], grace: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + (grace if sig == signal.SIGTERM else 5)
        while time.time() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.1)
        pids = [pid for pid in pids if _alive(pid)]
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"  # a zombie is as good as gone
    except (OSError, IndexError):
        return False


class Processes:
    """Start named processes with their logs in `folder`; stop them (and all they started) by tag."""

    def __init__(self, folder: Path, env: dict | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tag = uuid.uuid4().hex
        # Flower's processes start others by name (flower-superexec, ...): the venv's bin must lead PATH
        # even when the tests run as `.venv/bin/python -m pytest` without an activated venv (CI).
        path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = {**os.environ, **QUIET_ENV, "PATH": path, **(env or {})}
        self.procs: dict[str, subprocess.Popen] = {}

    def log(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def start(self, name: str, cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.Popen:
        """Run cmd in the background, at most `timeout` seconds (coreutils timeout as a last resort)."""
        full_env = {**self.env, **(env or {}), TAG_VAR: f"{self.tag}:{name}:"}
        with open(self.log(name), "wb") as out:
            proc = subprocess.Popen(["timeout", "-s", "KILL", str(int(timeout)), *map(str, cmd)], stdout=out,
                                    stderr=subprocess.STDOUT, env=full_env, cwd=self.folder,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def run(self, name: str, cmd: list[str], timeout: float, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run cmd to its end (at most `timeout` seconds); output in the returned object and in its log."""
        full_env = {**self.env, **(env or {}), TAG_VAR: f"{self.tag}:{name}:"}
        try:
            done = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=timeout,
                                  env=full_env, cwd=cwd or self.folder, start_new_session=True)
        except subprocess.TimeoutExpired as error:
            self.log(name).write_text(_text(error.stdout) + _text(error.stderr))
            raise
        finally:
            self.stop(name)  # whatever it left running
        self.log(name).write_text(done.stdout + done.stderr)
        return done

    def stop(self, name: str, grace: float = 5.0, sig_kill_first: bool = False) -> None:
        pids = _tagged_pids(f"{self.tag}:{name}:")
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            pids.append(proc.pid)
        if sig_kill_first:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        _end(pids, grace)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name, grace=3.0)
        _end(_tagged_pids(f"{self.tag}:"), 3.0)

    def leftovers(self) -> list[int]:
        return [pid for pid in _tagged_pids(f"{self.tag}:") if _alive(pid)]

    def logs(self) -> str:
        return "\n".join(tail(self.log(name), 3000) for name in self.procs)

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


# -- a Flower federation ---------------------------------------------------------------------------

class Federation:
    """A SuperLink and N SuperNodes on 127.0.0.1, optionally with TLS and SuperNode authentication,
    and a `flwr` connection to it in a private FLWR_HOME."""

    def __init__(self, procs: Processes, workdir: Path, num_nodes: int, tls: bool = False,
                 auth: bool = False, node_config=None):
        self.procs, self.workdir, self.num_nodes, self.tls, self.auth = procs, Path(workdir), num_nodes, tls, auth
        self.node_config = node_config or (lambda i: {})
        self.port = free_port()
        self.home = self.workdir / "flwr-home"
        self.certs = self.workdir / "certificates"
        self.connection = "fedkt-test"
        self.env = {"FLWR_HOME": str(self.home)}

    def start(self, timeout: float) -> None:
        if self.tls:
            done = subprocess.run(["bash", str(REPO / "scripts" / "make_certificates.sh"), str(self.certs),
                                   "--supernode-keys", str(self.num_nodes if self.auth else 0)],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        self.home.mkdir(parents=True, exist_ok=True)
        security = (f'root-certificates = "{self.certs / "ca.crt"}"\n' if self.tls else "insecure = true\n")
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{self.connection}"\n\n[superlink.{self.connection}]\n'
            f'address = "127.0.0.1:{self.port}"\n{security}')
        link = [BIN / "flower-superlink", "--host", "127.0.0.1", "--port", self.port,
                "--disable-runtime-dependency-installation", *self._link_security()]
        proc = self.procs.start("superlink", link, timeout=timeout, env=self.env)
        wait_port(self.port, 60, proc, self.procs.log("superlink"))
        if self.auth:
            for i in range(self.num_nodes):
                done = self.procs.run(f"register-{i}", [BIN / "flwr", "supernode", "register",
                                                         self.certs / f"supernode_{i}.pub", self.connection],
                                      timeout=60, env=self.env)
                assert done.returncode == 0, done.stdout + done.stderr
        for i in range(self.num_nodes):
            self.start_node(i, timeout)

    def _link_security(self) -> list:
        if not self.tls:
            return ["--insecure"]
        args = ["--ssl-ca-certfile", self.certs / "ca.crt", "--ssl-certfile", self.certs / "server.pem",
                "--ssl-keyfile", self.certs / "server.key"]
        return args + (["--enable-supernode-auth"] if self.auth else [])

    def node_command(self, i: int, key=None) -> list:
        """flower-supernode for partition i, with its own runtime port, data and state (--node-config)."""
        node = {"partition-id": i, "num-partitions": self.num_nodes, **self.node_config(i)}
        text = " ".join(f"{k}={toml_value(v)}" for k, v in node.items())
        cmd = [BIN / "flower-supernode", "--superlink", f"127.0.0.1:{self.port}", "--host", "127.0.0.1",
               "--port", free_port(), "--node-config", text, "--max-wait-time", "60"]
        cmd += ["--root-certificates", self.certs / "ca.crt"] if self.tls else ["--insecure"]
        if key is not None or self.auth:
            cmd += ["--auth-supernode-private-key", key or self.certs / f"supernode_{i}"]
        return cmd

    def start_node(self, i: int, timeout: float) -> subprocess.Popen:
        return self.procs.start(f"supernode-{i}", self.node_command(i), timeout=timeout, env=self.env)

    def flwr_run_command(self, run_config: dict) -> list:
        text = " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items())
        return [BIN / "flwr", "run", app_copy(self.workdir), self.connection, "--stream", "--run-config", text]

    def flwr_run(self, run_config: dict, timeout: float) -> subprocess.CompletedProcess:
        """`flwr run APP <connection> --stream --run-config ...` to its end (at most `timeout` s)."""
        return self.procs.run("flwr-run", self.flwr_run_command(run_config), timeout=timeout, env=self.env)


@contextlib.contextmanager
def running(procs: Processes):
    """The block of a test that runs `procs`: on a failure their logs are printed; in any case they are all
    stopped, and after a block that passed nothing of them may be left."""
    try:
        yield procs
    except BaseException:
        print(procs.logs())
        raise
    finally:
        procs.stop_all()
    assert procs.leftovers() == []
