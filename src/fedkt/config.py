"""The run configuration: one typed, frozen `RunConfig`, built and checked once where configuration enters.

Defaults live in conf/config.yaml only (the dataclasses below have none). Configuration enters as a nested dict
in three places, and each turns it into a RunConfig with `build_config` before anything expensive starts:
Hydra (`python -m fedkt.sim`), Flower's run config (`flwr run`; flat with dotted keys, `unflatten` nests it) and
a SuperNode's node config (fedkt.app_config). Everything below those edges reads attributes (`cfg.client.lr`),
never keys. Each field says its type and what values it allows; `build_config` converts whole numbers given as
floats (2.0 -> 2) and integers given for real numbers, refuses anything else with the key, the value and what is
allowed, then checks the rules that tie several keys together.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import typing
from dataclasses import dataclass, field
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

# Keys added after runs were recorded, with the value that reproduces what fedkt did before the key existed. A run
# recorded without one of them resumes with that value, not with today's default (which would change its arithmetic
# midway), and fedkt.report counts it as that setting (so `--pair KEY` pairs old runs with new ones).
BEFORE_THE_KEY = {"model.channels_last": "", "model.bfloat16": "", "model.skip_padding_taps": False,
                  "algorithm.coef_tol": 0.0, "algorithm.distill_lr_policy": "fixed"}

# model.bfloat16=auto (the `quick` preset's setting): the architectures whose steps bfloat16 makes cheaper on a CPU
# with bfloat16 units (AlexNet; ResNet-18 once its padding taps are skipped), at accuracy level with float32 over five
# paired seeds (docs/RESULTS.md, "bfloat16 where the CPU has the units"); float32 on a CPU without them.
AUTO_BFLOAT16 = ("alexnet", "resnet18")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and what is allowed."""


# What a field allows, kept in its metadata and checked by build_config.
def _one_of(*allowed: str):
    return field(metadata={"choices": allowed})


def _positive():
    return field(metadata={"above": 0})


def _non_negative():
    return field(metadata={"at_least": 0})


def _fraction(strict: bool = False):  # in [0, 1], or (0, 1) when strict
    return field(metadata={"fraction": "strict" if strict else "closed"})


@dataclass(frozen=True)
class DataConfig:
    name: str = _one_of(*DATASET_NAMES)
    root: str = field()          # archive (.tar.gz), image folder, cifar-10-batches-py, or where to download
    download: bool = field()
    cache_dir: str = field()     # "" = $FEDKT_CACHE or ~/.cache/fedkt
    image_size: int = _positive()
    resize: str = _one_of(*RESIZE_MODES)
    public_size: int = _non_negative()
    samples_per_client: int = _non_negative()  # 0 = share out all the rest
    num_classes: int = field(metadata={"at_least": 2})  # only the deployed ServerApp, which holds no data, reads it


@dataclass(frozen=True)
class ModelConfig:
    architectures: str = field()  # "a,b,...": one per client, or a shorter list in equal blocks (see per_client)
    norm: str = _one_of(*NORMS)
    stem: str = _one_of(*STEMS)
    channels_last: str = field()  # "a,b,...": architectures whose convolutions run channels-last; "" = none
    bfloat16: str = field()  # "a,b,...": architectures whose forward pass runs under bfloat16 autocast; "" = none;
    # "auto" = AUTO_BFLOAT16 where the CPU has bfloat16 units, else none (build_config resolves it)
    skip_padding_taps: bool = field()  # convolutions skip kernel taps that only read zero padding (same function)


