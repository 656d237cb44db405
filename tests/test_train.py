"""Training, evaluation, distillation, lr policy, early stopping and checkpoints on tiny synthetic data."""

import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fedkt.models import build_model
from fedkt.train import (
    LRPolicy,
    augment_batch,
    distill,
    distillation_loss,
    evaluate,
    make_optimizer,
    pick_device,
    predict_logits,
    set_threads,
    state_from_bytes,
    state_to_bytes,
    steps_per_epoch,
    train_epochs,
)
from helpers import (load_state, reference_cosine_lrs, reference_plateau_lrs, save_state,
                     train_with_early_stopping)

NUM_CLASSES = 4


def make_data(n, seed=0, size=8, noise=1.0):
    """Images whose mean depends on the class: easy, but not trivially separable at high noise."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(NUM_CLASSES, 3, size, size, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    x = means[y] * 0.5 + noise * torch.randn(n, 3, size, size, generator=g)
    return x, y


def small_net(seed=0, dropout=0.2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(8 * 8 * 8, NUM_CLASSES))


class ConstantClassifier(nn.Module):
    """Always predicts class 0 (with one dummy parameter so that it has a device)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([2.0, 0.0, 0.0, 0.0]))

    def forward(self, x):
        return self.bias.expand(len(x), -1)


# ---------------------------------------------------------------------------------------------- devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_pick_device_without_cuda():
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device(name)


def test_pick_device_bad_name():
    for bad in ("gpu", "cuda:x", "", 3):
        with pytest.raises(ValueError, match="preference"):
            pick_device(bad)


def test_set_threads_twice_does_not_raise():
    n = set_threads()
    assert n == len(os.sched_getaffinity(0))
    assert set_threads(1) == 1
    assert set_threads(n) == n
    with pytest.raises(ValueError, match="num_threads"):
        set_threads(0)


# ---------------------------------------------------------------------------------------------- augmentation


def test_augment_batch_is_a_padded_crop_or_its_mirror():
    x = torch.randn(64, 3, 8, 8)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    flips = 0
    for i in range(len(x)):
        crops = [padded[i, :, t:t + 8, l:l + 8] for t in range(9) for l in range(9)]
        plain = any(torch.equal(out[i], c) for c in crops)
        mirrored = any(torch.equal(out[i], c.flip(-1)) for c in crops)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 10 < flips < 54  # about half are flipped
    assert not torch.equal(out, x)
    assert torch.equal(out, augment_batch(x, torch.Generator().manual_seed(0)))


def test_make_optimizer():
    model = small_net()
    sgd = make_optimizer(model, 0.05)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    assert sgd.param_groups[0]["weight_decay"] == 5e-4
    with pytest.raises(ValueError, match="lr"):
        make_optimizer(model, 0.0)
    with pytest.raises(ValueError, match="momentum"):
        make_optimizer(model, 0.1, momentum=-1)


# ---------------------------------------------------------------------------------------------- training


def test_train_epochs_learns_an_easy_task():
    x, y = make_data(512, seed=0)
    x_test, y_test = make_data(256, seed=1)
    model = small_net()
    _, acc_before = evaluate(model, x_test, y_test)
    stats = train_epochs(model, x, y, make_optimizer(model, 0.05), epochs=5, batch_size=32, device="cpu",
                         augment=False)
    _, acc_after = evaluate(model, x_test, y_test)
    assert stats["samples"] == 512 and stats["epochs"] == 5 and stats["steps"] == 5 * 16
    assert acc_before < 0.5
    assert acc_after > 0.85  # chance is 0.25
    assert stats["acc"] > 0.85 and stats["loss"] < 0.6


def test_train_epochs_with_augmentation_runs_on_real_model():
    x, y = make_data(96, seed=0, size=32)
    model = build_model("lenet", num_classes=NUM_CLASSES, norm="batch")
    stats = train_epochs(model, x, y, make_optimizer(model, 0.01), epochs=1, batch_size=32, device="cpu",
                         augment=True)
    assert math.isfinite(stats["loss"]) and 0 <= stats["acc"] <= 1


def test_train_epochs_is_deterministic_and_leaves_global_rng_alone():
    x, y = make_data(100, seed=0)

    def run(seed, global_seed):
        model = small_net(seed=0, dropout=0.5)
        torch.manual_seed(global_seed)  # a different global RNG must not change the result
        rng_state = torch.get_rng_state()
        train_epochs(model, x, y, make_optimizer(model, 0.05), 2, 16, "cpu", augment=True, seed=seed)
        assert torch.equal(rng_state, torch.get_rng_state())
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    a = run(seed=3, global_seed=42)
    assert torch.equal(a, run(seed=3, global_seed=7))
    assert not torch.equal(a, run(seed=4, global_seed=42))


