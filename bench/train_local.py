"""Train one architecture alone on one client's shard and print its accuracy per epoch (no Flower).

    python bench/train_local.py --data ../shared/data/cifar10-jpeg.tar.gz --client 0 --archs lenet,resnet18 --epochs 5

The shard is the one `python -m fedkt.sim` would give that client under the same config overrides
(`--set key=value`, e.g. `--set partition=type2`), so the figures compare with a federated run's.
"""

from __future__ import annotations

import argparse
import time

import torch

from fedkt.config import load_config
from fedkt.models import build_model
from fedkt.task import client_data, load_federation
from fedkt.train import evaluate, make_optimizer, pick_device, set_threads, train_epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="data.root: the CIFAR-10 archive or folder")
    parser.add_argument("--client", type=int, default=0, help="partition id")
    parser.add_argument("--archs", default="lenet,resnet18")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. partition=type2 model.norm=batch")
    args = parser.parse_args()

    cfg = load_config([f"data.root={args.data}", *args.set])
    c = cfg.client
    set_threads()
    device = pick_device(c.device)
    data = client_data(cfg, args.client)
    print(f"client {args.client}: {len(data.y_train)} train / {len(data.y_val)} val / {len(data.y_test)} test images, "
          f"partition {cfg.partition.scheme}, stem {cfg.model.stem}, norm {cfg.model.norm}, "
          f"lr {c.lr}, batch {c.batch_size}, device {device}")
    print("| architecture | epoch | train acc | val acc | test acc | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for arch in args.archs.split(","):
        torch.manual_seed(cfg.seed)
        model = build_model(arch, num_classes=load_federation(cfg)[0].num_classes, norm=cfg.model.norm,
                            stem=cfg.model.stem).to(device)
        optimizer = make_optimizer(model, c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        start = time.time()
        for epoch in range(1, args.epochs + 1):
            train = train_epochs(model, data.x_train, data.y_train, optimizer, 1, c.batch_size, device,
                                 augment=c.augment, seed=epoch)
            _, val_acc = evaluate(model, data.x_val, data.y_val, device=device)
            _, test_acc = evaluate(model, data.x_test, data.y_test, device=device)
            print(f"| {arch} | {epoch} | {train['acc']:.3f} | {val_acc:.3f} | {test_acc:.3f} | {time.time() - start:.1f} |")


if __name__ == "__main__":
    main()
