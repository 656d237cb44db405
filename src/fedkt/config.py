"""The run configuration: one nested dict of scalars, checked before anything expensive starts.

Defaults live in conf/config.yaml only. Hydra gives `python -m fedkt.sim` a nested config; Flower's run
config (`flwr run`) is flat with dotted keys ("client.lr"); `unflatten` turns that into the same dict.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from fedkt.faults import parse_injections

# Every list of allowed values, once: the modules that check their own arguments (data, partition, models,
# train, core) import theirs from here, so a new choice is added in one place.
ALGORITHMS = ("ktpfl", "fedmd", "local", "fedavg")
DATASET_NAMES = ("cifar10", "imagefolder", "synthetic")
RESIZE_MODES = ("resize", "pad", "none")
SCHEMES = ("type1", "type2", "iid")
TYPE1_METHODS = ("dirichlet", "lognormal")
ARCHITECTURES = ("lenet", "alexnet", "resnet18", "shufflenetv2")
NORMS = ("none", "batch")
STEMS = ("cifar", "imagenet")
OBJECTIVES = ("kl", "mse")
NORMALIZATIONS = ("softmax", "simplex")
WEIGHTINGS = ("trained", "cosine", "topk")
DISTILL_LOSSES = ("kl", "l1", "mse")
TARGET_SHIFTS = ("none", "classes", "prior")
LR_POLICIES = ("constant", "plateau", "cosine")

CHOICES = {
    "data.name": DATASET_NAMES,
    "data.resize": RESIZE_MODES,
    "partition.scheme": SCHEMES,
    "partition.type1_method": TYPE1_METHODS,
    "model.norm": NORMS,
    "model.stem": STEMS,
    "algorithm.name": ALGORITHMS,
    "algorithm.upload": ("logits", "probs"),
    "algorithm.wire_dtype": ("float32", "float16"),
    "algorithm.objective": OBJECTIVES,
    "algorithm.normalize": NORMALIZATIONS,
    "algorithm.weighting": WEIGHTINGS,
    "algorithm.consensus": ("probs", "logits"),
    "algorithm.distill_loss": DISTILL_LOSSES,
    "algorithm.target_shift": TARGET_SHIFTS,
    "client.lr_policy": LR_POLICIES,
    "algorithm.distill_lr_policy": ("follow", "fixed"),
    "client.state_store": ("disk", "context"),
    "client.distill_guard": ("none", "val"),
}

POSITIVE = (  # keys that must be > 0
    "num_rounds", "num_clients", "data.image_size", "algorithm.align_size", "algorithm.temperature",
    "algorithm.distill_batch_size", "algorithm.distill_lr", "algorithm.tau", "algorithm.topk",
    "algorithm.coef_steps", "client.lr", "client.batch_size", "client.local_epochs", "client.num_cpus",
    "client.eval_batch_size", "client.lr_factor",
)
NON_NEGATIVE = (
    "data.public_size", "data.samples_per_client", "algorithm.rho", "algorithm.coef_step",
    "algorithm.distill_epochs", "client.momentum", "client.weight_decay", "client.max_local_epochs",
    "client.warmup_epochs", "client.warmup_public_epochs", "client.lr_patience", "round_timeout",
    "faults.slow_seconds",
)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and what is allowed."""


def get(cfg: dict, key: str):
    """cfg["a"]["b"] for key "a.b"."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"config key '{key}' is missing")
        node = node[part]
    return node


def flatten(cfg: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def unflatten(flat: dict) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}} (Flower run configs are flat)."""
    cfg: dict = {}
    for key, value in flat.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return cfg