@dataclass(frozen=True)
class ClientConfig:
    lr: float = _positive()
    momentum: float = _non_negative()
    weight_decay: float = _non_negative()
    batch_size: int = _positive()
    local_epochs: int = _positive()
    max_local_epochs: int = _non_negative()
    min_steps: int = _non_negative()
    lr_policy: str = _one_of(*LR_POLICIES)
    lr_patience: int = _positive()
    lr_factor: float = _positive()
    augment: bool = field()
    warmup_epochs: int = _non_negative()
    warmup_public_epochs: int = _non_negative()
    warmup_cache: bool = field()  # reuse a client's public pre-training across runs that compute the same one
    state_store: str = _one_of("disk", "context")
    distill_guard: str = _one_of("none", "val")
    device: str = field()        # auto | cpu | cuda | cuda:N (checked in _check_rules)
    num_cpus: int = _positive()  # Ray CPUs of a client actor and its torch threads
    num_gpus: float = field()    # -1 = auto, else a share >= 0 (checked in _check_rules)
    eval_batch_size: int = _positive()


@dataclass(frozen=True)
class AlgorithmConfig:
    name: str = _one_of(*ALGORITHMS)
    align_size: int = _positive()
    temperature: float = _positive()
    upload: str = _one_of("logits", "probs")
    wire_dtype: str = _one_of("float32", "float16")
    rho: float = _non_negative()
    objective: str = _one_of(*OBJECTIVES)
    coef_step: float = _non_negative()  # 0 = adaptive
    coef_steps: int = _positive()
    coef_tol: float = _fraction()
    coef_device: str = _one_of("auto", "cpu", "cuda")
    normalize: str = _one_of(*NORMALIZATIONS)
    tau: float = _positive()
    weighting: str = _one_of(*WEIGHTINGS)
    topk: int = _positive()
    consensus: str = _one_of("probs", "logits")
    distill_loss: str = _one_of(*DISTILL_LOSSES)
    target_shift: str = _one_of(*TARGET_SHIFTS)
    distill_epochs: int = _non_negative()
    distill_batch_size: int = _positive()
    distill_lr: float = _positive()
    distill_lr_policy: str = _one_of("follow", "fixed")


@dataclass(frozen=True)
class PartitionConfig:
    scheme: str = _one_of(*SCHEMES)
    alpha: float = field()
    type1_method: str = _one_of(*TYPE1_METHODS)
    classes_per_client: int = field()
    test_fraction: float = _fraction(strict=True)
    val_fraction: float = _fraction(strict=True)


@dataclass(frozen=True)
class FaultsConfig:
    fail_prob: float = _fraction()
    inject: str = field()        # "partition:round:kind,..." (fedkt.faults)
    slow_seconds: float = _non_negative()


@dataclass(frozen=True)
class LoggingConfig:
    verbose: bool = field()
    tensorboard: bool = field()


@dataclass(frozen=True)
class RayConfig:
    address: str = field()       # "" = start a local Ray for the run


