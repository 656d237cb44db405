"""What rebuilding a client's model from its saved state costs, per architecture: built and initialised, then the
saved tensors loaded (fedkt before 2026-11-29), against built on the meta device and given the saved tensors
(fedkt.learner.Learner now). Interleaved, median of --reps; one thread (a client's num_cpus).

    python bench/bench_restore.py [--stem imagenet] [--reps 7]
"""

import argparse
import statistics
import time

import torch

from fedkt.models import ARCHITECTURES, build_model
from fedkt.train import set_threads


def initialised(arch, stem, state):
    model = build_model(arch, 10, norm="none", stem=stem)
    model.load_state_dict(state)
    return model


def from_meta(arch, stem, state):
    with torch.device("meta"):
        model = build_model(arch, 10, norm="none", stem=stem)
    model.load_state_dict(state, assign=True)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stem", default="imagenet")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    set_threads(1)
    print(f"{time.strftime('%Y-%m-%d %H:%M')} | one thread | stem {args.stem} | median of {args.reps} interleaved reps")
    print("| architecture | built and initialised, then loaded (ms) | built on meta, tensors assigned (ms) | ratio |")
    print("|---|---:|---:|---:|")
    for arch in ARCHITECTURES:
        state = {k: v.clone() for k, v in build_model(arch, 10, stem=args.stem).state_dict().items()}
        times = {"init": [], "meta": []}
        for _ in range(args.reps):
            for name, make in (("init", initialised), ("meta", from_meta)):
                fresh = {k: v.clone() for k, v in state.items()}  # as torch.load gives them: tensors of its own
                start = time.perf_counter()
                make(arch, args.stem, fresh)
                times[name].append(time.perf_counter() - start)
        init, meta = statistics.median(times["init"]), statistics.median(times["meta"])
        print(f"| {arch} | {init * 1e3:.1f} | {meta * 1e3:.1f} | {meta / init:.2f}x |")


if __name__ == "__main__":
    main()
