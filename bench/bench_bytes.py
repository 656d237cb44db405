"""Bytes on the wire per client per round: KT-pFL/FedMD predictions (float32 and float16) against what
each architecture's parameters would cost under parameter averaging (FedAvg sends the model both ways).

    python bench/bench_bytes.py --align-size 5000 --classes 10
"""

from __future__ import annotations

import argparse

from fedkt.models import ARCHITECTURES, build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--align-size", type=int, default=5000, help="alignment subset size M")
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    m, c = args.align_size, args.classes
    # a round: the client uploads its predictions on the new subset and downloads its target on the last one
    pred32, pred16 = 2 * m * c * 4, 2 * m * c * 2
    print(f"M = {m} alignment samples, C = {c} classes; a round = upload predictions + download target")
    print("| architecture | parameters | FedAvg bytes/round (fp32 up+down) | KT-pFL fp32 | KT-pFL fp16 | "
          "FedAvg / KT-pFL fp32 | FedAvg / KT-pFL fp16 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for arch in ARCHITECTURES:
        for stem in (("cifar", "imagenet") if arch in ("resnet18", "shufflenetv2") else ("cifar",)):
            params = sum(p.numel() for p in build_model(arch, num_classes=c, stem=stem).parameters())
            fedavg = 2 * params * 4
            name = arch if stem == "cifar" else f"{arch} ({stem} stem)"
            print(f"| {name} | {params:,} | {fedavg / 1e6:.2f} MB | {pred32 / 1e6:.2f} MB | {pred16 / 1e6:.2f} MB | "
                  f"{fedavg / pred32:.1f}x | {fedavg / pred16:.1f}x |")


if __name__ == "__main__":
    main()
