"""The GPU path end to end, on a machine with torch (and torchvision, numpy, Pillow, PyYAML) but no Flower, Ray
or Hydra: the GPU machine this project borrows. One command, a few minutes (docs/gpu.md).

    PYTHONPATH=src python3 scripts/gpu_check.py --data .gpu_data/cifar10-jpeg.tar.gz   # on the GPU machine
    PYTHONPATH=src python scripts/gpu_check.py --dry                                   # CPU, tiny (the test suite)

What runs is the clients' and the server's work of KT-pFL without Ray and without Flower: the algorithm layer
that fedkt's KnowledgeClient and KnowledgeTransfer strategy drive (fedkt.learner.Learner for each client round,
fedkt.aggregation.KnowledgeServer for the server; on the CPU its uploads equal KnowledgeClient.fit's bit for bit:
a test checks it).
--workers processes stand for Ray's client actors: each is spawned, sees the GPU as
the actor with a GPU share of 1/--workers would (cuda:0), uses one CPU thread (client.num_cpus=1), and runs its
clients one after another, rebuilding each from the state file it wrote the round before. The driver validates
the uploads, updates the coefficient matrix c and sends each client its target. Default setting: the paper's
(20 clients, 5 each of LeNet, AlexNet, ResNet-18, ShuffleNetV2, `cifar` stem, full shards, 5,000-sample
alignment, batch 16), 2 rounds (round 1 holds the warm-up epoch; round 2 the first distillation).

It checks (and stops with a message at the first failure) that parameters, buffers and every batch of every
step are on the device; that predictions are finite probabilities of shape (align_size, classes); that client
state written on the device loads on a CPU and predicts the same there. It prints seconds per round, peak
memory per architecture, one client's difference CPU against GPU and GPU against itself (same seed), and the
coefficient update's time on CPU and on the device with the run's settings for c (every step taken) at N = 20,
100 and 1,000 clients and 500 and 5,000 samples. --compare-workers 8 16 then repeats the rounds with other
worker counts (GPU shares of 1/8, 1/16). --out FILE writes all of it as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from fedkt.aggregation import KnowledgeServer, local_epochs, make_coefficients
from fedkt.config import RunConfig, build_config
from fedkt.core import alignment_indices, alignment_seed, check_predictions, soft_predictions
from fedkt.learner import Learner
from fedkt.models import build_model
from fedkt.task import client_data, load_federation, public_data
from fedkt.train import make_optimizer, pick_device, predict_logits, set_threads, state_from_bytes, train_epochs

CONF = Path(__file__).resolve().parents[1] / "conf"


class CheckFailed(RuntimeError):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)


# -- configuration (conf/ read with PyYAML: no Hydra on the GPU machine) --------------------------------

def _merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _yaml(path: Path) -> dict:
    cfg = yaml.safe_load(path.read_text()) or {}
    return {k: v for k, v in cfg.items() if k not in ("defaults", "hydra")}


def check_config(args) -> RunConfig:
    """conf/config.yaml + algorithm=--algorithm + experiment=paper_type1, as `python -m fedkt.sim` composes them,
    then the check's own settings (--dry: tiny synthetic data on the CPU)."""
    cfg = _yaml(CONF / "config.yaml")
    _merge(cfg, {"algorithm": _yaml(CONF / "algorithm" / f"{args.algorithm}.yaml"),
                 "partition": _yaml(CONF / "partition" / "type1.yaml")})
    _merge(cfg, _yaml(CONF / "experiment" / "paper_type1.yaml"))
    own = {"num_rounds": args.rounds, "client": {"device": args.device, "num_cpus": 1},
           "data": {"cache_dir": str(args.work / "cache")}}
    if args.dry:
        own.update(num_clients=4, data={"name": "synthetic", "public_size": 100, "samples_per_client": 24,
                                        "cache_dir": str(args.work / "cache")},
                   algorithm={"align_size": 32, "distill_batch_size": 16}, client={"device": args.device,
                                                                                   "num_cpus": 1, "batch_size": 16})
    else:
        own["data"]["root"] = str(args.data)
    _merge(cfg, own)
    if args.clients:
        cfg["num_clients"] = args.clients
    cfg["run_dir"] = str(args.work / "run")
    return build_config(cfg)


