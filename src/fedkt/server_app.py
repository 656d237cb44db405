"""The ServerApp: the KnowledgeTransfer (or FedAvg) strategy run for `num_rounds` rounds (config by closure),
`run_and_record`, which runs it (in the simulation or on a SuperLink) and keeps the run directory, and the
deployed ServerApp `app` (`flwr run`), configured by the run config (fedkt.app_config)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from flwr.common import Context
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.superlink.grid import InMemoryGrid

from fedkt.app_config import cfg_from_run_config, check_data_root, check_federation_size, make_run_dir
from fedkt.config import ConfigError, RunConfig
from fedkt.plots import write_run_figures
from fedkt.results import RunRecorder, dump_json
from fedkt.tracking import TensorBoardLog
from fedkt.fedavg import make_strategy

log = logging.getLogger("fedkt")


def make_server_app(cfg: RunConfig, num_classes: int, on_round=None, holder: dict | None = None,
                    state: dict | None = None) -> ServerApp:
    """A ServerApp over `cfg`, continuing from a checkpointed server `state` if given; the strategy it
    builds is put in holder["strategy"] for the caller."""

    def server_fn(context: Context) -> ServerAppComponents:
        strategy = make_strategy(cfg, num_classes=num_classes, on_round=on_round)
        if state is not None:
            strategy.load_state_dict(state)
        if holder is not None:
            holder["strategy"] = strategy
        rounds_left = cfg.num_rounds - strategy.round_offset
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds_left, round_timeout=cfg.round_timeout or None))

    return ServerApp(server_fn=server_fn)


def run_and_record(cfg: RunConfig, run_dir: Path, num_classes: int, recorder: RunRecorder,
                   launch: Callable[[ServerApp], None], state: dict | None = None) -> dict:
    """Build the ServerApp, hand it to `launch` (the Ray simulation, or a SuperLink's grid), and after every
    round write the records and the checkpoint; at the end (or on failure) the summary and the figures."""
    holder: dict = {}
    n = cfg.num_clients
    board = TensorBoardLog(run_dir) if cfg.logging.tensorboard else None

    def on_round(record, rows, c):
        answered = {row["partition_id"] for row in rows if "test_acc" in row}
        missing = [p for p in range(n) if p not in answered]
        record["missing_clients"] = " ".join(map(str, missing))  # a column of metrics.csv / metrics.json
        if missing:
            nodes = {p: node for node, p in holder["strategy"].node_to_partition.items()}
            names = ", ".join(f"{p} (node {nodes[p]})" if p in nodes else str(p) for p in missing)
            log.warning("round %d: no test result from client(s) %s: lost, failed, or past round_timeout=%s s; "
                        "the round went on without them", record["round"], names, cfg.round_timeout)
        recorder(record, rows, c)
        if board is not None:
            board(record, rows, c)
        recorder.save_checkpoint(holder["strategy"].state_dict())

    server_app = make_server_app(cfg, num_classes=num_classes, on_round=on_round, holder=holder, state=state)
    if len(recorder.rounds) < cfg.num_rounds:
        try:
            launch(server_app)
        except BaseException as error:  # keep what the finished rounds wrote, and say why it stopped
            recorder.finish("failed", f"{type(error).__name__}: {error}")
            write_run_figures(run_dir)
            raise
        finally:
            if board is not None:
                board.close()
    done = len(recorder.rounds) == cfg.num_rounds
    summary = recorder.finish("completed" if done else "incomplete")
    write_run_figures(run_dir)
    final = summary["final_mean_test_acc"]
    log.info("final mean test accuracy %s after %d rounds, %.0f s; results in %s",
             "n/a" if final is None else f"{final:.4f}", summary["rounds_completed"], summary["wall_seconds"], run_dir)
    return summary


# -- the deployed ServerApp -----------------------------------------------------------------------

def run_server(grid, context: Context) -> dict:
    """What the deployed ServerApp does: the simulation's ServerApp over the run config, on the SuperLink's
    grid, recording every round into a new run directory (the same files as a simulation run)."""
    configure_logging(bool(context.run_config.get("logging.verbose", False)))
    try:
        cfg = cfg_from_run_config(context.run_config)
        if isinstance(grid, InMemoryGrid):  # a simulation: every SuperNode exists from the start
            check_federation_size(len(list(grid.get_node_ids())), cfg.num_clients)
            check_data_root(context.run_config, cfg)
    except ConfigError as error:
        log.error("fedkt: %s", error)
        log.error("fedkt: the run FAILED before it started (`flwr run` exits 0 all the same)")
        raise
    warn_runtime_install()
    if isinstance(grid, InMemoryGrid):
        warn_low_priority_clients()
    log.info("paths: data.root=%s, output_dir=%s (relative ones are taken from %s)", cfg.data.root,
             cfg.output_dir, Path.cwd())
    run_dir = make_run_dir(cfg, context.run_id)
    cfg = cfg.replace(run_dir=str(run_dir))
    dump_json(run_dir / "config.json", cfg.to_dict())
    log.info("%s on %s, %d clients, %d rounds -> %s", cfg.algorithm.name, cfg.partition.scheme,
             cfg.num_clients, cfg.num_rounds, run_dir)
    try:
        return run_and_record(cfg, run_dir, cfg.data.num_classes, RunRecorder(run_dir, cfg),
                              lambda server_app: server_app(grid, context))
    except BaseException as error:
        log.error("fedkt: the run FAILED (`flwr run` exits 0 all the same): %s; results so far in %s", error,
                  run_dir)
        raise


def warn_runtime_install() -> None:
    """Flower installs the app's dependencies per run (a fresh environment: gigabytes of torch) unless the
    SuperLink was started without it; say so, and how, when this ServerApp runs in such an environment."""
    env = os.environ.get("VIRTUAL_ENV", "")
    if "runtime-envs" in Path(env).parts:
        log.warning("Flower installed this app's dependencies for this run into %s (gigabytes, every run): "
                    "start the SuperLink with --disable-runtime-dependency-installation, or for the local "
                    "simulation stop it and run `export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1` before "
                    "the next `flwr run` (docs/deploy.md)", env)


def warn_low_priority_clients() -> None:
    """On Flower's simulation Ray starts the clients' actors RAY_worker_niceness nice levels below the process
    that started it (Ray's default: 15), so any other work on the machine takes the cores from the clients
    (docs/RESULTS.md, the clients' priority). `python -m fedkt.sim` sets it to 0; under `flwr run` it comes from
    the environment the local SuperLink was started in: say so when it is not set there."""
    if "RAY_worker_niceness" not in os.environ:
        log.warning("the clients' Ray actors run 15 nice levels below this run (Ray's default), so any other "
                    "work on this machine takes the cores from them: stop the local SuperLink "
                    "(`flower-superlink`) and run `export RAY_worker_niceness=0` before the next `flwr run` "
                    "(`. .venv/bin/activate` exports it)")


def configure_logging(verbose: bool) -> None:
    """In the ServerApp process: our progress lines go through Flower's log handlers, which show them
    and send them to the SuperLink (`flwr run --stream`, `flwr log`); Flower's own INFO lines only when
    logging.verbose, as in the simulation. The root logger is left alone (an INFO root logger would log,
    and send, every HTTP request that sends the logs)."""
    ours, flower = logging.getLogger("fedkt"), logging.getLogger("flwr")
    ours.setLevel(logging.INFO)
    for handler in flower.handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)
    ours.propagate = not ours.handlers
    flower.setLevel(logging.DEBUG if verbose else logging.WARNING)


# The deployed ServerApp (`flwr run`, pyproject's [tool.flwr.app.components]): the same ServerApp as the
# simulation's, configured by the run config, recording into output_dir.
app = ServerApp()


@app.main()
def main(grid, context: Context) -> None:
    run_server(grid, context)
