"""The ServerApp: the KnowledgeTransfer (or FedAvg) strategy run for `num_rounds` rounds (config by closure), and
`run_and_record`, which runs it (in the simulation or on a SuperLink) and keeps the run directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from flwr.common import Context
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from fedkt.config import get
from fedkt.plots import write_run_figures
from fedkt.results import RunRecorder
from fedkt.tracking import TensorBoardLog
from fedkt.fedavg import make_strategy

log = logging.getLogger("fedkt")


def make_server_app(cfg: dict, num_classes: int, on_round=None, holder: dict | None = None,
                    state: dict | None = None) -> ServerApp:
    """A ServerApp over `cfg`, continuing from a checkpointed server `state` if given; the strategy it
    builds is put in holder["strategy"] for the caller."""

    def server_fn(context: Context) -> ServerAppComponents:
        strategy = make_strategy(cfg, num_classes=num_classes, on_round=on_round)
        if state is not None:
            strategy.load_state_dict(state)
        if holder is not None:
            holder["strategy"] = strategy
        timeout = float(get(cfg, "round_timeout")) or None
        rounds_left = int(cfg["num_rounds"]) - strategy.round_offset
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds_left, round_timeout=timeout))

    return ServerApp(server_fn=server_fn)


def run_and_record(cfg: dict, run_dir: Path, num_classes: int, recorder: RunRecorder,
                   launch: Callable[[ServerApp], None], state: dict | None = None) -> dict:
    """Build the ServerApp, hand it to `launch` (the Ray simulation, or a SuperLink's grid), and after every
    round write the records and the checkpoint; at the end (or on failure) the summary and the figures."""
    holder: dict = {}
    n = int(cfg["num_clients"])
    board = TensorBoardLog(run_dir) if get(cfg, "logging.tensorboard") else None

    def on_round(record, rows, c):
        answered = {row["partition_id"] for row in rows if "test_acc" in row}
        missing = [p for p in range(n) if p not in answered]
        record["missing_clients"] = " ".join(map(str, missing))  # a column of metrics.csv / metrics.json
        if missing:
            nodes = {p: node for node, p in holder["strategy"].node_to_partition.items()}
            names = ", ".join(f"{p} (node {nodes[p]})" if p in nodes else str(p) for p in missing)
            log.warning("round %d: no test result from client(s) %s: lost, failed, or past round_timeout=%s s; "
                        "the round went on without them", record["round"], names, get(cfg, "round_timeout"))
        recorder(record, rows, c)
        if board is not None:
            board(record, rows, c)
        recorder.save_checkpoint(holder["strategy"].state_dict())

    server_app = make_server_app(cfg, num_classes=num_classes, on_round=on_round, holder=holder, state=state)
    if len(recorder.rounds) < int(cfg["num_rounds"]):
        try:
            launch(server_app)
        except BaseException as error:  # keep what the finished rounds wrote, and say why it stopped
            recorder.finish("failed", f"{type(error).__name__}: {error}")
            write_run_figures(run_dir)
            raise
        finally:
            if board is not None:
                board.close()
    done = len(recorder.rounds) == int(cfg["num_rounds"])
    summary = recorder.finish("completed" if done else "incomplete")
    write_run_figures(run_dir)
    final = summary["final_mean_test_acc"]
    log.info("final mean test accuracy %s after %d rounds, %.0f s; results in %s",
             "n/a" if final is None else f"{final:.4f}", summary["rounds_completed"], summary["wall_seconds"], run_dir)
    return summary


# The deployed ServerApp (`flwr run`, pyproject's [tool.flwr.app.components]): the same ServerApp as the
# simulation's, configured by the run config, recording into output_dir (fedkt.deploy).
app = ServerApp()


@app.main()
def main(grid, context: Context) -> None:
    from fedkt.deploy import run_server

    run_server(grid, context)
