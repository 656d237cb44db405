"""`python -m fedkt.sim`: one federated run (or a Hydra multirun of them) on Flower's Ray simulation engine.

    python -m fedkt.sim                                  # the `quick` preset: KT-pFL, type 1, 20 pre-trained clients
    python -m fedkt.sim algorithm=fedmd partition=type2 experiment=paper_type2 data.root=PATH
    python -m fedkt.sim -m algorithm=ktpfl,fedmd,local partition=type1,type2 seed=0,1
    python -m fedkt.sim resume=outputs/runs/RUN                # continue a killed run

Each run writes into its Hydra run directory under outputs/ (see fedkt.results for the files).
"""

from __future__ import annotations

import faulthandler
import functools
import json
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import hydra
import ray
import torch
from flwr.simulation import run_simulation
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedkt.client_app import make_client_app
from fedkt.config import (CONF_DIR, ConfigError, RunConfig, build_config, check_ray_resources, check_server_device,
                          cpu_bfloat16_units, gpus_per_client, recorded_config, synthetic_data_note)
from fedkt.data import DataError
from fedkt.learner import (FEW_PRIVATE_STEPS, bfloat16_warning, few_steps_warning, no_validation_advice, private_steps,
                           state_size, validation_readers)
from fedkt.results import RunRecorder, dump_json, read_checkpoint
from fedkt.server_app import run_and_record
from fedkt.strategy import FederationError
from fedkt.task import load_federation

log = logging.getLogger("fedkt")


