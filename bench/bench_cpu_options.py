"""Cheaper CPU work per architecture: channels_last, bf16 autocast, skipping padding taps, torch.inference_mode,
prediction batch size, torch.compile.

    python bench/bench_cpu_options.py [--archs lenet,alexnet,resnet18,shufflenetv2] [--stem imagenet] [--norm none]
                                      [--threads 1] [--reps 5] [--compile] [--steps 20] [--distill-steps 5]
                                      [--samples 5000]

Synthetic 3x32x32 inputs and 10 classes (no data set needed); weights from torch.manual_seed(0). The defaults are the
paper_quick preset's client: ImageNet stem, no extra norm, one torch thread (client.num_cpus), training batch 32,
distillation batch 256 (KL to a soft target, fedkt.train.distillation_loss), prediction/evaluation batch 512.

The variants of one kind are timed side by side: after warm-up steps, each repetition runs every variant once
(A B A B ...), and a variant's figure is the median over repetitions. RATIOS are that median divided by the default's
median from the same interleaved run: 0.90x means the option takes 90 % of the default's time (10 % cheaper),
1.10x means 10 % dearer. Compare ratios, not absolute times: machines differ 4-9x and the load average (printed)
says how much other processes took. Kinds and their defaults:

- training: SGD step, cross-entropy, batch 32 -- default memory format vs channels_last (model and inputs), bf16
  autocast (torch.autocast("cpu", torch.bfloat16)), and both; the convolutions computing only the kernel taps that
  read the input (fedkt.models.skip_padding_taps: with the ImageNet stem, ResNet-18's and ShuffleNetV2's last
  stage; identical to the default elsewhere; fedkt's default since 2026-12-02), alone and with bf16 autocast (with
  the taps skipped, ResNet-18's bf16 steps got cheaper on an AMX Xeon, where bf16 alone made them dearer); and what
  the per-sample augmentation
  (fedkt.train.augment_batch: random crop and flip, vectorized) adds to a step;
- distillation: SGD step, KL to soft targets, batch 256 -- the same layout, bf16 and padding-tap variants;
- prediction: --samples images in eval mode -- torch.no_grad (today's fedkt.train._eval_mode) vs
  torch.inference_mode at batch 512, then batches 128 / 512 / 2048 (ratios to 512) in the faster mode;
- compile (--compile): torch.compile(model) for the training step: compile seconds (first calls less as many eager
  steps), the per-step ratio to eager, and the steps it takes to pay the compile time back ("never" when compiled
  is not faster). Inductor caches its kernels on disk (/tmp/torchinductor_$USER), so a second run compiles faster.

A verdict line per architecture lists the options that are faster than the default by more than 5 %.
"""

import argparse
import copy
import datetime
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from fedkt.config import cpu_bfloat16_units
from fedkt.models import ARCHITECTURES, build_model, skip_padding_taps
from fedkt.train import augment_batch, distillation_loss, make_optimizer, set_threads, usable_cores

NUM_CLASSES = 10
TRAIN_BATCH = 32
DISTILL_BATCH = 256
PREDICT_BATCH = 512           # fedkt's eval_batch_size default
PREDICT_BATCHES = (128, 512, 2048)
WARMUP_STEPS = 2
COMPILE_FIRST_CALLS = 2       # calls counted as compilation (the first compiles forward and backward)
FASTER = 0.95                 # a verdict lists an option whose ratio is below this


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_line():
    return "load average " + " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1 / 5 / 15 min)"


