"""Real deployment: the ServerApp and ClientApp of `flwr run` on a SuperLink and SuperNodes (docs/deploy.md).

The apps are the simulation's: `fedkt.server_app.make_server_app` (the KnowledgeTransfer strategy) and
`fedkt.client_app.KnowledgeClient`. What differs is where their configuration comes from:

- the run config (`[tool.flwr.app.config]` in pyproject.toml, overridden by `flwr run --run-config`) is
  flat with dotted keys; `cfg_from_run_config` turns it into the nested dict `python -m fedkt.sim` uses and
  checks it (fedkt.config.validate);
- each SuperNode's `--node-config` names its own data: `partition-id`, `num-partitions` (must equal
  num_clients), and optionally `data-root`, `data-name`, `cache-dir` and `state-dir` (`client_cfg`);
- the ServerApp holds no data: it takes the number of classes from `data.num_classes`, and writes the
  run directory (the same files as a simulation run) under `output_dir`, one timestamped folder per run.

    python -m fedkt.deploy run-config [HYDRA OVERRIDES...]   # a --run-config TOML for any preset
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from fedkt.config import ConfigError, flatten, get, unflatten, validate
from fedkt.results import RunRecorder, dump_json

log = logging.getLogger("fedkt")

DEPLOY_ONLY_KEYS = ("output_dir",)  # run-config keys that only `flwr run` reads
NODE_KEYS = ("partition-id", "num-partitions", "data-root", "data-name", "cache-dir", "state-dir")


# -- configuration ----------------------------------------------------------------------------------

def cfg_from_run_config(run_config) -> dict:
    """Flower's flat run config ({"client.lr": 0.02, ...}) as the checked nested config dict."""
    cfg = unflatten(dict(run_config))
    validate(cfg)
    num_classes = get(cfg, "data.num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ConfigError(f"data.num_classes={num_classes!r} must be an integer >= 2")
    if str(get(cfg, "resume")):
        raise ConfigError(f"resume={get(cfg, 'resume')!r}: resuming a killed run is supported by "
                          "`python -m fedkt.sim resume=RUN_DIR` only, not by `flwr run`")
    return cfg


def client_cfg(run_config, node_config, run_id: int) -> dict:
    """The config one SuperNode's clients run with: the run config, with the data named by the node's
    --node-config (data-root, data-name, cache-dir) and the client state kept under its state-dir."""
    cfg = unflatten(dict(run_config))
    node = dict(node_config)
    for key in ("partition-id", "num-partitions"):
        if key not in node:
            raise ConfigError(f"this SuperNode's --node-config has no {key}; start it with "
                              f"--node-config 'partition-id=I num-partitions=N' (N = num_clients)")
        if not isinstance(node[key], int) or isinstance(node[key], bool):
            raise ConfigError(f"--node-config {key}={node[key]!r} must be an integer")
    n = int(get(cfg, "num_clients"))
    if node["num-partitions"] != n:
        raise ConfigError(f"--node-config num-partitions={node['num-partitions']} but the run has "
                          f"num_clients={n}: give every SuperNode num-partitions={n}, or run with "
                          f"--run-config 'num_clients={node['num-partitions']}'")
    if not 0 <= node["partition-id"] < n:
        raise ConfigError(f"--node-config partition-id={node['partition-id']} is outside 0..{n - 1}")
    unknown = sorted(set(node) - set(NODE_KEYS))
    if unknown:
        log.debug("node config keys not used by fedkt: %s", ", ".join(unknown))
    data = cfg.setdefault("data", {})
    for node_key, cfg_key in (("data-root", "root"), ("data-name", "name"), ("cache-dir", "cache_dir")):
        if node_key in node:
            data[cfg_key] = str(node[node_key])
    validate(cfg)
    state_root = Path(str(node.get("state-dir") or Path(str(get(cfg, "output_dir"))) / "client-state"))
    cfg["run_dir"] = str((state_root / f"run_{run_id}").resolve())
    return cfg


def run_config_overrides(overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The flat run config `python -m fedkt.sim OVERRIDES` would run with, minus hydra's own keys:
    a TOML file of it is a `flwr run --run-config` for any preset (experiment=paper_type1, ...)."""
    from fedkt.config import compose

    cfg = compose(list(overrides))
    cfg.pop("hydra", None)
    cfg.pop("defaults", None)
    return flatten(cfg)


# -- the ServerApp --------------------------------------------------------------------------------

def make_run_dir(cfg: dict, run_id: int) -> Path:
    """output_dir/<date>_<time>_<algorithm>_<partition>_s<seed>_run<run id>/, created."""
    name = (f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{get(cfg, 'algorithm.name')}_{get(cfg, 'partition.scheme')}"
            f"_s{get(cfg, 'seed')}_run{run_id}")
    run_dir = (Path(str(get(cfg, "output_dir"))) / name).resolve()
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def run_server(grid, context) -> dict:
    """What the deployed ServerApp does: the simulation's ServerApp over the run config, on the SuperLink's
    grid, recording every round into a new run directory (the same files as a simulation run)."""
    from fedkt.server_app import run_and_record

    cfg = cfg_from_run_config(context.run_config)
    configure_logging(bool(get(cfg, "logging.verbose")))
    run_dir = make_run_dir(cfg, context.run_id)
    cfg = dict(cfg, run_dir=str(run_dir))
    dump_json(run_dir / "config.json", cfg)
    log.info("%s on %s, %d clients, %d rounds -> %s", get(cfg, "algorithm.name"), get(cfg, "partition.scheme"),
             cfg["num_clients"], cfg["num_rounds"], run_dir)
    try:
        return run_and_record(cfg, run_dir, int(get(cfg, "data.num_classes")), RunRecorder(run_dir, cfg),
                              lambda server_app: server_app(grid, context))
    except BaseException as error:
        log.error("the run stopped: %s; results so far in %s", error, run_dir)
        raise


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


# -- the ClientApp ---------------------------------------------------------------------------------

def client_fn(context):
    from fedkt.client_app import KnowledgeClient

    cfg = client_cfg(context.run_config, context.node_config, context.run_id)
    return KnowledgeClient(cfg, context).to_client()


# -- CLI ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "run-config":
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    import tomli_w

    flat = run_config_overrides(argv[1:])
    sys.stdout.write(tomli_w.dumps(flat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