@dataclass(frozen=True)
class RunConfig:
    seed: int = field()
    num_rounds: int = _positive()
    num_clients: int = _positive()
    round_timeout: float = _non_negative()  # 0 = no limit
    min_fit_fraction: float = _fraction()
    resume: str = field()
    output_dir: str = field()
    data: DataConfig = field()
    model: ModelConfig = field()
    client: ClientConfig = field()
    algorithm: AlgorithmConfig = field()
    partition: PartitionConfig = field()
    faults: FaultsConfig = field()
    logging: LoggingConfig = field()
    ray: RayConfig = field()
    run_dir: str = ""            # not a setting: where this run's files go, set by the entry point

    @property
    def architectures(self) -> list[str]:
        """One architecture per client (fedkt.config.per_client)."""
        return per_client(self.model.architectures, self.num_clients)

    @property
    def channels_last(self) -> frozenset[str]:
        """The architectures that run channels-last (model.channels_last; checked by build_config)."""
        return frozenset(name.strip() for name in self.model.channels_last.split(",") if name.strip())

    @property
    def bfloat16(self) -> frozenset[str]:
        """The architectures whose forward pass runs under bfloat16 autocast (model.bfloat16)."""
        return frozenset(name.strip() for name in self.model.bfloat16.split(",") if name.strip())

    def to_dict(self) -> dict:
        """The nested dict of scalars (what config.json holds)."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> RunConfig:
        """A copy with top-level fields changed (e.g. run_dir); build_config again for settings."""
        return dataclasses.replace(self, **changes)


def _key_kinds(cls, prefix: str = "") -> dict[str, tuple[type, dict]]:
    """{"client.lr": (float, metadata), ...} for every setting of cls."""
    kinds = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            kinds.update(_key_kinds(kind, f"{prefix}{f.name}."))
        elif f.name != "run_dir":
            kinds[f"{prefix}{f.name}"] = (kind, dict(f.metadata))
    return kinds


SETTINGS = _key_kinds(RunConfig)  # every key of conf/config.yaml, with its type and rule
CHOICES = {key: meta["choices"] for key, (_, meta) in SETTINGS.items() if "choices" in meta}


def _convert(key: str, value, kind: type):
    """value as `kind`, or ConfigError."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false")
    if kind in (int, float):
        if not _is_number(value):
            raise ConfigError(f"{key}={value!r} must be a number")
        if kind is int and not float(value).is_integer():
            raise ConfigError(f"{key}={value!r} must be a whole number")
        return kind(value)
    if isinstance(value, dict):
        raise ConfigError(f"{key} must be a single value, not a group of keys")
    if key in ("model.architectures", "model.channels_last", "model.bfloat16") and isinstance(value, (list, tuple)):
        return ",".join(str(a).strip() for a in value)
    if isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}={value!r} must be a single value, not a list")
    return str(value)


def _check_rule(key: str, value, meta: dict, given) -> None:
    """value (converted from `given`, which the message shows) against the field's rule."""
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key}={given!r} is not allowed; choose one of: {', '.join(meta['choices'])}")
    if "above" in meta and not value > meta["above"]:
        raise ConfigError(f"{key}={given!r} must be a number > {meta['above']}")
    if "at_least" in meta and not value >= meta["at_least"]:
        raise ConfigError(f"{key}={given!r} must be a number >= {meta['at_least']}")
    if meta.get("fraction") == "closed" and not 0 <= value <= 1:
        raise ConfigError(f"{key}={given!r} must lie between 0 and 1")
    if meta.get("fraction") == "strict" and not 0 < value < 1:
        raise ConfigError(f"{key}={given!r} must lie strictly between 0 and 1")


def _build(cls, values: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        key = prefix + unknown[0]
        close = difflib.get_close_matches(key, list(SETTINGS), n=1)
        raise ConfigError(f"unknown config key '{key}'" + (f"; did you mean '{close[0]}'?" if close else ""))
    built = {}
    for f in dataclasses.fields(cls):
        key, kind = prefix + f.name, hints[f.name]
        if f.name not in values:
            if f.default is dataclasses.MISSING:
                raise ConfigError(f"config key '{key}' is missing")
            continue
        if dataclasses.is_dataclass(kind):
            if not isinstance(values[f.name], dict):
                raise ConfigError(f"config key '{key}' must be a group of keys, not {values[f.name]!r}")
            built[f.name] = _build(kind, values[f.name], key + ".")
        else:
            built[f.name] = _convert(key, values[f.name], kind)
            _check_rule(key, built[f.name], dict(f.metadata), values[f.name])
    return cls(**built)


def build_config(values: dict | RunConfig) -> RunConfig:
    """The nested config dict (Hydra's, an unflattened run config, a run's config.json) as a checked RunConfig;
    raises ConfigError on the first value that cannot work. Runs before data loading and Ray."""
    # a RunConfig made by hand or changed with dataclasses.replace is checked field by field too
    cfg = _build(RunConfig, values.to_dict() if isinstance(values, RunConfig) else dict(values), "")
    if cfg.model.bfloat16 == "auto":  # resolved where the config is built, so that config.json records what ran
        resolved = resolve_bfloat16(cfg, cpu_bfloat16_units())
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, bfloat16=resolved))
    _check_rules(cfg)
    return cfg