def test_train_epochs_metrics_are_sample_weighted_and_single_sample_batch_is_merged():
    # 9 samples, batch 4: a last batch of one sample would break BatchNorm1d in train mode.
    x, y = make_data(9, seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, NUM_CLASSES), nn.BatchNorm1d(NUM_CLASSES, affine=False,
                                                                                           momentum=0.0))
    stats = train_epochs(model, x, y, torch.optim.SGD(model.parameters(), lr=0.0), 1, 4, "cpu")
    assert stats["steps"] == 2
    # With lr 0 and a model whose output does not depend on batch statistics, train metrics equal eval ones.
    model = ConstantClassifier()
    stats = train_epochs(model, x, y, torch.optim.SGD(model.parameters(), lr=0.0), 1, 4, "cpu")
    loss, acc = evaluate(model, x, y)
    assert stats["acc"] == pytest.approx((y == 0).float().mean().item())
    assert stats["acc"] == pytest.approx(acc) and stats["loss"] == pytest.approx(loss)


def test_train_epochs_bad_arguments():
    x, y = make_data(8)
    model = small_net()
    opt = make_optimizer(model, 0.1)
    with pytest.raises(ValueError, match="batch_size"):
        train_epochs(model, x, y, opt, 1, 0, "cpu")
    with pytest.raises(ValueError, match="differ in length"):
        train_epochs(model, x, y[:5], opt, 1, 4, "cpu")
    with pytest.raises(ValueError, match="y must be"):
        train_epochs(model, x, y.float(), opt, 1, 4, "cpu")
    with pytest.raises(ValueError, match="empty"):
        train_epochs(model, x[:0], y[:0], opt, 1, 4, "cpu")


# ---------------------------------------------------------------------------------------------- evaluation


def test_evaluate_is_sample_weighted_with_a_short_last_batch():
    # Batch 1 (4 samples): labels 0,1,1,1 -> 1/4 right. Batch 2 (1 sample): label 0 -> 1/1 right.
    # Mean of per-batch accuracies = 0.625 (the KT-pFL bug); the true accuracy is 2/5 = 0.4.
    x = torch.zeros(5, 3, 8, 8)
    y = torch.tensor([0, 1, 1, 1, 0])
    model = ConstantClassifier()
    loss, acc = evaluate(model, x, y, batch_size=4)
    assert acc == pytest.approx(0.4)
    per_batch_mean = (0.25 + 1.0) / 2
    assert acc != pytest.approx(per_batch_mean)
    with torch.no_grad():
        assert loss == pytest.approx(F.cross_entropy(model(x), y).item())
    assert evaluate(model, x, y, batch_size=4) == pytest.approx(evaluate(model, x, y, batch_size=512))


def test_evaluate_empty_set_gives_nan():
    loss, acc = evaluate(ConstantClassifier(), torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long))
    assert math.isnan(loss) and math.isnan(acc)


def test_predict_logits_eval_mode_no_grad_cpu_float32():
    x, _ = make_data(70)
    model = small_net(dropout=0.9)
    model.train()
    logits = predict_logits(model, x, batch_size=32)
    assert logits.dtype == torch.float32 and logits.device.type == "cpu" and logits.shape == (70, NUM_CLASSES)
    assert not logits.requires_grad
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        assert torch.allclose(logits, model(x), atol=1e-6)  # dropout was off


# ---------------------------------------------------------------------------------------------- distillation


def _kl_to(teacher_probs, student, x, temperature):
    student_log_probs = F.log_softmax(predict_logits(student, x) / temperature, dim=1)
    return F.kl_div(student_log_probs, teacher_probs, reduction="batchmean").item()


