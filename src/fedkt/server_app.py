"""The ServerApp: the KnowledgeTransfer strategy run for `num_rounds` rounds (config by closure)."""

from __future__ import annotations

from flwr.common import Context
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from fedkt.config import get
from fedkt.strategy import KnowledgeTransfer


def make_server_app(cfg: dict, num_classes: int, on_round=None, holder: dict | None = None,
                    state: dict | None = None) -> ServerApp:
    """A ServerApp over `cfg`, continuing from a checkpointed server `state` if given; the strategy it
    builds is put in holder["strategy"] for the caller."""

    def server_fn(context: Context) -> ServerAppComponents:
        strategy = KnowledgeTransfer(cfg, num_classes=num_classes, on_round=on_round)
        if state is not None:
            strategy.load_state_dict(state)
        if holder is not None:
            holder["strategy"] = strategy
        timeout = float(get(cfg, "round_timeout")) or None
        rounds_left = int(cfg["num_rounds"]) - strategy.round_offset
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds_left, round_timeout=timeout))

    return ServerApp(server_fn=server_fn)


# The deployed ServerApp (`flwr run`, pyproject's [tool.flwr.app.components]): the same ServerApp as the
# simulation's, configured by the run config, recording into output_dir (fedkt.deploy).
app = ServerApp()


@app.main()
def main(grid, context: Context) -> None:
    from fedkt.deploy import run_server

    run_server(grid, context)