def cpu_bfloat16_units() -> str:
    """The CPU's native bfloat16 instruction sets, from /proc/cpuinfo's flags ("" where none or unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return ""
    return ", ".join(flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags)


def resolve_bfloat16(cfg: RunConfig, cpu_units: str) -> str:
    """What model.bfloat16=auto names for cfg on a CPU with `cpu_units` (cpu_bfloat16_units): AUTO_BFLOAT16's
    architectures that the run has, ResNet-18 only with model.skip_padding_taps (without, bfloat16 made its steps
    dearer); none where the CPU has no bfloat16 units (emulated, it is slower) or client.device names a GPU (not
    measured there; with client.device=auto on a GPU machine the named models run bfloat16 on the GPU)."""
    if not cpu_units or cfg.client.device.startswith("cuda"):
        return ""
    present = set(cfg.architectures)
    return ",".join(a for a in AUTO_BFLOAT16 if a in present and (a != "resnet18" or cfg.model.skip_padding_taps))


def recorded_config(saved: dict) -> tuple[RunConfig, dict]:
    """A run's config.json (nested) as a checked RunConfig, and the keys fedkt gained after the run was recorded:
    those take the value that reproduces what the run did (BEFORE_THE_KEY), else today's default."""
    flat = flatten(saved)
    added = {k: BEFORE_THE_KEY.get(k, v) for k, v in flatten(base_defaults()).items() if k not in flat}
    return build_config(unflatten({**added, **flat})), added


def load_config(overrides: list[str] | tuple[str, ...] = (), **fields) -> RunConfig:
    """The checked config `python -m fedkt.sim OVERRIDES...` would run with (for tests, benchmarks, tools);
    `fields` sets top-level fields that are not settings (run_dir)."""
    return build_config(dict(compose(overrides), **fields))


def per_client(architectures, num_clients: int) -> list[str]:
    """One architecture per client from model.architectures: the list as given, or a shorter list repeated in
    equal blocks (4 names for 20 clients -> 5 of each, in order). Takes "a,b" or [a, b] (a run's config.json)."""
    value = architectures
    names = [str(a).strip() for a in (value if isinstance(value, list) else str(value).split(",")) if str(a).strip()]
    n = int(num_clients)
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


def recorded_architectures(config: dict) -> list[str]:
    """One architecture per client of a recorded run (its config.json, read as a dict by the report and the
    figures, which take runs of any fedkt version); ConfigError when the record does not say."""
    return per_client(get(config, "model.architectures"), get(config, "num_clients"))


def gpus_per_client(cfg: RunConfig, node_gpus: float) -> float:
    """Ray GPU share of one client actor in the simulation, given the GPUs of the node(s) that run the clients
    (not necessarily this machine's: with ray.address, the cluster's). client.num_gpus, or when it is -1 (auto)
    0.25 where those nodes have a GPU and client.device is not cpu, else 0. Call check_ray_resources first."""
    share = cfg.client.num_gpus
    if share < 0:
        return 0.25 if node_gpus > 0 and cfg.client.device != "cpu" else 0.0
    return share


def check_server_device(cfg: RunConfig, has_cuda: bool) -> None:
    """KT-pFL's update of c runs where the server runs: algorithm.coef_device=cuda needs CUDA there."""
    if cfg.algorithm.name == "ktpfl" and cfg.algorithm.coef_device == "cuda" and not has_cuda:
        raise ConfigError("algorithm.coef_device=cuda, but this machine, where the server updates c, has no CUDA; "
                          "use algorithm.coef_device=auto (the GPU where there is one) or cpu")


def check_ray_resources(cfg: RunConfig, node_gpus: float) -> None:
    """The simulation's device and GPU-share questions, asked of the node(s) that run the client actors
    (node_gpus: how many GPUs Ray has there). Not for a deployment: a SuperNode picks its own device
    (fedkt.train.pick_device says there what is missing), and client.num_gpus is a Ray setting."""
    device, share = cfg.client.device, cfg.client.num_gpus
    where = "the Ray cluster at ray.address" if cfg.ray.address else "this machine"
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
            f"client.device={device!r}, client.num_gpus={share:g} ask for a GPU but "
            f"{where} has none; use client.device=auto client.num_gpus=-1 (or 0)")