def test_distillation_loss_matches_its_definition():
    student = torch.randn(6, NUM_CLASSES)
    target = torch.softmax(torch.randn(6, NUM_CLASSES), 1)
    t = 3.0
    p_s = torch.softmax(student / t, 1)
    expected = (target * (target.log() - p_s.log())).sum(1).mean() * t * t
    assert distillation_loss(student, target, t, "kl").item() == pytest.approx(expected.item(), rel=1e-5)
    logits = torch.randn(6, NUM_CLASSES)
    assert distillation_loss(student, logits, loss="l1").item() == pytest.approx((student - logits).abs().mean())
    assert distillation_loss(student, logits, loss="mse").item() == pytest.approx(((student - logits) ** 2).mean())


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distill_kl_moves_student_towards_teacher(temperature):
    x_train, y_train = make_data(256, seed=0)
    teacher = small_net(seed=1, dropout=0.0)
    train_epochs(teacher, x_train, y_train, make_optimizer(teacher, 0.05), 3, 32, "cpu")
    x_public, _ = make_data(256, seed=5)
    teacher_probs = torch.softmax(predict_logits(teacher, x_public) / temperature, dim=1)
    student = small_net(seed=2, dropout=0.0)
    kl_before = _kl_to(teacher_probs, student, x_public, temperature)
    loss = distill(student, x_public, teacher_probs, make_optimizer(student, 0.02), epochs=5, batch_size=32,
                   temperature=temperature, loss="kl", device="cpu")
    kl_after = _kl_to(teacher_probs, student, x_public, temperature)
    assert math.isfinite(loss)
    assert kl_after < 0.5 * kl_before
    agree = (predict_logits(student, x_public).argmax(1) == teacher_probs.argmax(1)).float().mean()
    assert agree > 0.8


def test_distill_l1_moves_student_logits_towards_target_logits():
    x, _ = make_data(128, seed=0)
    target_logits = predict_logits(small_net(seed=1), x)
    student = small_net(seed=2, dropout=0.0)
    before = (predict_logits(student, x) - target_logits).abs().mean()
    distill(student, x, target_logits, make_optimizer(student, 0.02), epochs=5, batch_size=32, loss="l1")
    after = (predict_logits(student, x) - target_logits).abs().mean()
    assert after < 0.5 * before


def test_distill_validates_targets():
    x, _ = make_data(10)
    model = small_net()
    opt = make_optimizer(model, 0.01)
    probs = torch.full((10, NUM_CLASSES), 1.0 / NUM_CLASSES)
    with pytest.raises(ValueError, match="differ in length"):
        distill(model, x, probs[:9], opt)
    with pytest.raises(ValueError, match="probabilities"):
        distill(model, x, torch.randn(10, NUM_CLASSES), opt, loss="kl")
    with pytest.raises(ValueError, match="3 columns"):
        distill(model, x, torch.full((10, 3), 1.0 / 3), opt)
    with pytest.raises(ValueError, match="2-D"):
        distill(model, x, probs[:, 0], opt)
    with pytest.raises(ValueError, match="loss='ce'"):
        distill(model, x, probs, opt, loss="ce")
    with pytest.raises(ValueError, match="temperature"):
        distill(model, x, probs, opt, temperature=0)


# ---------------------------------------------------------------------------------------------- lr policy


def test_plateau_lowers_lr_after_patience_steps_and_not_before():
    model = small_net()
    opt = make_optimizer(model, 0.1)
    policy = LRPolicy(opt, "plateau", patience=2, factor=0.5, min_lr=0.02)
    assert policy.lr == 0.1
    assert policy.step(0.50) == 0.1   # first value: new best
    assert policy.step(0.60) == 0.1   # improvement
    assert policy.step(0.60) == 0.1   # 1 step without a rise: not yet
    assert policy.step(0.55) == 0.05  # 2 steps without a rise: reduce
    assert opt.param_groups[0]["lr"] == 0.05
    assert policy.step(0.59) == 0.05  # count restarted after the reduction
    assert policy.step(0.61) == 0.05  # new best resets the count
    assert policy.step(0.61) == 0.05
    assert policy.step(0.61) == 0.025
    policy.step(0.1)
    assert policy.step(0.1) == 0.02   # floored at min_lr
    policy.step(0.1)
    assert policy.step(0.1) == 0.02
    with pytest.raises(ValueError, match="val_acc"):
        policy.step(None)


def test_constant_and_cosine_policies():
    policy = LRPolicy(None, "constant", base_lr=0.3)
    assert [policy.step(a) for a in (0.1, 0.1, 0.1, 0.1)] == [0.3] * 4
    opt = make_optimizer(small_net(), 0.1)
    cosine = LRPolicy(opt, "cosine", min_lr=0.0, total_steps=4)
    lrs = [cosine.step() for _ in range(6)]
    assert lrs[1] == pytest.approx(0.05)  # half way
    assert lrs[3] == pytest.approx(0.0) and lrs[5] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)