def median_seconds_interleaved(runs, reps):
    """runs: {name: callable returning seconds}. Calls them in turn, `reps` rounds; returns {name: median}."""
    times = {name: [] for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            times[name].append(run())
    return {name: statistics.median(values) for name, values in times.items()}


def seconds_per_step(step, steps):
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def as_channels_last(model, *tensors):
    return (model.to(memory_format=torch.channels_last),
            *(t.contiguous(memory_format=torch.channels_last) for t in tensors))


def training_step(model, x, y):
    """One SGD step with cross-entropy on (x, y), as fedkt.train.train_epochs does it."""
    model.train()
    optimizer = make_optimizer(model, lr=0.01)

    def step():
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def augmented_training_step(model, x, y):
    """The training step on an augmented copy of the batch, as train_epochs does with client.augment."""
    model.train()
    optimizer = make_optimizer(model, lr=0.01)
    generator = torch.Generator().manual_seed(0)

    def step():
        loss = F.cross_entropy(model(augment_batch(x, generator)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def augmentation_ratio(base, x, y, steps, reps):
    """Seconds of the augmented training step over the plain one, timed side by side."""
    medians = timed_variants({"plain": training_step(copy.deepcopy(base), x, y),
                              "augmented": augmented_training_step(copy.deepcopy(base), x, y)}, steps, reps)
    return medians["augmented"] / medians["plain"]


def distillation_step(model, x, targets):
    """One SGD step towards soft targets with the KL loss, as fedkt.train.distill does it."""
    model.train()
    optimizer = make_optimizer(model, lr=0.01)

    def step():
        loss = distillation_loss(model(x), targets, 1.0, "kl")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def prediction_pass(model, x, mode, batch_size):
    """All of x through the eval-mode model in batches under `mode` (a context manager class), as predict_logits."""
    model.eval()

    def run():
        with mode():
            outputs = [model(x[s:s + batch_size]).float() for s in range(0, len(x), batch_size)]
            return torch.cat(outputs)
    return run


def timed_variants(steps_by_name, steps, reps):
    """Warm up each step, then {name: median seconds per step} over `reps` interleaved repetitions."""
    for step in steps_by_name.values():
        for _ in range(WARMUP_STEPS):
            step()
    runs = {name: (lambda s=step: seconds_per_step(s, steps)) for name, step in steps_by_name.items()}
    return median_seconds_interleaved(runs, reps)


def autocast_bf16(step):
    """The step under CPU autocast to bfloat16: weights and optimizer stay float32, convolutions and matrix products
    run in bfloat16 (fast only where the CPU has AMX or AVX-512 BF16 units; emulated, and slow, elsewhere)."""
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            step()
    return run


def layout_ratios(base, make_step, inputs, steps, reps):
    """(default seconds per step, {variant: ratio to the default}) for the step made by make_step(model, *inputs):
    channels_last, bf16 autocast, both, skipping the kernel taps that only read padding (fedkt's default since
    2026-12-02), and that with bf16."""
    last = lambda: as_channels_last(copy.deepcopy(base), *inputs[:1])  # noqa: E731
    last_model, *last_inputs = last()
    bf16_last_model, *bf16_last_inputs = last()
    medians = timed_variants({
        "default": make_step(copy.deepcopy(base), *inputs),
        "channels_last": make_step(last_model, *last_inputs, *inputs[1:]),
        "bf16": autocast_bf16(make_step(copy.deepcopy(base), *inputs)),
        "bf16 + channels_last": autocast_bf16(make_step(bf16_last_model, *bf16_last_inputs, *inputs[1:])),
        "skip padding taps": make_step(skip_padding_taps(copy.deepcopy(base)), *inputs),
        "skip padding taps + bf16": autocast_bf16(make_step(skip_padding_taps(copy.deepcopy(base)), *inputs))},
        steps, reps)
    return medians["default"], {name: value / medians["default"] for name, value in medians.items()
                                if name != "default"}


def prediction_ratios(base, x, reps):
    """no_grad seconds and inference_mode ratio at batch 512; then the faster mode and batch ratios to 512."""
    model = copy.deepcopy(base)
    modes = timed_variants({"no_grad": prediction_pass(model, x, torch.no_grad, PREDICT_BATCH),
                            "inference_mode": prediction_pass(model, x, torch.inference_mode, PREDICT_BATCH)},
                           1, reps)
    mode_name = min(modes, key=modes.get)
    mode = getattr(torch, mode_name)
    batches = timed_variants({b: prediction_pass(model, x, mode, b) for b in PREDICT_BATCHES}, 1, reps)
    return dict(no_grad=modes["no_grad"], inference_mode=modes["inference_mode"] / modes["no_grad"], mode=mode_name,
                **{f"batch {b}": batches[b] / batches[PREDICT_BATCH] for b in PREDICT_BATCHES})


def compile_payback(base, x, y, steps, reps):
    """Training step compiled vs eager: dict of eager seconds/step, ratio, compile seconds, steps to pay back;
    or a string saying why compiling failed."""
    import torch._dynamo

    torch._dynamo.reset()
    eager_step = training_step(copy.deepcopy(base), x, y)
    try:
        compiled_step = training_step(torch.compile(copy.deepcopy(base)), x, y)
        start = time.perf_counter()
        for _ in range(COMPILE_FIRST_CALLS):
            compiled_step()
        first_calls = time.perf_counter() - start
    except Exception as error:  # no C++ compiler, unsupported platform, ...: report and carry on
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:160] if str(error).strip() else ''}"
    medians = timed_variants({"eager": eager_step, "compiled": compiled_step}, steps, reps)
    eager, compiled = medians["eager"], medians["compiled"]
    compile_seconds = max(first_calls - COMPILE_FIRST_CALLS * eager, 0.0)
    saving = eager - compiled
    return dict(eager=eager, ratio=compiled / eager, compile_seconds=compile_seconds,
                payback=compile_seconds / saving if saving > 0 else None)


def ratio(value):
    return f"{value:.2f}x"


def print_table(title, header, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def verdict(arch, results):
    """The options of one architecture that beat the default by more than 5 %."""
    wins = []
    for kind in ("training", "distillation"):
        for variant, value in results[kind][1].items():
            if value < FASTER:
                wins.append(f"{variant} for {kind} ({ratio(value)})")
    pred = results["prediction"]
    if pred["inference_mode"] < FASTER:
        wins.append(f"inference_mode for prediction ({ratio(pred['inference_mode'])})")
    for b in PREDICT_BATCHES:
        if b != PREDICT_BATCH and pred[f"batch {b}"] < FASTER:
            wins.append(f"prediction batch {b} ({ratio(pred[f'batch {b}'])} of batch {PREDICT_BATCH})")
    comp = results.get("compile")
    if isinstance(comp, dict) and comp["ratio"] < FASTER:
        wins.append(f"torch.compile for training ({ratio(comp['ratio'])}, pays back after "
                    f"{comp['payback']:,.0f} steps)")
    return f"- {arch}: " + ("; ".join(wins) if wins else "nothing faster by more than 5 %")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default=",".join(ARCHITECTURES), help="comma-separated architectures")
    parser.add_argument("--stem", default="imagenet", help="cifar | imagenet (ResNet-18, ShuffleNetV2)")
    parser.add_argument("--norm", default="none", help="none | batch (LeNet, AlexNet)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (a client's num_cpus)")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions; figures are their median")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per repetition")
    parser.add_argument("--distill-steps", type=int, default=5, help="timed distillation steps per repetition")
    parser.add_argument("--samples", type=int, default=5000, help="images per prediction pass")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile for the training step")
    args = parser.parse_args()

    threads = set_threads(args.threads)
    archs = args.archs.split(",")
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M} | torch {torch.__version__} | {cpu_name()} | "
          f"{usable_cores()} usable cores ({os.cpu_count()} online) | torch threads {threads} | {load_line()} at start")
    print(f"bfloat16 units: {cpu_bfloat16_units() or 'none (bf16 is emulated: expect it slower)'}")
    print(f"stem {args.stem}, norm {args.norm} | median of {args.reps} interleaved reps | training {args.steps} "
          f"steps x batch {TRAIN_BATCH}, distillation {args.distill_steps} steps x batch {DISTILL_BATCH}, "
          f"prediction {args.samples:,} samples per rep, after {WARMUP_STEPS} warm-up steps | "
          "ratio = option / default (below 1 is faster)")

    gen = torch.Generator().manual_seed(0)
    x_train = torch.randn(TRAIN_BATCH, 3, 32, 32, generator=gen)
    y_train = torch.randint(0, NUM_CLASSES, (TRAIN_BATCH,), generator=gen)
    x_distill = torch.randn(DISTILL_BATCH, 3, 32, 32, generator=gen)
    soft_targets = torch.softmax(torch.randn(DISTILL_BATCH, NUM_CLASSES, generator=gen), dim=1)
    x_predict = torch.randn(args.samples, 3, 32, 32, generator=gen)

    results = {}
    for arch in archs:
        torch.manual_seed(0)
        base = build_model(arch, NUM_CLASSES, norm=args.norm, stem=args.stem)
        results[arch] = dict(
            training=layout_ratios(base, training_step, (x_train, y_train), args.steps, args.reps),
            distillation=layout_ratios(base, distillation_step, (x_distill, soft_targets), args.distill_steps,
                                       args.reps),
            prediction=prediction_ratios(base, x_predict, args.reps),
            augmentation=augmentation_ratio(base, x_train, y_train, args.steps, args.reps))
        if args.compile:
            results[arch]["compile"] = compile_payback(base, x_train, y_train, args.steps, args.reps)
        print(f"  ({arch} done, {load_line()})", flush=True)

    variants = list(next(iter(results.values()))["training"][1])
    print_table(f"training step (batch {TRAIN_BATCH}): memory format, bf16 autocast, and the augmentation's cost",
                ["arch", "default ms/step", *variants, "with augmentation"],
                [[arch, f"{r['training'][0] * 1e3:.2f}", *(ratio(r["training"][1][v]) for v in variants),
                  ratio(r["augmentation"])] for arch, r in results.items()])
    print_table(f"distillation step (batch {DISTILL_BATCH}): memory format, bf16 autocast",
                ["arch", "default ms/step", *variants],
                [[arch, f"{r['distillation'][0] * 1e3:.2f}", *(ratio(r["distillation"][1][v]) for v in variants)]
                 for arch, r in results.items()])
    print_table(f"prediction ({args.samples:,} samples)",
                ["arch", f"no_grad s (batch {PREDICT_BATCH})", "inference_mode", "faster mode",
                 *(f"batch {b}" for b in PREDICT_BATCHES)],
                [[arch, f"{p['no_grad']:.3f}", ratio(p["inference_mode"]), p["mode"],
                  *(ratio(p[f"batch {b}"]) for b in PREDICT_BATCHES)]
                 for arch, p in ((a, r["prediction"]) for a, r in results.items())])
    if args.compile:
        rows, skipped = [], []
        for arch, r in results.items():
            c = r["compile"]
            if isinstance(c, str):
                skipped.append(f"torch.compile skipped for {arch}: {c}")
                continue
            payback = "never" if c["payback"] is None else f"{c['payback']:,.0f}"
            rows.append([arch, f"{c['eager'] * 1e3:.2f}", ratio(c["ratio"]), f"{c['compile_seconds']:.1f}", payback])
        print_table(f"torch.compile, training step (batch {TRAIN_BATCH})",
                    ["arch", "eager ms/step", "compiled", "compile s", "steps to pay back"], rows)
        for line in skipped:
            print(line)
    print("\n### verdict (faster than the default by more than 5 %)\n")
    for arch, r in results.items():
        print(verdict(arch, r))
    print(f"\n{load_line()} at end")


if __name__ == "__main__":
    main()
