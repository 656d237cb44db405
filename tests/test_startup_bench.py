"""bench/startup.py's parsing of a run's output into milestones and phases, and its count of the CPU the run's processes
used (no Ray; nothing here is timed)."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "startup.py"
spec = importlib.util.spec_from_file_location("startup_bench", SCRIPT)
startup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(startup)

# the lines a smoke run prints, in the run's own format (texts of fedkt.sim, fedkt.strategy, fedkt.results)
RUN_LINES = [
    "/venv/lib/python3.11/site-packages/something.py:1: UserWarning: round 1/1 | not ours",
    "[2026-11-29 18:26:15,398][fedkt][INFO] - ktpfl on type1, 4 clients (4 lenet), 1 rounds -> /tmp/x/rep0",
    "[2026-11-29 18:26:17,001][fedkt][INFO] - round 1/1 started: 4 clients training",
    "[2026-11-29 18:26:20,500][fedkt][INFO] - round 1/1 training: 4/4 clients done, 3 s",
    "[2026-11-29 18:26:21,000][fedkt][INFO] - round 1/1 | mean test acc 0.1200 (min 0.100, max 0.150) | clients 4/4,"
    " failures 0, rejected 0 | 4.0 s | about 0 s left",
    "[2026-11-29 18:26:21,100][fedkt][INFO] - round 2/2 | mean test acc 0.2000 (later round: not a milestone)",
    "[2026-11-29 18:26:21,500][fedkt][INFO] - final mean test accuracy 0.1200 after 1 rounds, 6 s; results in /tmp/x",
]


def test_milestones_come_from_the_stamps_of_the_first_matching_lines():
    stamped = [(0.5 + i, line) for i, line in enumerate(RUN_LINES)]
    marks = startup.milestone_seconds(stamped, exit_s=20.0)
    assert marks == {"first fedkt line": 1.5, "data loaded": 1.5, "round 1 started": 2.5, "Ray up (verbose)": None,
                     "actor pool (verbose)": None, "round 1 done": 4.5, "exit": 20.0}
    phases = startup.phase_seconds(marks)
    assert phases == {"imports+Hydra+config": 1.5, "data": 0.0, "to round 1 configured": 1.0,
                      "round 1 incl. Ray+actors start, warm-up": 2.0, "of it: Ray start (verbose)": None,
                      "of it: actor pool (verbose)": None, "of it: actors' imports+round 1 work (verbose)": None,
                      "after round 1 (rest, shutdown)": 15.5}


def test_a_verbose_run_splits_round_1_at_ray_and_the_actor_pool():
    verbose = [*RUN_LINES[:3],
               "[2026-11-29 18:26:17,100][flwr][DEBUG] - Initialising: RayBackend",
               "2026-11-29 18:26:21,574\tINFO worker.py:2012 -- Started a local Ray instance.",
               "[2026-11-29 18:26:22,407][flwr][DEBUG] - Constructed ActorPool with: 2 actors",
               *RUN_LINES[3:]]
    marks = startup.milestone_seconds([(float(i), line) for i, line in enumerate(verbose)], exit_s=30.0)
    assert (marks["round 1 started"], marks["Ray up (verbose)"], marks["actor pool (verbose)"],
            marks["round 1 done"]) == (2.0, 4.0, 5.0, 7.0)
    phases = startup.phase_seconds(marks)
    assert phases["of it: Ray start (verbose)"] == 2.0 and phases["of it: actor pool (verbose)"] == 1.0
    assert phases["of it: actors' imports+round 1 work (verbose)"] == 2.0
    assert phases["round 1 incl. Ray+actors start, warm-up"] == 5.0


def test_a_warning_first_and_a_run_that_stops_before_its_first_round():
    stamped = [(1.0, "[2026-11-29 18:26:14,000][fedkt][WARNING] - data.name=synthetic (experiment=smoke): ..."),
               (2.0, RUN_LINES[1]),
               (9.0, "[2026-11-29 18:26:30,000][fedkt][ERROR] - the simulation stopped: RuntimeError: no Ray")]
    marks = startup.milestone_seconds(stamped, exit_s=9.5)
    assert marks["first fedkt line"] == 1.0 and marks["data loaded"] == 2.0
    assert marks["round 1 started"] is None and marks["round 1 done"] is None
    phases = startup.phase_seconds(marks)
    assert phases["data"] == 1.0
    assert phases["to round 1 configured"] is None and phases["round 1 incl. Ray+actors start, warm-up"] is None
    assert phases["after round 1 (rest, shutdown)"] is None


def test_output_is_stamped_here_line_by_line_not_parsed_from_the_log():
    # the log's timestamps lie (year 2000): the stamps must be this process's, in order, within the run
    script = ("import sys, time\n"
              "for line in sys.argv[1:]:\n"
              "    out = sys.stderr if 'started' in line else sys.stdout\n"
              "    print(line.replace('2026-11-29', '2000-01-01'), file=out)\n"
              "    time.sleep(0.05)\n")
    lines, exit_s, rc = startup.stamped_output([sys.executable, "-u", "-c", script, *RUN_LINES])
    assert rc == 0
    assert [line for _, line in lines] == [line.replace("2026-11-29", "2000-01-01") for line in RUN_LINES]
    stamps = [seconds for seconds, _ in lines]
    assert stamps == sorted(stamps) and 0 <= stamps[0] and stamps[-1] <= exit_s
    marks = startup.milestone_seconds(lines, exit_s)
    assert marks["round 1 started"] == stamps[2] and marks["round 1 done"] == stamps[4] and marks["exit"] == exit_s


def test_table_has_a_median_row_and_a_dash_for_what_is_missing(capsys):
    rows = [{"a": 1.0, "b": None}, {"a": 3.0, "b": 2.0}, {"a": 2.0, "b": 4.0}]
    startup.print_table("t", rows, ["a", "b"])
    out = capsys.readouterr().out.splitlines()
    assert "| 1 | 1.00 | — |" in out
    assert out[-1] == "| median | 2.00 | 3.00 |"


def test_process_kinds_follow_the_names_ray_gives_its_processes():
    assert startup.process_kind("ray::ClientAppActor.run") == "client actors"
    assert startup.process_kind("ray::IDLE") == "Ray's idle workers"
    assert startup.process_kind("/venv/bin/python /venv/lib/python3.11/site-packages/ray/_private/workers/"
                                "default_worker.py --node-ip-address=127.0.0.1") == "Ray's idle workers"
    assert startup.process_kind("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --x") == \
        "Ray's services"
    assert startup.process_kind("/bin/sh -c cat /sys/module/amdgpu/initstate") == "other"


BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {}: pass\n"


def test_the_cpu_of_every_descendant_counts_until_round_1_and_none_after():
    # the run's process starts a child that burns 0.6 s of CPU and ends, says round 1 is done, then burns 1.5 s
    # more itself: the count holds the child's 0.6 s (under "other") and none of the work after the milestone
    script = ("import subprocess, sys, time\n"
              f"subprocess.run([sys.executable, '-c', {BURN.format(0.6)!r}])\n"
              "print('[t][fedkt][INFO] - round 1/1 | mean test acc 0.1', flush=True)\n"
              + BURN.format(1.5))
    lines, exit_s, rc, cpu = startup.cpu_until_round_1([sys.executable, "-u", "-c", script])
    assert rc == 0 and exit_s > 2.0
    assert 0.5 <= cpu["other"] <= 0.75
    assert cpu["driver"] < 0.5 and cpu["client actors"] == 0.0
    assert cpu["total"] == sum(v for k, v in cpu.items() if k != "total") and cpu["total"] < 1.2


def test_a_run_that_never_finishes_round_1_has_no_cpu_count():
    lines, _, rc, cpu = startup.cpu_until_round_1([sys.executable, "-c", "print('no round', flush=True)"])
    assert rc == 0 and cpu is None
