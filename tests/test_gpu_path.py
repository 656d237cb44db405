"""The GPU path, tested without a GPU: the Ray resources each client asks for, how many client actors a node
runs, which machine the device questions are asked of, and where the client's steps put their tensors.

CUDA is made "present" by patching torch's answers (torch.cuda.is_available / device_count) where only the
answer matters; Ray is given logical GPUs (it schedules them like real ones and sets CUDA_VISIBLE_DEVICES for
each actor); device placement runs on fake CUDA tensors (forward) and on the meta device (training steps).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from fedkt import sim
from fedkt.app_config import cfg_from_run_config
from fedkt.config import (ConfigError, build_config, check_ray_resources, check_server_device, compose, flatten,
                          gpus_per_client, load_config)
from fedkt.models import ARCHITECTURES, build_model
from fedkt.train import augment_batch, distill, make_optimizer, predict_logits, train_epochs

REPO = Path(__file__).resolve().parent.parent


def _gpus_seen(monkeypatch, count: int):
    """torch answers as on a machine with `count` GPUs (nothing is run on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    sim.node_gpus.cache_clear()
    yield
    sim.node_gpus.cache_clear()


@pytest.fixture
def cuda_present(monkeypatch):
    yield from _gpus_seen(monkeypatch, 1)


@pytest.fixture
def cuda_absent(monkeypatch):
    yield from _gpus_seen(monkeypatch, 0)


def resources(*overrides):
    cfg = load_config(["experiment=smoke", *overrides])
    check_ray_resources(cfg, sim.node_gpus(cfg.ray.address))
    return sim.backend_config(cfg)["client_resources"]


# -- the Ray resource request for each device / num_gpus combination ---------------------------------------

@pytest.mark.parametrize("device, share, expected", [
    ("auto", -1, 0.25), ("cuda", -1, 0.25), ("cuda:0", -1, 0.25), ("cpu", -1, 0.0),
    ("auto", 0, 0.0), ("cpu", 0, 0.0), ("auto", 0.5, 0.5), ("cuda", 1, 1.0),
])
def test_resource_request_with_cuda(cuda_present, device, share, expected):
    assert resources(f"client.device={device}", f"client.num_gpus={share}") == {"num_cpus": 1, "num_gpus": expected}


@pytest.mark.parametrize("device, share", [("auto", -1), ("cpu", -1), ("auto", 0), ("cpu", 0)])
def test_resource_request_without_cuda(cuda_absent, device, share):
    assert resources(f"client.device={device}", f"client.num_gpus={share}") == {"num_cpus": 1, "num_gpus": 0.0}


def test_bug2_device_cpu_asks_for_no_gpu_share(cuda_present):
    """Bug 2: with client.device=cpu on a GPU machine every client asked Ray for 0.25 GPU (4 actors at most)."""
    assert sim.backend_config(load_config(["client.device=cpu"]))["client_resources"]["num_gpus"] == 0.0


def test_local_ray_gets_the_gpus_torch_sees(cuda_present):
    assert sim.backend_config(load_config([]))["init_args"]["num_gpus"] == 1


@pytest.mark.parametrize("overrides, key, gpus", [
    (["client.device=cuda"], "client.device", 0),
    (["client.num_gpus=0.5"], "client.num_gpus", 0),
    (["client.device=cpu", "client.num_gpus=0.5"], "client.device=cpu", 1),
    (["client.device=cuda", "client.num_gpus=0"], "client.num_gpus=0", 1),
    (["client.device=cuda:1"], "client.device='cuda:1'", 2),
])
def test_simulation_device_requests_that_cannot_work(overrides, key, gpus):
    cfg = load_config(overrides)  # machine-independent checks pass
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_ray_resources(cfg, gpus)


def test_the_server_update_on_cuda_needs_cuda_where_the_server_runs():
    cuda = load_config(["algorithm=ktpfl", "algorithm.coef_device=cuda"])
    with pytest.raises(ConfigError, match=r"algorithm\.coef_device=cuda.*no CUDA"):
        check_server_device(cuda, has_cuda=False)
    check_server_device(cuda, has_cuda=True)
    check_server_device(load_config(["algorithm=ktpfl"]), has_cuda=False)  # auto: the CPU where there is no GPU
    check_server_device(load_config(["algorithm=fedmd", "algorithm.coef_device=cuda"]), has_cuda=False)  # no c


@pytest.mark.parametrize("override, key", [
    ("client.num_cpus=0.5", "client.num_cpus"),
    ("client.num_cpus=1.5", "client.num_cpus"),
    ("client.num_gpus=-0.5", "client.num_gpus"),
    ("client.device=cuda:x", "client.device"),
    ("client.device=gpu", "client.device"),
    ("client.device=cuda:", "client.device"),
])
def test_validate_device_and_cpu_choices(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config(compose([override]))


def test_whole_cpus_and_device_choices_pass():
    for override in ("client.num_cpus=2", "client.num_cpus=2.0", "client.device=cuda:3", "client.num_gpus=0.125"):
        build_config(compose([override]))  # cuda:3 may exist on a SuperNode; the simulation refuses it separately


def test_bug4_fractional_num_cpus_is_refused_before_ray():
    """Bug 4: client.num_cpus=0.5 passed, became 0 through int(), and divided by zero in Flower's pool sizing."""
    with pytest.raises(ConfigError, match=r"client\.num_cpus=0\.5 must be a whole number"):
        build_config(compose(["client.num_cpus=0.5"]))


def test_bug3_cuda_n_under_ray_is_refused_before_data(cuda_present, monkeypatch, tmp_path):
    """Bug 3: client.device=cuda:1 passed on a 2-GPU driver, then every fit raised in actors that see one GPU."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = compose(["experiment=smoke", "client.device=cuda:1", "data.name=cifar10", "data.root=/nonexistent/cifar"])
    with pytest.raises(ConfigError, match=r"client\.device='cuda:1'.*sees as cuda:0"):
        sim.run(cfg, tmp_path / "run")  # refused before the data (which does not exist) is looked at


def test_bug5_ray_cluster_gpus_not_the_drivers(monkeypatch, tmp_path):
    """Bug 5 (simulation): with ray.address, an explicit share was refused because the driver has no CUDA,
    and the auto share became 0, though the cluster's workers have GPUs. The cluster is asked instead
    (node_gpus answers for it here: connecting to a cluster is covered by tests/test_ray_cluster.py)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the driver has no GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    asked = []
    monkeypatch.setattr(sim, "node_gpus", lambda address: asked.append(address) or 2.0)
    cfg = compose(["experiment=smoke", "ray.address=10.0.0.1:6379", "client.num_gpus=0.25", "data.name=cifar10",
                   "data.root=/nonexistent/cifar"])
    with pytest.raises(Exception) as error:
        sim.run(cfg, tmp_path / "run")
    assert "data.root" in str(error.value) and "GPU" not in str(error.value)  # past the device checks
    assert asked == ["10.0.0.1:6379"]
    assert sim.backend_config(load_config(["ray.address=10.0.0.1:6379"]))["client_resources"]["num_gpus"] == 0.25


def test_bug5_deployed_server_leaves_devices_to_the_supernodes(cuda_absent):
    """Bug 5 (deployment): a GPU-less ServerApp refused client.device=cuda meant for its SuperNodes."""
    with open(REPO / "pyproject.toml", "rb") as handle:
        run_config = flatten(tomllib.load(handle)["tool"]["flwr"]["app"]["config"])
    cfg = cfg_from_run_config({**run_config, "client.device": "cuda", "client.num_gpus": 0.5})
    assert cfg.client.device == "cuda"


# -- Ray itself, with one logical GPU: actors per node and what each actor sees ----------------------------

RAY_SCRIPT = r"""
import json, os, sys
import torch
torch.cuda.device_count = lambda: 1  # the node of the GPU machine: 16 cores, one GPU (logical here)
torch.cuda.is_available = lambda: True
os.cpu_count = lambda: 16
import ray
from flwr.simulation.ray_transport.ray_actor import pool_size_from_resources
from fedkt.config import load_config
from fedkt.sim import backend_config, cluster_gpus, configure_logging, set_ray_environment

configure_logging(False)
set_ray_environment()
backends = {dev: backend_config(load_config([f"client.device={dev}"])) for dev in ("auto", "cpu")}
ray.init(**backends["auto"]["init_args"], include_dashboard=False, _temp_dir=sys.argv[1])

@ray.remote
class Client:
    def visible(self):
        return os.environ.get("CUDA_VISIBLE_DEVICES")

out = {"cluster_gpus": cluster_gpus()}
for dev, backend in backends.items():
    res = backend["client_resources"]
    actor = Client.options(**res).remote()
    out[dev] = {"resources": res, "actors": pool_size_from_resources(res), "visible": ray.get(actor.visible.remote())}
    ray.kill(actor)
ray.shutdown()
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def ray_node():
    temp = Path(tempfile.mkdtemp(prefix="fkgpu", dir="/tmp"))  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if k != "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0")  # as fedkt used to set it: the fix must override it
    try:
        proc = subprocess.run([sys.executable, "-c", RAY_SCRIPT, str(temp)], capture_output=True, text=True,
                              timeout=300, env=env, cwd=REPO)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[0][len("RESULT "):])


def test_flower_runs_four_gpu_clients_on_16_cores_and_one_gpu(ray_node):
    assert ray_node["cluster_gpus"] == 1
    assert ray_node["auto"]["resources"] == {"num_cpus": 1, "num_gpus": 0.25}
    assert ray_node["auto"]["actors"] == 4
    assert ray_node["auto"]["visible"] == "0"  # the actor sees its GPU (as cuda:0)


def test_bug1_clients_without_a_gpu_share_do_not_see_the_gpu(ray_node):
    """Bug 1: RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0 let actors that asked for no GPU see all of them, so with
    device=auto up to one actor per core ran on GPU 0, uncounted by Ray."""
    assert ray_node["cpu"]["resources"] == {"num_cpus": 1, "num_gpus": 0.0}
    assert ray_node["cpu"]["actors"] == 16  # one per core, not capped by the GPU
    assert ray_node["cpu"]["visible"] == ""  # hidden: torch in that actor finds no GPU, auto -> cpu


# -- where the client's steps put their tensors ----------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_and_prediction_stay_on_cuda_with_fake_tensors(arch):
    """Model, augmented batch and logits on cuda; a CPU batch fed to the CUDA model is a device error."""
    model = build_model(arch, num_classes=10, in_channels=3, norm="batch", stem="cifar")
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to("cuda")
        assert {p.device.type for p in [*model.parameters(), *model.buffers()]} == {"cuda"}
        xb = augment_batch(torch.randn(8, 3, 32, 32).to("cuda"), torch.Generator().manual_seed(0))
        logits = model(xb)
        assert logits.device.type == "cuda" and logits.shape == (8, 10)
        assert F.softmax(logits.float(), 1).cpu().device.type == "cpu"  # what predict_logits returns
        with pytest.raises(RuntimeError, match="same device"):
            model(torch.randn(2, 3, 32, 32))


def test_training_steps_run_on_the_devices_model_with_cpu_data():
    """train_epochs and distill with x, y, targets on the CPU and the model on another device (meta: every
    op of the step runs there, a tensor left on the CPU would raise): the whole loop runs, momentum state is
    created on that device, and only the final .item() (which meta tensors cannot give) stops it."""
    meta = torch.device("meta")
    model = build_model("resnet18", num_classes=10, in_channels=3, norm="batch", stem="cifar").to(meta)
    optimizer = make_optimizer(model, 0.1)  # as the client does: the model is on its device first
    x, y = torch.randn(40, 3, 32, 32), torch.randint(0, 10, (40,))
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        train_epochs(model, x, y, optimizer, epochs=1, batch_size=16, device=meta, augment=True)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {s["momentum_buffer"].device.type for s in optimizer.state.values()} == {"meta"}
    assert len(optimizer.state) == len(list(model.parameters()))  # every parameter took a step
    targets = torch.softmax(torch.randn(40, 10), 1)
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        distill(model, x, targets, optimizer, batch_size=16, device=meta)
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        predict_logits(model, x, device=meta)  # its .cpu() of meta logits: the only step that leaves the device


def test_gpus_per_client_is_a_question_about_the_clients_node():
    cfg = load_config([])
    assert gpus_per_client(cfg, 0) == 0.0 and gpus_per_client(cfg, 8) == 0.25


# -- scripts/gpu_check.py in its dry mode: the same code path on the CPU, tiny sizes -----------------------

def test_gpu_check_dry_runs_the_whole_check_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--dry", "--compare-workers", "1",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "DRY CHECK PASSED" in proc.stdout and "SECONDS PER ROUND" in proc.stdout
    report = json.loads(out.read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert all(0 <= r["mean_test_acc"] <= 1 and len(r["test_acc"]) == 4 for r in report["rounds"])
    assert set(report["state_on_cpu"]) == set(ARCHITECTURES)  # every architecture's state reloaded on the CPU
    assert all(v["max_abs_prob_diff"] < 1e-6 for v in report["state_on_cpu"].values())  # CPU -> CPU: same kernels
    assert report["one_client"]["repeat_max_abs_prob_diff"] == 0.0  # same seed, same figures on the CPU
    assert set(report["coefficient_update_seconds"]["N=4,M=32"]) == {"cpu", "steps"}  # the run's settings for c
    assert report["coefficient_update_seconds"]["N=4,M=32"]["steps"] == 20
    assert [r["round"] for r in report["compare_workers"]["1"]] == [1, 2]  # the same rounds with one worker


def test_gpu_check_needs_no_flower_ray_or_hydra():
    """The GPU machine has torch but no flwr, ray, hydra or omegaconf: the check must import without them."""
    code = ("import runpy, sys; sys.modules.update(dict.fromkeys(['flwr', 'ray', 'hydra', 'omegaconf']));"
            f"runpy.run_path({str(REPO / 'scripts' / 'gpu_check.py')!r})")  # None in sys.modules: ImportError
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]  # run_path without __main__: imports only


@pytest.fixture
def gpu_check(tmp_path, monkeypatch):
    """scripts/gpu_check.py as a module, its data cache in tmp_path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("FEDKT_CACHE", str(tmp_path / "cache"))
    return module


def test_gpu_check_client_round_is_the_knowledge_clients_fit(tmp_path, gpu_check):
    """The check runs the client's round without Flower; on the CPU it must upload exactly what the real
    KnowledgeClient uploads for the same config, round, target and seeds (rounds 1 and 2), so that the check
    cannot drift from the client it stands for."""
    from flwr.app import RecordDict
    from flwr.common import Context

    from fedkt.client_app import KnowledgeClient
    from fedkt.core import soft_predictions

    cfg = load_config(["experiment=smoke", "model.architectures=[lenet,alexnet]", "client.device=cpu"])
    pid, seeds = 2, (11, 22)  # clients 0, 1: lenet; 2, 3: alexnet
    client = KnowledgeClient(cfg.replace(run_dir=str(tmp_path / "client")),
                             Context(run_id=0, node_id=7, node_config={"partition-id": pid}, state=RecordDict(),
                                     run_config={}))
    gpu_check._init_worker(cfg.replace(run_dir=str(tmp_path / "check")))
    target, target_seed = None, -1
    for rnd, next_seed in enumerate(seeds, start=1):
        fit = {"round": rnd, "epochs": 1, "next_seed": next_seed, "target_seed": target_seed,
               "target_partition": pid if target is not None else -1}
        (logits,), _, _ = client.fit([] if target is None else [target], fit)
        mine = gpu_check.client_round((pid, rnd, target, target_seed, next_seed))
        assert mine["arch"] == "alexnet" and mine["placed"] == ["cpu"] and mine["inputs"] == ["cpu"]
        np.testing.assert_array_equal(mine["probs"], soft_predictions(logits, cfg.algorithm.temperature))
        target, target_seed = np.roll(mine["probs"], 1, axis=1), next_seed  # a target unlike its own


def test_gpu_check_training_alone_predicts_for_its_checks(tmp_path, gpu_check):
    """--algorithm local: the client uploads nothing (next seed -1), so the check predicts on the round's subset
    itself, from the state the round saved, for the upload and state checks."""
    from fedkt.core import alignment_seed, soft_predictions
    from fedkt.learner import Learner

    cfg = load_config(["experiment=smoke", "algorithm=local", "client.device=cpu"]).replace(
        run_dir=str(tmp_path / "check"))
    gpu_check._init_worker(cfg)
    result = gpu_check.client_round((1, 1, None, -1, -1))
    assert result["probs"].shape == (cfg.algorithm.align_size, 10)
    saved = (tmp_path / "check" / "client_0001.pt").read_bytes()
    again = Learner(cfg, 1, saved).predict(alignment_seed(cfg.seed, 1))
    np.testing.assert_allclose(result["probs"], soft_predictions(again, cfg.algorithm.temperature), atol=1e-6)
