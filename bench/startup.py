"""Time to the first round of `python -m fedkt.sim`, beside the bare imports it cannot avoid, and where the seconds
in between go. Prints markdown tables of seconds per rep and their median.

    python bench/startup.py                                   # experiment=smoke num_rounds=1, 3 reps
    python bench/startup.py --reps 5 --show-log
    python bench/startup.py --set experiment=paper_quick num_rounds=1 data.root=../shared/data/cifar10-jpeg.tar.gz

Each rep runs, in fresh interpreters and interleaved (the order rotates from rep to rep):
- the bare imports, `python -c "import torch, torchvision, flwr, hydra"` (wall time);
- `python -c "import fedkt.client_app"`, about what every client actor imports (wall time);
- Ray's start alone, `ray.init(num_cpus=2, include_dashboard=False)` (timed inside; the imports excluded);
- the run, `python -m fedkt.sim <overrides> hydra.run.dir=<tmp>`, whose output is read line by line as it
  arrives and stamped with the seconds since the subprocess started (measured here, not the log's timestamps).
The run's milestones are its first fedkt log line (imports, Hydra and config done; where nothing is logged
earlier, as in smoke, it is the data-loaded line itself, so "data" reads 0 and the data is in the first phase),
the "N clients (...), R rounds ->" line (data loaded), "round 1/R started" (the strategy configures round 1:
Flower does so before Ray is up), the first "round 1/R |" line (round 1 done: the issue's "first round line")
and the exit; with logging.verbose=true also Ray's "Started a local Ray instance" and Flower's "Constructed
ActorPool", which split round 1 into Ray's start, the actor pool, and the actors' imports and work.
One untimed run first warms the data cache (FEDKT_CACHE, a temp folder) and the page cache, so the data is
loaded as on a user's second run (smoke's synthetic data is generated every time, cache or not).
The issue's metric is "round 1 done" over the bare imports of the same rep.
A third table counts the CPU seconds the run and every process it started (Ray's, the client actors) had used when
round 1 was done, sampled from /proc (Linux) every 50 ms: their sum over the machine's cores is the least wall time
any overlap of that work could reach on this machine, a floor to set against the goal.
Compare within one table: absolute seconds depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

BARE_IMPORTS = [sys.executable, "-c", "import torch, torchvision, flwr, hydra"]
ACTOR_IMPORTS = [sys.executable, "-c", "import fedkt.client_app"]
RAY_START = [sys.executable, "-c", "import ray; import time; t=time.time(); "
             "ray.init(num_cpus=2, include_dashboard=False); print(time.time()-t); ray.shutdown()"]

# the first line matching each pattern marks the milestone; "exit" is the process's end
FEDKT = r"\]\[fedkt\]\[\w+\] - "  # a line of our logger, in Hydra's format: [time][fedkt][INFO] - message
MILESTONE_PATTERNS = {
    "first fedkt line": re.compile(FEDKT),
    "data loaded": re.compile(FEDKT + r".* \d+ clients \(.*\), \d+ rounds -> "),
    "round 1 started": re.compile(FEDKT + r"round 1/\d+ started"),
    # only with logging.verbose=true (Ray's and Flower's own INFO/DEBUG lines):
    "Ray up (verbose)": re.compile(r"Started a local Ray instance"),
    "actor pool (verbose)": re.compile(r"Constructed ActorPool with"),
    "round 1 done": re.compile(FEDKT + r"round 1/\d+ \|"),
}
MILESTONES = [*MILESTONE_PATTERNS, "exit"]
# Flower's run_simulation runs the ServerApp (which configures round 1 at once) beside the start of Ray and the
# actors: "round 1 started" comes before Ray is up, and round 1 holds Ray's start, the actors' and their work.
PHASES = {  # phase: (from, to); None = the subprocess's start
    "imports+Hydra+config": (None, "first fedkt line"),
    "data": ("first fedkt line", "data loaded"),
    "to round 1 configured": ("data loaded", "round 1 started"),
    "round 1 incl. Ray+actors start, warm-up": ("round 1 started", "round 1 done"),
    "of it: Ray start (verbose)": ("round 1 started", "Ray up (verbose)"),
    "of it: actor pool (verbose)": ("Ray up (verbose)", "actor pool (verbose)"),
    "of it: actors' imports+round 1 work (verbose)": ("actor pool (verbose)", "round 1 done"),
    "after round 1 (rest, shutdown)": ("round 1 done", "exit"),
}


# what a process of the run is, by its command line (first match); the run's own process is "driver"
PROCESS_KINDS = [("client actors", "ClientAppActor"), ("Ray's idle workers", "ray::IDLE"),
                 ("Ray's idle workers", "default_worker.py"),  # a worker still starting: renamed once up
                 ("Ray's services", "ray")]  # gcs_server, raylet, its agents, log monitor, dashboard
CPU_COLUMNS = ["driver", "client actors", "Ray's idle workers", "Ray's services", "other", "total"]


def process_kind(cmdline: str) -> str:
    return next((kind for kind, mark in PROCESS_KINDS if mark in cmdline), "other")


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds used: user + system) of a live process; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)", which may hold spaces
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ")
    except OSError:
        return ""


class TreeCpu:
    """CPU seconds used by a process and all its descendants, sampled from /proc in a thread. A process's last
    sample stands for it once it has gone (up to 50 ms of its work lost; Ray's processes live as long as the run).
    Sampling reads every process's stat: about 1 ms of this process's CPU a sample, 2 % of a core beside the run."""

    def __init__(self, root: int, interval: float = 0.05):
        self.interval = interval
        self.used: dict[int, float] = {}
        self.kind: dict[int, str] = {root: "driver"}
        self._lock = threading.Lock()  # sample() runs in the thread and, at a milestone, in the caller
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        with self._lock:
            self._sample()

    def _sample(self) -> None:
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
            stat = _proc_stat(pid)
            if stat is None:
                continue
            parent, seconds = stat
            if pid not in self.kind and parent in self.kind:  # a new descendant
                self.kind[pid] = "other"
            if pid in self.kind:
                self.used[pid] = seconds
                # a Ray worker renames itself as it goes (default_worker.py, ray::IDLE, ray::ClientAppActor):
                # its CPU counts where it ends (a process that has ended has no command line left)
                cmdline = _cmdline(pid)
                if cmdline and self.kind[pid] not in ("driver", "client actors"):
                    self.kind[pid] = process_kind(cmdline)

    def by_kind(self) -> dict[str, float]:
        totals = dict.fromkeys(CPU_COLUMNS, 0.0)
        with self._lock:
            for pid, seconds in self.used.items():
                totals[self.kind[pid]] += seconds
            totals["total"] = sum(self.used.values())
        return totals

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def stamped_output(cmd: list[str], env: dict | None = None, on_start: Callable[[int], None] | None = None,
                   on_line: Callable[[float, str], None] | None = None) -> tuple[list[tuple[float, str]], float, int]:
    """Run cmd with stdout and stderr together; each line as (seconds since the start, line) as it arrives (and
    handed to on_line), then the seconds at exit and the exit status. on_start gets the process id at once."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
    if on_start:
        on_start(proc.pid)
    lines = []
    for line in iter(proc.stdout.readline, ""):
        lines.append((time.perf_counter() - start, line.rstrip("\n")))
        if on_line:
            on_line(*lines[-1])
    rc = proc.wait()
    return lines, time.perf_counter() - start, rc


def cpu_until_round_1(cmd: list[str], env: dict | None = None):
    """stamped_output of cmd, and the CPU seconds by process kind its process tree had used when round 1 was done
    (None where no line said so)."""
    state: dict = {"cpu": None}

    def on_start(pid: int) -> None:
        state["tree"] = TreeCpu(pid)

    def on_line(_seconds: float, line: str) -> None:
        if state["cpu"] is None and MILESTONE_PATTERNS["round 1 done"].search(line):
            state["tree"].sample()
            state["cpu"] = state["tree"].by_kind()

    try:
        lines, exit_s, rc = stamped_output(cmd, env, on_start, on_line)
    finally:
        if "tree" in state:
            state["tree"].stop()
    return lines, exit_s, rc, state["cpu"]


def milestone_seconds(lines: list[tuple[float, str]], exit_s: float) -> dict[str, float | None]:
    """Seconds at each milestone (None where no line marked it), from the stamped lines of one run."""
    marks: dict[str, float | None] = dict.fromkeys(MILESTONE_PATTERNS)
    for seconds, line in lines:
        for name, pattern in MILESTONE_PATTERNS.items():
            if marks[name] is None and pattern.search(line):
                marks[name] = seconds
    marks["exit"] = exit_s
    return marks


def phase_seconds(marks: dict[str, float | None]) -> dict[str, float | None]:
    """Seconds of each phase between consecutive milestones (None where one end is missing)."""
    at = {None: 0.0, **marks}
    return {phase: None if at[a] is None or at[b] is None else at[b] - at[a] for phase, (a, b) in PHASES.items()}


def wall_seconds(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def ray_start_seconds(env: dict | None = None) -> float:
    out = subprocess.run(RAY_START, check=True, capture_output=True, text=True, env=env).stdout
    return float(out.strip().splitlines()[-1])


def machine_line() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{time.strftime('%Y-%m-%d %H:%M')} | {platform.node()} | {cpu} | {os.cpu_count()} cores | load {load}"


def fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """One markdown table: a row per rep, then the median of each column over the reps that have it."""
    print(f"\n{title}\n| rep | " + " | ".join(columns) + " |\n|---|" + "---:|" * len(columns))
    for i, row in enumerate(rows, 1):
        print(f"| {i} | " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    medians = [statistics.median(v) if (v := [r[c] for r in rows if r.get(c) is not None]) else None for c in columns]
    print("| median | " + " | ".join(fmt(m) for m in medians) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=["experiment=smoke", "num_rounds=1"], help="fedkt.sim overrides")
    parser.add_argument("--show-log", action="store_true", help="print the last run's stamped output")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="fedkt-startup-")
    env = dict(os.environ, FEDKT_CACHE=os.path.join(tmp, "cache"), PYTHONUNBUFFERED="1")

    def sim(name: str):
        return cpu_until_round_1([sys.executable, "-m", "fedkt.sim", *args.set, f"hydra.run.dir={tmp}/{name}"], env)

    print(machine_line() + f" | overrides: {' '.join(args.set)} | {args.reps} reps (before)")
    lines, _, rc, _ = sim("warm")  # untimed: data cache and page cache warm, as for a user's second run
    if rc != 0:
        sys.exit("the warm-up run failed:\n" + "\n".join(line for _, line in lines[-30:]))

    rows, cpu_rows, last_lines = [], [], []
    for rep in range(args.reps):
        steps = {"bare imports": lambda: wall_seconds(BARE_IMPORTS, env),
                 "import fedkt.client_app": lambda: wall_seconds(ACTOR_IMPORTS, env),
                 "ray.init alone": lambda: ray_start_seconds(env),
                 "run": lambda: sim(f"rep{rep}")}
        order = list(steps)[rep % len(steps):] + list(steps)[:rep % len(steps)]
        row = {name: steps[name]() for name in order}
        lines, exit_s, rc, cpu = row.pop("run")
        if rc != 0:
            print(f"rep {rep + 1}: the run exited with {rc}; its last lines:\n" + "\n".join(l for _, l in lines[-10:]))
        marks = milestone_seconds(lines, exit_s)
        row.update(marks, **phase_seconds(marks))
        done = marks["round 1 done"]
        row["round 1 done / bare imports (x)"] = None if done is None else done / row["bare imports"]
        row["first fedkt line - bare imports"] = (None if marks["first fedkt line"] is None
                                                  else marks["first fedkt line"] - row["bare imports"])
        rows.append(row)
        last_lines = lines
        if cpu is not None:
            cores = os.cpu_count() or 1
            cpu_rows.append({**cpu, f"total / {cores} cores (floor)": cpu["total"] / cores,
                             "floor / bare imports (x)": cpu["total"] / cores / row["bare imports"]})

    print(machine_line() + " (after)")
    print_table("Seconds since the start of each subprocess (side by side, one rep per row)", rows,
                ["bare imports", "import fedkt.client_app", "ray.init alone", *MILESTONES,
                 "round 1 done / bare imports (x)"])
    print_table("Phases of the run (seconds between its milestones)", rows,
                [*PHASES, "first fedkt line - bare imports"])
    if cpu_rows:
        print_table("CPU seconds used until round 1 was done, by the run and the processes it started", cpu_rows,
                    list(cpu_rows[0]))
    if args.show_log:
        print("\nThe last run's output, stamped here:")
        for seconds, line in last_lines:
            print(f"{seconds:7.2f}  {line}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
