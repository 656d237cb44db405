"""Speed of the client architectures: parameters, training images/s and inference images/s.

Training: SGD (momentum 0.9) with cross-entropy, batch 64, 32x32x3 inputs, after a warm-up.
Inference: eval mode, no grad, batch 512. Prints a Markdown table.

    python bench/bench_models.py [--device auto|cpu|cuda] [--seconds 3] [--archs lenet,alexnet]
"""

import argparse
import datetime
import os
import time

import torch
import torch.nn.functional as F

from fedkt.models import ARCHITECTURES, build_model, count_parameters
from fedkt.train import pick_device, set_threads, usable_cores

TRAIN_BATCH = 64
INFER_BATCH = 512


def variants(archs):
    """(arch, norm, stem) rows: both norms for the small CNNs, both stems for the torchvision models."""
    for arch in archs:
        if arch in ("lenet", "alexnet"):
            yield arch, "none", "cifar"
            yield arch, "batch", "cifar"
        else:
            yield arch, "none", "cifar"
            yield arch, "none", "imagenet"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(step, batch, device, seconds, warmup=3):
    """Run `step` `warmup` times, then repeatedly for about `seconds`; return images per second."""
    for _ in range(warmup):
        step()
    _sync(device)
    done, start = 0, time.perf_counter()
    while True:
        step()
        done += 1
        if done % 4 == 0 or device.type == "cpu":
            _sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return done * batch / elapsed


def bench_training(model, device, seconds):
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(TRAIN_BATCH, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (TRAIN_BATCH,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return images_per_second(step, TRAIN_BATCH, device, seconds)


def bench_inference(model, device, seconds):
    model.eval()
    x = torch.randn(INFER_BATCH, 3, 32, 32, device=device)

    def step():
        with torch.no_grad():
            model(x)

    return images_per_second(step, INFER_BATCH, device, seconds, warmup=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--archs", default=",".join(ARCHITECTURES), help="comma-separated architectures")
    args = parser.parse_args()

    device = pick_device(args.device)
    threads = set_threads()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M} | torch {torch.__version__} | device {device} ({name}) | "
          f"cores {usable_cores()} | threads {threads} | {args.seconds:g} s per measurement | "
          f"load average at start {os.getloadavg()[0]:.2f} (other processes skew CPU numbers)")
    print()
    print(f"| arch | norm | stem | params | train img/s (batch {TRAIN_BATCH}) | infer img/s (batch {INFER_BATCH}) |")
    print("|---|---|---|---:|---:|---:|")
    for arch, norm, stem in variants(args.archs.split(",")):
        torch.manual_seed(0)
        model = build_model(arch, num_classes=10, norm=norm, stem=stem).to(device)
        train = bench_training(model, device, args.seconds)
        infer = bench_inference(model, device, args.seconds)
        print(f"| {arch} | {norm} | {stem} | {count_parameters(model):,} | {train:,.0f} | {infer:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