# -- one client's round, in a worker process (Ray's client actor) ---------------------------------------

_CFG: RunConfig | None = None  # the worker's config, set by _init_worker


def _init_worker(cfg: RunConfig) -> None:
    global _CFG
    _CFG = cfg
    set_threads(cfg.client.num_cpus)


def client_round(job: tuple) -> dict:
    """What a client does in a round (fedkt.learner.Learner.fit_round, the Flower client's own code): restore its
    state, warm up (first round), distil towards its target, train, evaluate, predict on the round's alignment
    subset, save its state. Records where everything ran."""
    pid, rnd, target, target_seed, next_seed = job
    cfg = _CFG
    start = time.perf_counter()
    device = pick_device(cfg.client.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    state_file = Path(cfg.run_dir) / f"client_{pid:04d}.pt"
    learner = Learner(cfg, pid, state_file.read_bytes() if state_file.exists() else None)
    seen = set()
    hook = learner.model.register_forward_pre_hook(lambda module, inputs: seen.add(str(inputs[0].device)))
    uploads, metrics = learner.fit_round(rnd, local_epochs(cfg, rnd), target=target, target_seed=target_seed,
                                         next_seed=next_seed)
    if next_seed < 0:  # training alone uploads nothing: predict anyway, so that every check has predictions
        uploads = [learner.predict(alignment_seed(cfg.seed, rnd))]
    hook.remove()
    test_acc = learner.test()[1]  # the client's own test split, as the strategy's evaluate round reads it
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_bytes(learner.state_bytes())
    placed = {t.device.type for t in [*learner.model.parameters(), *learner.model.buffers()]}
    placed |= {v.device.type for s in learner.optimizer.state.values() for v in s.values() if torch.is_tensor(v)}
    probs = np.asarray(soft_predictions(uploads[0].astype(np.float32), cfg.algorithm.temperature))
    return {"pid": pid, "arch": learner.architecture, "upload": uploads[0], "probs": probs,
            "train_loss": metrics["train_loss"], "val_acc": metrics["val_acc"], "test_acc": test_acc,
            "seconds": time.perf_counter() - start, "placed": sorted(placed), "inputs": sorted(seen),
            "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0,
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if device.type == "cuda" else 0,
            "device": str(device)}


# -- the driver: the server's side, and the checks ---------------------------------------------------------

def run_rounds(cfg: RunConfig, workers: int) -> tuple[list[dict], list[dict]]:
    n, rounds = cfg.num_clients, cfg.num_rounds
    server = KnowledgeServer(cfg, num_classes=load_federation(cfg)[0].num_classes)  # the strategy's own server side
    history, last = [], []
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked processes
    with context.Pool(workers, initializer=_init_worker, initargs=(cfg,)) as pool:
        for rnd in range(1, rounds + 1):
            start = time.perf_counter()
            jobs = []
            for pid in range(n):
                target_seed, target = server.target_for(pid) or (-1, None)
                jobs.append((pid, rnd, target, target_seed, server.next_seed(rnd)))
            results = pool.map(client_round, jobs, chunksize=1)
            for r in results:
                why = server.check_upload([r["upload"]])
                check(why is None, f"client {r['pid']} ({r['arch']}) uploaded bad predictions: {why}")
                why = check_predictions(r["probs"], cfg.algorithm.align_size, r["probs"].shape[1], "probs")
                check(why is None, f"client {r['pid']} ({r['arch']}) uploaded bad predictions: {why}")
                check(r["placed"] == [r["device"].split(":")[0]],
                      f"client {r['pid']} ({r['arch']}): parameters/buffers/optimizer state on {r['placed']}")
                check(r["inputs"] and all(d.split(":")[0] == r["device"].split(":")[0] for d in r["inputs"]),
                      f"client {r['pid']} ({r['arch']}): forward passes got inputs on {r['inputs']}")
            server_start = time.perf_counter()
            if server.collaborates:
                server.update(rnd, {r["pid"]: r["upload"].astype(np.float32) for r in results})
            history.append({"round": rnd, "seconds": time.perf_counter() - start,
                            "server_seconds": time.perf_counter() - server_start,
                            "client_seconds_sum": sum(r["seconds"] for r in results),
                            "mean_val_acc": float(np.mean([r["val_acc"] for r in results])),
                            "mean_test_acc": float(np.mean([r["test_acc"] for r in results])),
                            "test_acc": {r["pid"]: r["test_acc"] for r in results}})
            print(f"round {rnd}: {history[-1]['seconds']:.1f} s ({history[-1]['client_seconds_sum']:.1f} client-s "
                  f"over {workers} workers, server {history[-1]['server_seconds']:.2f} s), "
                  f"mean val acc {history[-1]['mean_val_acc']:.3f}, mean test acc {history[-1]['mean_test_acc']:.4f}",
                  flush=True)
            last = results
    return history, last


def state_loads_on_cpu(cfg: RunConfig, results: list[dict]) -> dict:
    """Each architecture's first client: its state file (written on the device) into a CPU model, which must
    predict what the device predicted."""
    out = {}
    x_public, _ = public_data(cfg)
    for arch in dict.fromkeys(r["arch"] for r in results):
        r = next(r for r in results if r["arch"] == arch)
        model = build_model(arch, num_classes=r["probs"].shape[1], in_channels=x_public.shape[1],
                            norm=cfg.model.norm, stem=cfg.model.stem)
        state_from_bytes((Path(cfg.run_dir) / f"client_{r['pid']:04d}.pt").read_bytes(), model)
        check({p.device.type for p in model.parameters()} == {"cpu"}, f"{arch}: state did not load on the CPU")
        idx = alignment_indices(len(x_public), cfg.algorithm.align_size,
                                alignment_seed(cfg.seed, cfg.num_rounds))
        cpu = soft_predictions(predict_logits(model, x_public[idx], device="cpu"),
                               cfg.algorithm.temperature).numpy()
        diff = float(np.abs(cpu - r["probs"]).max())
        agree = float((cpu.argmax(1) == r["probs"].argmax(1)).mean())
        # same weights, other kernels (TF32 convolutions on the GPU): the same classes, probabilities close
        check(np.isfinite(cpu).all() and agree >= 0.99, f"{arch}: CPU predictions from the device's state agree "
                                                        f"with the device's on {agree:.1%} of samples only")
        out[arch] = {"max_abs_prob_diff": diff, "argmax_agreement": agree}
    return out


def one_client_twice(cfg: RunConfig, pid: int, device: str) -> dict:
    """Client `pid`'s first round from scratch (same seed) on `device`, in this process."""
    cfg = dataclasses.replace(cfg, client=dataclasses.replace(cfg.client, device=device),
                              run_dir=tempfile.mkdtemp(prefix="fedkt-gpu-check-one-"))
    _init_worker(cfg)
    return client_round((pid, 1, None, -1, alignment_seed(cfg.seed, 1)))


def shard_placement_timing(cfg: RunConfig, pid: int, device: str) -> dict:
    """Seconds of one private epoch of client `pid` with its shard on the CPU (batches copied to the device one
    at a time, as the clients do) and with the shard moved to the device once, side by side."""
    set_threads(cfg.client.num_cpus)
    data, device = client_data(cfg, pid), pick_device(device)
    out = {}
    for where in ("cpu", "device"):
        x, y = (data.x_train, data.y_train) if where == "cpu" else (data.x_train.to(device), data.y_train.to(device))
        torch.manual_seed(0)
        model = build_model(cfg.architectures[pid], num_classes=load_federation(cfg)[0].num_classes,
                            in_channels=x.shape[1],
                            norm=cfg.model.norm, stem=cfg.model.stem).to(device)
        optimizer = make_optimizer(model, cfg.client.lr)
        for timed in (False, True):  # the first epoch warms kernels and the allocator up
            start = time.perf_counter()
            train_epochs(model, x, y, optimizer, epochs=1, batch_size=cfg.client.batch_size,
                         device=device, augment=cfg.client.augment, seed=0)
            if timed:
                out[where] = time.perf_counter() - start
    return out


def coefficient_timing(cfg: RunConfig, device: str, num_clients: int, align_size: int) -> dict:
    """Seconds of one KT-pFL update of c with the run's settings for c (the server's own
    `make_coefficients`), `num_clients` clients and `align_size` samples of random predictions, on the CPU
    (all cores, as the server has them) and on `device`. The stopping rule is off (coef_tol=0): every step is
    taken, the worst case of a round."""
    set_threads(None)
    algo = dataclasses.replace(cfg.algorithm, align_size=align_size, coef_tol=0.0)
    probs = torch.softmax(torch.randn(num_clients, align_size, cfg.data.num_classes,
                                      generator=torch.Generator().manual_seed(0)), 2).numpy()
    out = {"steps": algo.coef_steps}
    for where in dict.fromkeys(["cpu", device]):
        sized = dataclasses.replace(cfg, num_clients=num_clients,
                                    algorithm=dataclasses.replace(algo, coef_device=where))
        make_coefficients(dataclasses.replace(sized, algorithm=dataclasses.replace(sized.algorithm, coef_steps=1))
                          ).update(probs)  # warm-up (kernels, allocator)
        coefficients = make_coefficients(sized)
        start = time.perf_counter()
        coefficients.update(probs)
        out[where] = time.perf_counter() - start
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="CIFAR-10 (data.root), e.g. .gpu_data/cifar10-jpeg.tar.gz")
    parser.add_argument("--dry", action="store_true", help="CPU, 4 clients of tiny synthetic data (the test suite)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --dry)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--algorithm", default="ktpfl", choices=["ktpfl", "fedmd", "local"],
                        help="local: clients also predict on the round's subset, for the checks (not uploaded)")
    parser.add_argument("--clients", type=int, default=0, help="default: the paper's 20 (4 with --dry)")
    parser.add_argument("--workers", type=int, default=0,
                        help="client processes, each a GPU share of 1/workers (default 4; 2 with --dry)")
    parser.add_argument("--compare-workers", type=int, nargs="*", default=[],
                        help="then the same rounds again with each of these worker counts (seconds per round only)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if not args.dry and args.data is None:
        parser.error("--data is required (or --dry)")
    args.device = args.device or ("cpu" if args.dry else "cuda")
    args.workers = args.workers or (2 if args.dry else 4)
    args.work = Path(tempfile.mkdtemp(prefix="fedkt-gpu-check-"))
    device = pick_device(args.device)  # a clear error where CUDA is missing
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, device {device} ({name}), {os.cpu_count()} cores, python "
          f"{sys.version.split()[0]}", flush=True)
    cfg = check_config(args)
    start = time.perf_counter()
    load_federation(cfg)  # decode the data once into the cache, before the workers read it
    print(f"data: {cfg.data.name}, {cfg.num_clients} clients, {time.perf_counter() - start:.1f} s",
          flush=True)
    report: dict = {"device": str(device), "device_name": name, "torch": torch.__version__, "cfg": cfg.to_dict()}
    report["rounds"], results = run_rounds(cfg, args.workers)
    report["state_on_cpu"] = state_loads_on_cpu(cfg, results)
    print("state written on the device, loaded on the CPU (max |prob diff|, argmax agreement): " + ", ".join(
        f"{a} {v['max_abs_prob_diff']:.2e} {v['argmax_agreement']:.4f}" for a, v in report["state_on_cpu"].items()))
    report["peak_memory_mib"] = {}
    for r in results:  # the last round's; reserved: what the worker's allocator held by then (all its clients)
        mib = report["peak_memory_mib"].setdefault(r["arch"], {"allocated": 0.0, "reserved": 0.0})
        mib["allocated"] = max(mib["allocated"], r["peak_bytes"] / 2**20)
        mib["reserved"] = max(mib["reserved"], r["peak_reserved_bytes"] / 2**20)
    print("peak memory per client, by architecture (MiB allocated / reserved by its worker): " + ", ".join(
        f"{a} {m['allocated']:.0f} / {m['reserved']:.0f}" for a, m in report["peak_memory_mib"].items()))
    first = one_client_twice(cfg, 0, args.device)
    again = one_client_twice(cfg, 0, args.device)
    cpu = one_client_twice(cfg, 0, "cpu")
    report["one_client"] = {"arch": first["arch"],
                            "repeat_max_abs_prob_diff": float(np.abs(first["probs"] - again["probs"]).max()),
                            "cpu_max_abs_prob_diff": float(np.abs(first["probs"] - cpu["probs"]).max()),
                            "cpu_argmax_agreement": float((first["probs"].argmax(1) == cpu["probs"].argmax(1)).mean())}
    print(f"client 0 ({first['arch']}), round 1 from the same seed: {args.device} twice max |prob diff| "
          f"{report['one_client']['repeat_max_abs_prob_diff']:.2e}; {args.device} vs cpu max |prob diff| "
          f"{report['one_client']['cpu_max_abs_prob_diff']:.2e}, argmax agreement "
          f"{report['one_client']['cpu_argmax_agreement']:.4f}")
    resnet = next((p for p, a in enumerate(cfg.architectures) if a == "resnet18"), 0)
    report["shard_epoch_seconds"] = shard_placement_timing(cfg, resnet, args.device)
    print(f"one epoch of client {resnet} ({cfg.architectures[resnet]}) with its shard on the cpu (batches "
          f"copied one at a time) {report['shard_epoch_seconds']['cpu']:.2f} s, moved to {args.device} once "
          f"{report['shard_epoch_seconds']['device']:.2f} s")
    sizes = [(cfg.num_clients, cfg.algorithm.align_size)]
    sizes += [] if args.dry else [(n, m) for n in (20, 100, 1000) for m in (500, 5000)]
    report["coefficient_update_seconds"] = {f"N={n},M={m}": coefficient_timing(cfg, args.device, n, m)
                                            for n, m in dict.fromkeys(sizes)}
    for key, seconds in report["coefficient_update_seconds"].items():
        print(f"coefficient update ({cfg.algorithm.objective}, {seconds['steps']} steps) {key}: "
              + ", ".join(f"{d} {s:.3f} s" for d, s in seconds.items() if d != "steps"), flush=True)
    later = [h["seconds"] for h in report["rounds"][1:]] or [report["rounds"][0]["seconds"]]
    print(f"SECONDS PER ROUND ({cfg.num_clients} clients, align {cfg.algorithm.align_size}, "
          f"{args.workers} workers on {name}): round 1 {report['rounds'][0]['seconds']:.1f}, "
          f"later {np.median(later):.1f}")
    report["compare_workers"] = {}
    for workers in args.compare_workers:  # the same work with another GPU share per worker (1/workers)
        rounds, _ = run_rounds(dataclasses.replace(cfg, run_dir=str(args.work / f"run_w{workers}")), workers)
        report["compare_workers"][workers] = rounds
        print(f"SECONDS PER ROUND with {workers} workers: round 1 {rounds[0]['seconds']:.1f}, later "
              f"{np.median([h['seconds'] for h in rounds[1:]] or [rounds[0]['seconds']]):.1f}", flush=True)
    if args.out:
        report["cfg"] = cfg.to_dict()
        args.out.write_text(json.dumps(report, indent=1, default=str))
    print("GPU CHECK PASSED" if device.type == "cuda" else "DRY CHECK PASSED")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckFailed as failure:
        print(f"GPU CHECK FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