def configure_logging(verbose: bool) -> None:
    log.setLevel(logging.INFO)
    if not log.handlers and not logging.getLogger().handlers:  # called outside Hydra (scripts, tests)
        logging.basicConfig(level=logging.WARNING, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def set_ray_environment() -> None:
    """How the Ray this process starts treats its actors; before ray.init."""
    # Ray hides the GPUs (CUDA_VISIBLE_DEVICES="") from actors that asked for none: a client without a GPU
    # share then runs on the CPU even with client.device=auto, instead of landing uncounted on GPU 0. Ray 2.55
    # does so by default and warns that a future version will not; this keeps it and drops the warning.
    os.environ["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "1"
    warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
    # Ray starts its workers 15 nice levels below their driver (a default for cluster nodes, to keep its own
    # processes responsive): on a shared machine any other work then takes the cores from the clients' training
    # (measured: 9 % of a core an actor beside two jobs at the driver's priority). The actors run at the driver's
    # own priority instead (`nice -n 5 python -m fedkt.sim` lowers both); RAY_worker_niceness, if set, decides.
    os.environ.setdefault("RAY_worker_niceness", "0")


@functools.lru_cache(maxsize=4)
def node_gpus(address: str) -> float:
    """GPUs of the node(s) that run the client actors: this machine's as torch sees them (a Ray started here
    is given exactly those), or with ray.address the GPU resources of that cluster's nodes."""
    if not address:
        return float(torch.cuda.device_count())
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        return cluster_gpus()
    finally:
        ray.shutdown()


def cluster_gpus() -> float:
    """The GPU resources of the nodes of the Ray cluster this process is connected to."""
    return float(sum(node["Resources"].get("GPU", 0) for node in ray.nodes() if node["Alive"]))


def backend_config(cfg: RunConfig) -> dict:
    """Ray resources per client (a GPU share where the clients' nodes have a GPU) and Ray's start-up arguments."""
    verbose = cfg.logging.verbose
    init_args: dict = {"logging_level": logging.INFO if verbose else logging.WARNING, "log_to_driver": verbose}
    address = cfg.ray.address
    gpus = node_gpus(address)
    if address:
        init_args["address"] = address
    else:
        # Ray starts a worker a CPU ahead as it starts and as many again for the first driver; the client actors use
        # none (each gets a new worker), so the second set only took the cores from the actors' start (bench/startup.py)
        init_args.update(num_cpus=os.cpu_count() or 1, num_gpus=int(gpus),
                         _system_config={"prestart_worker_first_driver": False})
    return {"client_resources": {"num_cpus": cfg.client.num_cpus, "num_gpus": gpus_per_client(cfg, gpus)},
            "init_args": init_args}


def run(cfg: dict | RunConfig, run_dir: str | Path) -> dict:
    """Check the config (a nested dict, as Hydra gives it, or a RunConfig) and the data, then run the
    federation; returns the summary (also summary.json)."""
    cfg = build_config(cfg)
    configure_logging(cfg.logging.verbose)
    set_ray_environment()
    check_ray_resources(cfg, node_gpus(cfg.ray.address))
    check_server_device(cfg, torch.cuda.is_available())
    if synthetic_data_note(cfg):
        log.warning("%s", synthetic_data_note(cfg))
    slow = bfloat16_warning(cfg, torch.cuda.is_available() and cfg.client.device != "cpu", cpu_bfloat16_units())
    if slow:
        log.warning("%s", slow)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg.replace(run_dir=str(run_dir.resolve()))
    try:
        data, partition = load_federation(cfg)
    except DataError:
        raise
    except ValueError as error:  # a partition the data cannot give (the message names the key)
        raise ConfigError(str(error)) from None
    labels = data.y_train.numpy()
    (run_dir / "partition.txt").write_text(partition.summary(labels, data.classes))
    partition.to_json(run_dir / "partition.json")
    dump_json(run_dir / "config.json", cfg.to_dict())
    check_validation_splits(cfg, [len(shard.val) for shard in partition.clients])
    check_private_steps(cfg, [len(shard.train) for shard in partition.clients])
    return _federate(cfg, run_dir, data.num_classes, RunRecorder(run_dir, cfg))


def load_run_config(run_dir: Path) -> RunConfig:
    """A run's own config.json, validated. Keys added to fedkt after the run was recorded take the value that
    reproduces what the run did (BEFORE_THE_KEY), else today's default (logged), so a run killed before an upgrade
    still resumes with the settings it ran with."""
    if not (run_dir / "config.json").exists():
        raise ConfigError(f"resume={run_dir}: no config.json there; name the directory of the run to resume")
    cfg, added = recorded_config(json.loads((run_dir / "config.json").read_text()))
    if added:
        log.warning("resume: %s was recorded before these settings existed; they take what the run did, or else "
                    "today's default: %s", run_dir,
                    ", ".join(f"{k}={v}" for k, v in added.items()))
    return cfg


def resume(run_dir: str | Path) -> dict:
    """Continue a killed run from its last complete round, in its own directory, with its own config."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    configure_logging(cfg.logging.verbose)
    set_ray_environment()
    check_ray_resources(cfg, node_gpus(cfg.ray.address))
    check_server_device(cfg, torch.cuda.is_available())
    if cfg.client.state_store != "disk":
        raise ConfigError(f"resume={run_dir}: that run kept client state in memory (client.state_store=context); "
                          "only runs with client.state_store=disk can be resumed")
    data, _ = load_federation(cfg)
    recorder = RunRecorder(run_dir, cfg)
    try:
        checkpoint = read_checkpoint(run_dir)
    except ValueError as error:
        raise ConfigError(f"resume={run_dir}: {error}") from None
    state = None if checkpoint is None else recorder.restore(checkpoint)
    log.info("resuming %s after round %d of %d", run_dir, state["round"] if state else 0, cfg.num_rounds)
    return _federate(cfg, run_dir, data.num_classes, recorder, state)


def _federate(cfg: RunConfig, run_dir: Path, num_classes: int, recorder: RunRecorder,
              state: dict | None = None) -> dict:
    log.info("%s on %s, %d clients (%s), %d rounds -> %s", cfg.algorithm.name, cfg.partition.scheme,
             cfg.num_clients, _count(cfg.architectures), cfg.num_rounds, run_dir)
    check_disk_room(cfg, run_dir, num_classes)

    def launch(server_app):
        run_simulation(server_app=server_app, client_app=make_client_app(cfg), num_supernodes=cfg.num_clients,
                       backend_config=backend_config(cfg), verbose_logging=cfg.logging.verbose)

    return run_and_record(cfg, run_dir, num_classes, recorder, launch, state)


def check_validation_splits(cfg: RunConfig, val_sizes: list[int]) -> None:
    """Refuse, before the first round, a run whose settings read validation accuracy every round (the plateau
    rate, the distillation guard) when a client's shard leaves it no validation image: every client would fail."""
    readers = validation_readers(cfg)
    empty = [pid for pid, n in enumerate(val_sizes) if n == 0]
    if readers and empty:
        raise ConfigError(f"{len(empty)} of {len(val_sizes)} clients (first: client {empty[0]}) have no validation "
                          f"image (partition.txt in the run directory has the splits) "
                          f"{no_validation_advice(cfg, readers)}")


def check_private_steps(cfg: RunConfig, train_sizes: list[int]) -> None:
    """Warn before the first round when a client trains fewer than FEW_PRIVATE_STEPS steps on its own data in the
    run: arms compared on clients that few steps measure who gets more steps, not who transfers knowledge. Not on
    generated data (experiment=smoke), which checks the pipeline in as few steps as it can."""
    steps = [private_steps(cfg, n) for n in train_sizes]
    client = min(range(len(steps)), key=steps.__getitem__)
    warning = few_steps_warning(cfg, client, train_sizes[client])  # the fewest: if it is fine, all are
    if warning:
        log.warning("%s (the fewest; %d of the %d clients take fewer than %d)", warning,
                    sum(s < FEW_PRIVATE_STEPS for s in steps), len(steps), FEW_PRIVATE_STEPS)


def check_disk_room(cfg: RunConfig, run_dir: Path, num_classes: int) -> None:
    """Say how much room the clients' saved state takes (client.state_store=disk: each client's last two rounds,
    under run_dir/clients, kept after the run), and warn before the first round when the disk has less free: a full
    disk stops a run in the middle (with its rounds so far kept), and a sweep of many runs fills one."""
    if cfg.client.state_store != "disk":
        return
    sizes = {arch: state_size(cfg, arch, num_classes) for arch in set(cfg.architectures)}
    need = 2 * sum(sizes[arch] for arch in cfg.architectures)
    folder = run_dir / "clients"
    held = sum(f.stat().st_size for f in folder.rglob("*.pt")) if folder.exists() else 0  # a resumed run's
    free = shutil.disk_usage(run_dir).free
    log.info("client state: about %s under %s (each client's last two rounds, kept after the run for resume)",
             _gigabytes(need), folder)
    if free < need - held:
        log.warning("the disk under %s has %s free, less than the %s the clients' state still needs: the run will "
                    "stop when the disk fills (its finished rounds kept). Free space (finished runs' clients/ "
                    "folders are needed only to resume them), or use client.state_store=context (state in memory: "
                    "the run cannot be resumed)", run_dir, _gigabytes(free), _gigabytes(need - held))


def _gigabytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def _count(archs: list[str]) -> str:
    return ", ".join(f"{archs.count(a)} {a}" for a in dict.fromkeys(archs))


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(hydra_cfg: DictConfig) -> float | None:
    cfg = OmegaConf.to_container(hydra_cfg, resolve=True)
    try:
        if cfg["resume"]:
            summary = resume(cfg["resume"])
        else:
            summary = run(cfg, HydraConfig.get().runtime.output_dir)
    except (ConfigError, DataError) as error:
        log.error("error: %s", error)
        sys.exit(2)
    except FederationError as error:
        log.error("the run stopped: %s", error)
        sys.exit(1)
    except Exception as error:  # e.g. Ray could not start; summary.json already says "failed" with the reason
        log.error("the simulation stopped: %s: %s", type(error).__name__, error)
        # Flower's ServerApp thread outlives a crashed simulation runtime and would keep this process alive
        # forever at exit (a ThreadPoolExecutor worker it never joins): leave at once, logs flushed
        logging.shutdown()
        os._exit(1)
    return summary["final_mean_test_acc"]


if __name__ == "__main__":
    # A crash in native code (torch, Ray, gRPC) then prints every thread's Python stack on stderr instead of
    # ending the process with a bare "signal 11"; the rounds already recorded stay in the run directory.
    faulthandler.enable()
    main()