def test_lr_policy_state_round_trip_and_bad_arguments():
    a = LRPolicy(None, "plateau", base_lr=0.1, patience=2)
    for acc in (0.5, 0.4):
        a.step(acc)
    b = LRPolicy(None, "plateau", base_lr=0.1, patience=2)
    b.load_state_dict(a.state_dict())
    assert a.step(0.4) == b.step(0.4) == 0.05
    with pytest.raises(ValueError, match="policy='step'"):
        LRPolicy(None, "step", base_lr=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        LRPolicy(None, "cosine", base_lr=0.1)
    with pytest.raises(ValueError, match="factor"):
        LRPolicy(None, "plateau", base_lr=0.1, factor=1.5)
    with pytest.raises(ValueError, match="base_lr"):
        LRPolicy(None, "constant")


def _accuracy_walk(seed, steps):
    """Validation accuracies as a client sees them: a noisy rise with plateaus and exact repeats."""
    rng = torch.Generator().manual_seed(seed)
    drift = torch.cumsum(0.004 + 0.03 * torch.randn(steps, generator=rng, dtype=torch.float64), 0)
    return [round(min(1.0, max(0.0, 0.3 + float(v))), 2) for v in drift]


@pytest.mark.parametrize("patience, factor, min_lr", [(1, 0.5, 1e-4), (2, 0.5, 1e-4), (3, 0.3, 0.002),
                                                      (5, 0.9, 0.0), (1, 0.3, 0.0)])
def test_plateau_policy_gives_the_learning_rates_of_the_old_rule(patience, factor, min_lr):
    """torch's ReduceLROnPlateau behind LRPolicy gives exactly the lrs of fedkt's own rule, step by step."""
    for seed in range(5):
        accs = _accuracy_walk(seed, 300)
        opt = make_optimizer(small_net(), 0.05)
        policy = LRPolicy(opt, "plateau", patience=patience, factor=factor, min_lr=min_lr)
        got = [policy.step(a) for a in accs]
        assert got == reference_plateau_lrs(0.05, accs, patience, factor, min_lr)
        assert len(set(got)) > 3  # it did reduce, several times
        assert opt.param_groups[0]["lr"] == got[-1]


@pytest.mark.parametrize("base_lr, min_lr", [(0.1, 1e-4), (0.02, 0.0), (0.3, 0.001)])
def test_cosine_policy_gives_the_learning_rates_of_the_old_rule(base_lr, min_lr):
    for total in (1, 2, 3, 7, 20, 50, 100):
        policy = LRPolicy(None, "cosine", base_lr=base_lr, min_lr=min_lr, total_steps=total)
        assert [policy.step() for _ in range(total + 5)] == reference_cosine_lrs(base_lr, total, total + 5, min_lr)


def test_lr_policy_resumes_from_state_saved_before_torch_schedulers():
    """A client state saved by fedkt before LRPolicy used torch's scheduler (these six fields) loads, and the
    resumed policy goes on exactly as an uninterrupted one; state_dict still writes the same six fields."""
    accs = _accuracy_walk(7, 120)
    want = reference_plateau_lrs(0.1, accs, patience=2)
    old_state = {"policy": "plateau", "base_lr": 0.1, "lr": want[59], "steps": 60, "best": max(accs[:60]),
                 "bad_steps": 0}
    bad = 0  # the old rule's count of steps without a new best since the last reduction, after step 60
    best = -math.inf
    for acc in accs[:60]:
        bad = 0 if acc > best else bad + 1
        best = max(best, acc)
        if bad >= 2:
            bad = 0
    old_state["bad_steps"] = bad
    resumed = LRPolicy(make_optimizer(small_net(), 0.1), "plateau", patience=2)
    resumed.load_state_dict(old_state)
    assert resumed.lr == want[59]
    assert [resumed.step(a) for a in accs[60:]] == want[60:]
    assert set(resumed.state_dict()) == {"policy", "base_lr", "lr", "steps", "best", "bad_steps"}
    # and a state it writes itself round-trips the same way, through the bytes a client saves
    first = LRPolicy(None, "plateau", base_lr=0.1, patience=2)
    [first.step(a) for a in accs[:60]]
    assert first.state_dict() == old_state
    model = small_net()
    opt = make_optimizer(model, 0.1)
    blob = state_to_bytes(model, opt, extra={"policy": first.state_dict()})
    again = LRPolicy(opt, "plateau", patience=2)
    again.load_state_dict(state_from_bytes(blob, model, opt)["policy"])
    assert [again.step(a) for a in accs[60:]] == want[60:]


# ---------------------------------------------------------------------------------------------- early stopping


class BlowUpAfterFirstEpoch:
    """Duck-typed lr policy: after the first epoch sets a huge lr so that later epochs get worse."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def step(self, val_acc):
        for group in self.optimizer.param_groups:
            group["lr"] = 50.0


def test_early_stopping_restores_best_weights():
    x_train, y_train = make_data(256, seed=0)
    x_val, y_val = make_data(128, seed=1)
    model = small_net(dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    result = train_with_early_stopping(model, x_train, y_train, x_val, y_val, opt, max_epochs=10, patience=3,
                                       batch_size=32, device="cpu", lr_policy=BlowUpAfterFirstEpoch(opt))
    history = result["history"]
    assert result["best_epoch"] == 1
    assert len(history) == 4  # best epoch + patience epochs without improvement
    assert result["best_val_acc"] > 0.7
    assert all(h["val_acc"] < result["best_val_acc"] - 0.1 for h in history[1:])  # later epochs really worse
    assert [h["lr"] for h in history] == [0.05, 50.0, 50.0, 50.0]
    _, acc = evaluate(model, x_val, y_val)
    assert acc == result["best_val_acc"]


def test_early_stopping_with_plateau_policy_runs_to_max_epochs_when_improving():
    x_train, y_train = make_data(256, seed=0, noise=2.0)
    x_val, y_val = make_data(256, seed=1, noise=2.0)
    model = small_net(dropout=0.0)
    opt = make_optimizer(model, 0.01)
    policy = LRPolicy(opt, "plateau", patience=1)
    result = train_with_early_stopping(model, x_train, y_train, x_val, y_val, opt, max_epochs=3, patience=5,
                                       batch_size=32, device="cpu", augment=True, lr_policy=policy)
    assert len(result["history"]) == 3
    assert result["best_val_acc"] == max(h["val_acc"] for h in result["history"])
    assert evaluate(model, x_val, y_val)[1] == result["best_val_acc"]


# ---------------------------------------------------------------------------------------------- checkpoints


def _trained_pair(seed):
    x, y = make_data(64, seed=0)
    model = small_net(seed=seed, dropout=0.0)
    opt = make_optimizer(model, 0.05)
    train_epochs(model, x, y, opt, 1, 16, "cpu", seed=seed)
    return model, opt


def _assert_same_training_state(model_a, opt_a, model_b, opt_b):
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)
        assert torch.equal(opt_a.state[pa]["momentum_buffer"], opt_b.state[pb]["momentum_buffer"])
    # One more identical step stays identical.
    x, y = make_data(32, seed=9)
    train_epochs(model_a, x, y, opt_a, 1, 16, "cpu", seed=1)
    train_epochs(model_b, x, y, opt_b, 1, 16, "cpu", seed=1)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)


def test_save_load_round_trips_model_and_optimizer(tmp_path):
    model, opt = _trained_pair(seed=0)
    path = tmp_path / "sub" / "client3.pt"
    save_state(path, model, opt, extra={"round": 4, "lr": 0.05})
    assert sorted(os.listdir(path.parent)) == ["client3.pt"]  # no temporary file left behind
    fresh, fresh_opt = _trained_pair(seed=1)
    assert not torch.equal(next(fresh.parameters()), next(model.parameters()))
    extra = load_state(path, fresh, fresh_opt)
    assert extra == {"round": 4, "lr": 0.05}
    _assert_same_training_state(model, opt, fresh, fresh_opt)


def test_state_bytes_round_trip():
    model, opt = _trained_pair(seed=0)
    data = state_to_bytes(model, opt, extra={"best_val_acc": 0.5})
    fresh, fresh_opt = _trained_pair(seed=1)
    assert state_from_bytes(data, fresh, fresh_opt) == {"best_val_acc": 0.5}
    _assert_same_training_state(model, opt, fresh, fresh_opt)
    with pytest.raises(ValueError, match="no optimizer state"):
        state_from_bytes(state_to_bytes(model), fresh, fresh_opt)


def test_steps_per_epoch_counts_the_steps_an_epoch_takes():
    """steps_per_epoch (the run's step budget, client.min_steps) against the optimizer steps train_epochs takes,
    including the last batch of one sample that joins the one before."""
    model = build_model("lenet", num_classes=3, in_channels=1)
    for n, batch_size in [(1, 32), (21, 32), (32, 32), (33, 32), (34, 32), (65, 32), (7, 2), (9, 4)]:
        x, y = torch.randn(n, 1, 28, 28), torch.randint(0, 3, (n,))
        optimizer = make_optimizer(model, 0.01)
        steps = train_epochs(model, x, y, optimizer, epochs=2, batch_size=batch_size)["steps"]
        assert steps == 2 * steps_per_epoch(n, batch_size), (n, batch_size)
    assert [steps_per_epoch(n, 32) for n in (1, 21, 32, 33, 34)] == [1, 1, 1, 1, 2]