def _check_rules(cfg: RunConfig) -> None:
    """The rules that tie several keys together, and the values no single rule above covers."""
    archs = cfg.architectures
    algo = cfg.algorithm
    for key, named in (("model.channels_last", cfg.channels_last), ("model.bfloat16", cfg.bfloat16)):
        unknown = sorted(named - set(ARCHITECTURES))
        if unknown:
            raise ConfigError(f"{key}: unknown architecture '{unknown[0]}'; give a comma-separated list of "
                              f"{', '.join(ARCHITECTURES)}, or \"\" for none")
    if algo.name == "fedavg" and len(set(archs)) > 1:
        raise ConfigError(
            f"algorithm.name=fedavg averages one model's parameters, but model.architectures="
            f"{cfg.model.architectures!r} gives the clients {len(set(archs))} architectures; give one, "
            "e.g. model.architectures=lenet")
    if algo.name in ("ktpfl", "fedmd") and algo.align_size > cfg.data.public_size:
        raise ConfigError(
            f"algorithm.align_size={algo.align_size} is larger than the public set "
            f"(data.public_size={cfg.data.public_size}); lower it or enlarge the public set")
    if algo.distill_loss in ("l1", "mse") and not (algo.name == "fedmd" and algo.consensus == "logits"):
        raise ConfigError(
            f"algorithm.distill_loss={algo.distill_loss!r} distils towards logits: it needs "
            "algorithm.name=fedmd with algorithm.consensus=logits; use distill_loss=kl otherwise")
    if algo.target_shift != "none" and algo.distill_loss != "kl":
        raise ConfigError(f"algorithm.target_shift={algo.target_shift} reweights probability "
                          "targets: it needs algorithm.distill_loss=kl")
    if algo.name == "fedmd" and algo.consensus == "logits" and algo.upload != "logits":
        raise ConfigError("algorithm.consensus=logits needs algorithm.upload=logits")
    if algo.name == "fedmd" and algo.consensus == "logits" and algo.distill_loss == "kl":
        raise ConfigError(
            "algorithm.consensus=logits with algorithm.distill_loss=kl: the server would send mean logits, and kl "
            "distils towards probabilities; use consensus=probs with distill_loss=kl, or consensus=logits with "
            "distill_loss=l1 or mse")
    if cfg.client.warmup_public_epochs > 0 and cfg.data.public_size == 0:
        raise ConfigError("client.warmup_public_epochs > 0 needs a public set (data.public_size > 0)")
    try:
        parse_injections(cfg.faults.inject)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if cfg.logging.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("logging.tensorboard=true needs the tensorboard package: pip install -e \".[tensorboard]\" "
                          "(or pip install tensorboard), or set logging.tensorboard=false")
    device = cfg.client.device
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"client.device={device!r} is not allowed; choose auto, cpu, cuda or cuda:N")
    share = cfg.client.num_gpus
    if not (share == -1 or share >= 0):
        raise ConfigError(f"client.num_gpus={share!r} must be -1 (auto) or a GPU share >= 0, e.g. 0.25")
    # Whether a GPU exists is a question for the node that runs the clients, not for this process:
    # check_ray_resources (the simulation) and fedkt.train.pick_device (each client) ask it there.


def synthetic_data_note(cfg: RunConfig) -> str | None:
    """One line when a data.root was given to a run on generated data (experiment=smoke), which reads none."""
    if cfg.data.name == "synthetic" and cfg.data.root not in ("", "data"):
        return (f"data.name=synthetic (experiment=smoke): the run uses generated data and does not read "
                f"data.root={cfg.data.root}; add data.name=cifar10 to use it")
    return None


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