def client_architectures(cfg: dict) -> list[str]:
    """One architecture per client: the list as given, or a shorter list repeated in equal blocks
    (4 names for 20 clients -> 5 of each, in order)."""
    value = get(cfg, "model.architectures")  # "a,b" (Flower run config) or [a, b] (Hydra list syntax)
    names = [str(a).strip() for a in (value if isinstance(value, list) else str(value).split(",")) if str(a).strip()]
    n = int(get(cfg, "num_clients"))
    for name in names:
        if name not in ARCHITECTURES:
            raise ConfigError(f"model.architectures: unknown architecture '{name}'; allowed: {', '.join(ARCHITECTURES)}")
    if not names:
        raise ConfigError("model.architectures is empty; give a comma-separated list, e.g. 'lenet,resnet18'")
    if len(names) == n:
        return names
    if n % len(names) == 0:
        return [name for name in names for _ in range(n // len(names))]
    raise ConfigError(
        f"model.architectures has {len(names)} names for num_clients={n}: give one per client "
        f"or a list whose length divides num_clients")


def gpus_per_client(cfg: dict, node_gpus: float) -> float:
    """Ray GPU share of one client actor in the simulation, given the GPUs of the node(s) that run the clients
    (not necessarily this machine's: with ray.address, the cluster's). client.num_gpus, or when it is -1 (auto)
    0.25 where those nodes have a GPU and client.device is not cpu, else 0. Call check_ray_resources first."""
    share = float(get(cfg, "client.num_gpus"))
    if share < 0:
        return 0.25 if node_gpus > 0 and str(get(cfg, "client.device")) != "cpu" else 0.0
    return share


def check_ray_resources(cfg: dict, node_gpus: float) -> None:
    """The simulation's device and GPU-share questions, asked of the node(s) that run the client actors
    (node_gpus: how many GPUs Ray has there). Not for a deployment: a SuperNode picks its own device
    (fedkt.train.pick_device says there what is missing), and client.num_gpus is a Ray setting."""
    device, share = str(get(cfg, "client.device")), float(get(cfg, "client.num_gpus"))
    where = "the Ray cluster at ray.address" if str(get(cfg, "ray.address")) else "this machine"
    if device.startswith("cuda:") and device != "cuda:0":
        raise ConfigError(
            f"client.device={device!r}: in the simulation Ray gives each client actor its own GPU share, which the "
            "actor sees as cuda:0; use client.device=cuda (or auto) and let Ray place the actors")
    if device == "cpu" and share > 0:
        raise ConfigError(f"client.device=cpu with client.num_gpus={share:g}: CPU clients need no GPU share (it "
                          "would only cap how many run at once); use client.num_gpus=-1 or 0")
    if device.startswith("cuda") and share == 0:
        raise ConfigError(f"client.device={device!r} with client.num_gpus=0: Ray hides the GPUs from client actors "
                          "without a GPU share; use client.num_gpus=-1 (auto) or a share > 0")
    if (device.startswith("cuda") or share > 0) and node_gpus <= 0:
        raise ConfigError(
            f"client.device={device!r}, client.num_gpus={get(cfg, 'client.num_gpus')} ask for a GPU but "
            f"{where} has none; use client.device=auto client.num_gpus=-1 (or 0)")


def validate(cfg: dict) -> None:
    """Raise ConfigError on the first value that cannot work. Runs before data loading and Ray."""
    for key, allowed in CHOICES.items():
        value = get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")
    for key in POSITIVE:
        value = get(cfg, key)
        if not _is_number(value) or value <= 0:
            raise ConfigError(f"{key}={value!r} must be a number > 0")
    for key in NON_NEGATIVE:
        value = get(cfg, key)
        if not _is_number(value) or value < 0:
            raise ConfigError(f"{key}={value!r} must be a number >= 0")
    archs = client_architectures(cfg)
    name = get(cfg, "algorithm.name")
    if name == "fedavg" and len(set(archs)) > 1:
        raise ConfigError(
            f"algorithm.name=fedavg averages one model's parameters, but model.architectures="
            f"{get(cfg, 'model.architectures')!r} gives the clients {len(set(archs))} architectures; give one, "
            "e.g. model.architectures=lenet")
    if name in ("ktpfl", "fedmd") and get(cfg, "algorithm.align_size") > get(cfg, "data.public_size"):
        raise ConfigError(
            f"algorithm.align_size={get(cfg, 'algorithm.align_size')} is larger than the public set "
            f"(data.public_size={get(cfg, 'data.public_size')}); lower it or enlarge the public set")
    if get(cfg, "algorithm.distill_loss") in ("l1", "mse") and not (
            name == "fedmd" and get(cfg, "algorithm.consensus") == "logits"):
        raise ConfigError(
            f"algorithm.distill_loss={get(cfg, 'algorithm.distill_loss')!r} distils towards logits: it needs "
            "algorithm.name=fedmd with algorithm.consensus=logits; use distill_loss=kl otherwise")
    if get(cfg, "algorithm.target_shift") != "none" and get(cfg, "algorithm.distill_loss") != "kl":
        raise ConfigError(f"algorithm.target_shift={get(cfg, 'algorithm.target_shift')} reweights probability "
                          "targets: it needs algorithm.distill_loss=kl")
    if name == "fedmd" and get(cfg, "algorithm.consensus") == "logits" and get(cfg, "algorithm.upload") != "logits":
        raise ConfigError("algorithm.consensus=logits needs algorithm.upload=logits")
    if name == "fedmd" and get(cfg, "algorithm.consensus") == "logits" and get(cfg, "algorithm.distill_loss") == "kl":
        raise ConfigError(
            "algorithm.consensus=logits with algorithm.distill_loss=kl: the server would send mean logits, and kl "
            "distils towards probabilities; use consensus=probs with distill_loss=kl, or consensus=logits with "
            "distill_loss=l1 or mse")
    if get(cfg, "client.warmup_public_epochs") > 0 and get(cfg, "data.public_size") == 0:
        raise ConfigError("client.warmup_public_epochs > 0 needs a public set (data.public_size > 0)")
    for key in ("min_fit_fraction", "faults.fail_prob"):
        value = get(cfg, key)
        if not _is_number(value) or not 0 <= value <= 1:
            raise ConfigError(f"{key}={value!r} must lie between 0 and 1")
    try:
        parse_injections(get(cfg, "faults.inject"))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    for key in ("partition.test_fraction", "partition.val_fraction"):
        value = get(cfg, key)
        if not _is_number(value) or not 0 < value < 1:
            raise ConfigError(f"{key}={value!r} must lie strictly between 0 and 1")
    if get(cfg, "logging.tensorboard") not in (True, False):
        raise ConfigError(f"logging.tensorboard={get(cfg, 'logging.tensorboard')!r} must be true or false")
    if get(cfg, "logging.tensorboard") and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("logging.tensorboard=true needs the tensorboard package: pip install -e \".[tensorboard]\" "
                          "(or pip install tensorboard), or set logging.tensorboard=false")
    device = str(get(cfg, "client.device"))
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"client.device={device!r} is not allowed; choose auto, cpu, cuda or cuda:N")
    num_cpus = get(cfg, "client.num_cpus")
    if not float(num_cpus).is_integer():  # > 0 is checked above
        raise ConfigError(f"client.num_cpus={num_cpus!r} must be a whole number >= 1: it is both the Ray CPUs of "
                          "a client actor and its torch threads; use 1 (one actor per core)")
    share = get(cfg, "client.num_gpus")
    if not _is_number(share) or not (share == -1 or share >= 0):
        raise ConfigError(f"client.num_gpus={share!r} must be -1 (auto) or a GPU share >= 0, e.g. 0.25")
    # Whether a GPU exists is a question for the node that runs the clients, not for this process:
    # check_ray_resources (the simulation) and fedkt.train.pick_device (each client) ask it there.


def synthetic_data_note(cfg: dict) -> str | None:
    """One line when a data.root was given to a run on generated data (experiment=smoke), which reads none."""
    root = str(get(cfg, "data.root"))
    if get(cfg, "data.name") == "synthetic" and root not in ("", "data"):
        return (f"data.name=synthetic (experiment=smoke): the run uses generated data and does not read "
                f"data.root={root}; add data.name=cifar10 to use it")
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# The Hydra configs: in an installed wheel they travel inside the package (fedkt/conf, mapped from the top-level
# conf/ by pyproject's [tool.setuptools]); in a checkout (editable install, or PYTHONPATH=src) they are conf/.
_PACKAGED_CONF = Path(__file__).resolve().parent / "conf"
CONF_DIR = _PACKAGED_CONF if (_PACKAGED_CONF / "config.yaml").is_file() else Path(__file__).resolve().parents[2] / "conf"


def base_defaults() -> dict:
    """conf/config.yaml's own values (no config group applied, no Hydra section): every key and its default.
    Unlike compose(), safe to call inside a running Hydra app."""
    from omegaconf import OmegaConf  # lazy for start-up: every deployed ClientApp process imports this module

    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"), resolve=False)
    return {k: v for k, v in cfg.items() if k not in ("defaults", "hydra")}


def compose(overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The config `python -m fedkt.sim OVERRIDES...` would run with, as a plain dict (for tests and tools)."""
    # lazy for start-up: Hydra takes a second or more to import, and every deployed ClientApp imports this module
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=False)
