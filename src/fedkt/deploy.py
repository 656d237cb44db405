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
    python -m fedkt.deploy presets [DIR]                      # rewrite presets/*.toml, one per conf/experiment

On Flower's `local` simulation (`flwr run .` with no connection) the number of simulated SuperNodes must
equal num_clients (one client per SuperNode): the ServerApp checks it before anything starts and says, in
one line, the `--federation-config` that fixes it. Relative paths (data.root, data.cache_dir, output_dir,
state-dir) are taken from the working folder of the process that reads them: the SuperLink's for the
ServerApp (and for the whole local simulation), each SuperNode's for its clients; the run's first lines
print them resolved.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from flwr.superlink.grid import InMemoryGrid

from fedkt.config import ConfigError, flatten, get, synthetic_data_note, unflatten, validate
from fedkt.results import RunRecorder, dump_json

log = logging.getLogger("fedkt")

DEPLOY_ONLY_KEYS = ("output_dir",)  # run-config keys that only `flwr run` reads
NODE_KEYS = ("partition-id", "num-partitions", "data-root", "data-name", "cache-dir", "state-dir")
PATH_KEYS = ("data.root", "data.cache_dir", "output_dir")  # relative: from the reading process's folder
PRESETS = ("smoke", "quick", "paper_cpu", "paper_type1", "paper_type2")  # conf/experiment/ -> presets/*.toml
PRESET_DIR = Path(__file__).resolve().parents[2] / "presets"


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
    """cfg with data.root, data.cache_dir and output_dir made absolute against this process's working
    folder (the SuperLink's, or a SuperNode's); empty values (cache_dir "") stay empty."""
    flat = flatten(cfg)
    for key in PATH_KEYS:
        value = str(flat.get(key, ""))
        if value:
            flat[key] = str(Path(value).expanduser().resolve())
    return unflatten(flat)


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
    return absolute_paths(cfg)


def check_data_root(run_config, cfg: dict) -> None:
    """In a simulation the clients read data.root on the SuperLink's machine: a path that is not there
    stops the run at once, saying where a relative path was looked for and how to give an absolute one."""
    if get(cfg, "data.name") == "synthetic" or bool(get(cfg, "data.download")):
        return
    root = Path(str(get(cfg, "data.root")))
    if not root.exists():
        given = run_config.get("data.root")
        raise ConfigError(
            f"data.root={given!r} is not there (looked for {root}; relative paths are taken from the folder the "
            f"SuperLink was started in, {Path.cwd()}); give an absolute path: --run-config "
            "'data.root=\"/abs/path/cifar10-jpeg.tar.gz\"' (or a file from `python -m fedkt.deploy run-config "
            "experiment=... data.root=PATH`, which writes it absolute)")


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
    validate(cfg)
    cfg = absolute_paths(cfg)
    state_root = Path(str(node.get("state-dir") or Path(str(get(cfg, "output_dir"))) / "client-state"))
    cfg["run_dir"] = str((state_root.expanduser() / f"run_{run_id}").resolve())
    return cfg


def run_config_overrides(overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The flat run config `python -m fedkt.sim OVERRIDES` would run with, minus hydra's own keys:
    a TOML file of it is a `flwr run --run-config` for any preset (experiment=paper_type1, ...)."""
    from fedkt.config import compose

    cfg = compose(list(overrides))
    cfg.pop("hydra", None)
    cfg.pop("defaults", None)
    flat = flatten(cfg)
    given = {o.split("=", 1)[0].lstrip("+") for o in overrides if "=" in o}
    for key in PATH_KEYS:  # a path given on the command line is written absolute (resolved here, now)
        if key in given and str(flat[key]):
            flat[key] = str(Path(str(flat[key])).expanduser().resolve())
    return flat


def preset_file(preset: str) -> str:
    """presets/<preset>.toml: the run config of `python -m fedkt.sim experiment=<preset>`, with a header
    that says how to run it on the local simulation (the federation size it needs)."""
    import tomli_w

    flat = run_config_overrides([f"experiment={preset}"])
    n = flat["num_clients"]
    data = ("" if flat["data.name"] == "synthetic" else
            f"#   data.root is relative: set it to your CIFAR-10 (absolute path), or generate your own file:\n"
            f"#   python -m fedkt.deploy run-config experiment={preset} data.root=PATH > my.toml\n")
    header = (f"# Generated by `python -m fedkt.deploy presets` from conf/ (experiment={preset}); do not edit.\n"
              f"# flwr run . --stream --run-config presets/{preset}.toml --federation-config 'num-supernodes={n}'\n"
              f"{data}")
    return header + tomli_w.dumps(flat)


def write_presets(folder: Path = PRESET_DIR) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for preset in PRESETS:
        path = folder / f"{preset}.toml"
        path.write_text(preset_file(preset))
        written.append(path)
    return written


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

    configure_logging(bool(context.run_config.get("logging.verbose", False)))
    try:
        cfg = cfg_from_run_config(context.run_config)
        if isinstance(grid, InMemoryGrid):  # a simulation: every SuperNode exists from the start
            check_federation_size(len(list(grid.get_node_ids())), int(cfg["num_clients"]))
            check_data_root(context.run_config, cfg)
    except ConfigError as error:
        log.error("fedkt: %s", error)
        log.error("fedkt: the run FAILED before it started (`flwr run` exits 0 all the same)")
        raise
    warn_runtime_install()
    note = synthetic_data_note(unflatten(dict(context.run_config)))
    if note:
        log.warning("%s", note)
    log.info("paths: data.root=%s, output_dir=%s (relative ones are taken from %s)", get(cfg, "data.root"),
             get(cfg, "output_dir"), Path.cwd())
    run_dir = make_run_dir(cfg, context.run_id)
    cfg = dict(cfg, run_dir=str(run_dir))
    dump_json(run_dir / "config.json", cfg)
    log.info("%s on %s, %d clients, %d rounds -> %s", get(cfg, "algorithm.name"), get(cfg, "partition.scheme"),
             cfg["num_clients"], cfg["num_rounds"], run_dir)
    try:
        return run_and_record(cfg, run_dir, int(get(cfg, "data.num_classes")), RunRecorder(run_dir, cfg),
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

USAGE = """usage: python -m fedkt.deploy run-config [HYDRA OVERRIDES...]
       python -m fedkt.deploy presets [DIR]"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "presets":
        for path in write_presets(Path(argv[1]) if len(argv) > 1 else PRESET_DIR):
            print(path)
        return 0
    if not argv or argv[0] != "run-config":
        print(USAGE, file=sys.stderr)
        return 2
    import tomli_w

    flat = run_config_overrides(argv[1:])
    sys.stdout.write(tomli_w.dumps(flat))
    n = flat["num_clients"]
    print(f"# run it on the local simulation with: flwr run . --stream --run-config FILE "
          f"--federation-config 'num-supernodes={n}'", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
