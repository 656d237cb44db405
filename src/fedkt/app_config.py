"""The deployed apps' configuration (`flwr run`, docs/deploy.md): Flower's run config and a SuperNode's node
config turned into the RunConfig `python -m fedkt.sim` uses, and the name of a deployed run's directory.

- the run config (`[tool.flwr.app.config]` in pyproject.toml, generated from conf/ by
  `python -m fedkt.deploy presets`, overridden by `flwr run --run-config`) is flat with dotted keys;
  `cfg_from_run_config` nests it and builds the checked RunConfig (fedkt.config.build_config);
- each SuperNode's `--node-config` names its own data: `partition-id`, `num-partitions` (must equal
  num_clients), and optionally `data-root`, `data-name`, `cache-dir` and `state-dir` (`client_cfg`);
- the ServerApp holds no data: it takes the number of classes from `data.num_classes`, and writes the
  run directory (the same files as a simulation run) under `output_dir`, one timestamped folder per run
  (`make_run_dir`).

Relative paths (data.root, data.cache_dir, output_dir, state-dir) are taken from the working folder of the
process that reads them: the SuperLink's for the ServerApp (and for the whole local simulation), each
SuperNode's for its clients. Below the Flower adapters: this module imports fedkt.config only.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fedkt.config import ConfigError, RunConfig, build_config, flatten, synthetic_data_note, unflatten

log = logging.getLogger("fedkt")

NODE_KEYS = ("partition-id", "num-partitions", "data-root", "data-name", "cache-dir", "state-dir")
PATH_KEYS = ("data.root", "data.cache_dir", "output_dir")  # relative: from the reading process's folder


def federation_size_fix(num_clients: int) -> str:
    """The one line that says how to get one SuperNode per client, in a simulation and in a deployment."""
    return (f"fix: local simulation `flwr run . --federation-config 'num-supernodes={num_clients}'`; "
            f"deployment: {num_clients} SuperNodes, each with --node-config 'partition-id=I "
            f"num-partitions={num_clients}' (I = 0..{num_clients - 1})")


def check_federation_size(num_nodes: int, num_clients: int) -> None:
    """fedkt runs one client per SuperNode: a simulation with another number of SuperNodes cannot work."""
    if num_nodes != num_clients:
        raise ConfigError(f"the run has num_clients={num_clients} but the federation has {num_nodes} "
                          f"SuperNodes (fedkt runs one client per SuperNode); {federation_size_fix(num_clients)}")


def absolute_paths(cfg: dict) -> dict:
    """The config dict with data.root, data.cache_dir and output_dir made absolute against this process's working
    folder (the SuperLink's, or a SuperNode's); empty values (cache_dir "") stay empty."""
    flat = flatten(cfg)
    for key in PATH_KEYS:
        value = str(flat.get(key, ""))
        if value:
            flat[key] = str(Path(value).expanduser().resolve())
    return unflatten(flat)


def cfg_from_run_config(run_config) -> RunConfig:
    """Flower's flat run config ({"client.lr": 0.02, ...}) as the checked RunConfig, paths made absolute (the
    note that generated data reads no data.root is logged here, while the path is still as given)."""
    values = unflatten(dict(run_config))
    cfg = build_config(values)
    if cfg.resume:
        raise ConfigError(f"resume={cfg.resume!r}: resuming a killed run is supported by "
                          "`python -m fedkt.sim resume=RUN_DIR` only, not by `flwr run`")
    note = synthetic_data_note(cfg)
    if note:
        log.warning("%s", note)
    return build_config(absolute_paths(values))


def check_data_root(run_config, cfg: RunConfig) -> None:
    """In a simulation the clients read data.root on the SuperLink's machine: a path that is not there
    stops the run at once, saying where a relative path was looked for and how to give an absolute one."""
    if cfg.data.name == "synthetic" or cfg.data.download:
        return
    root = Path(cfg.data.root)
    if not root.exists():
        given = run_config.get("data.root")
        raise ConfigError(
            f"data.root={given!r} is not there (looked for {root}; relative paths are taken from the folder the "
            f"SuperLink was started in, {Path.cwd()}); give an absolute path: --run-config "
            "'data.root=\"/abs/path/cifar10-jpeg.tar.gz\"' (or a file from `python -m fedkt.deploy run-config "
            "experiment=... data.root=PATH`, which writes it absolute)")


def client_cfg(run_config, node_config, run_id: int) -> RunConfig:
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
    n = build_config(cfg).num_clients  # the run config alone must hold
    if node["num-partitions"] != n:
        raise ConfigError(f"num-partitions={node['num-partitions']} SuperNodes but the run has num_clients={n}; "
                          f"{federation_size_fix(n)}")
    if not 0 <= node["partition-id"] < n:
        raise ConfigError(f"--node-config partition-id={node['partition-id']} is outside 0..{n - 1}")
    unknown = sorted(set(node) - set(NODE_KEYS))
    if unknown:
        log.debug("node config keys not used by fedkt: %s", ", ".join(unknown))
    data = cfg.setdefault("data", {})
    for node_key, cfg_key in (("data-root", "root"), ("data-name", "name"), ("cache-dir", "cache_dir")):
        if node_key in node:
            data[cfg_key] = str(node[node_key])
    cfg = build_config(absolute_paths(cfg))
    state_root = Path(str(node.get("state-dir") or Path(cfg.output_dir) / "client-state"))
    return cfg.replace(run_dir=str((state_root.expanduser() / f"run_{run_id}").resolve()))


def make_run_dir(cfg: RunConfig, run_id: int) -> Path:
    """output_dir/<date>_<time>_<algorithm>_<partition>_s<seed>_run<run id>/, created."""
    name = (f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{cfg.algorithm.name}_{cfg.partition.scheme}"
            f"_s{cfg.seed}_run{run_id}")
    run_dir = (Path(cfg.output_dir) / name).resolve()
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir
