"""Tests of the server-side math (fedkt.core): KT-pFL coefficients, targets, FedMD, checks."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from fedkt.core import (
    PATIENCE,
    KnowledgeCoefficients,
    adaptive_step,
    check_predictions,
    fedmd_consensus,
    project_simplex,
    shift_targets,
    alignment_indices,
    alignment_seed,
    soft_predictions,
)
from helpers import update_reference

OBJECTIVES = ["kl", "mse"]
NORMALIZATIONS = ["softmax", "simplex"]


def random_probs(rng, n, m=30, c=5, scale=2.0):
    return soft_predictions(rng.normal(size=(n, m, c)) * scale, 1.0)


def two_pairs(rng, m=100, c=10):
    """Clients 0, 1 predict the same thing; so do 2, 3; the two pairs differ."""
    a, b = random_probs(rng, 2, m, c)
    return np.stack([a, a, b, b])


def random_stochastic(rng, n):
    return rng.dirichlet(np.ones(n), size=n)


def assert_row_stochastic(c):
    assert (c >= 0).all()
    np.testing.assert_allclose(c.sum(1), 1.0, atol=1e-12)


# --------------------------------------------------------------------------- soft predictions

def test_soft_predictions_matches_softmax_over_classes():
    logits = np.random.default_rng(0).normal(size=(3, 4, 5)) * 3
    p = soft_predictions(logits, temperature=2.0)
    assert isinstance(p, np.ndarray) and p.shape == logits.shape
    e = np.exp(logits / 2.0)
    np.testing.assert_allclose(p, e / e.sum(-1, keepdims=True), rtol=1e-12)
    pt = soft_predictions(torch.tensor(logits[0], dtype=torch.float32), temperature=10.0)
    assert isinstance(pt, torch.Tensor)
    torch.testing.assert_close(pt.sum(1), torch.ones(4))


# --------------------------------------------------------------------------- trained coefficients

@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_pairs_learn_to_weight_their_twin(objective, normalize):
    kc = KnowledgeCoefficients(4, rho=0.05, objective=objective, normalize=normalize)
    for r in range(20):
        kc.update(two_pairs(np.random.default_rng(r)))
    c = kc.c
    within = np.array([c[0, :2].sum(), c[1, :2].sum(), c[2, 2:].sum(), c[3, 2:].sum()])
    assert (within > 0.6).all(), c  # uniform c would give 0.5


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("step_size", [None, 0.05])
def test_rows_stay_stochastic_after_every_update(objective, normalize, step_size):
    rng = np.random.default_rng(1)
    kc = KnowledgeCoefficients(6, objective=objective, normalize=normalize, step_size=step_size, steps=2)
    for r in range(8):
        present = rng.random(6) < 0.7 if r % 2 else None
        if present is not None:
            present[r % 6] = True
        kc.update(random_probs(rng, 6), present)
        assert_row_stochastic(kc.c)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_huge_rho_keeps_c_uniform(objective, normalize):
    # a fixed step below 1/(2 rho) (the adaptive rule cannot hold a huge rho, see docs)
    kc = KnowledgeCoefficients(4, rho=1000.0, step_size=1e-4, objective=objective, normalize=normalize)
    free = KnowledgeCoefficients(4, rho=0.0, objective=objective, normalize=normalize)
    for r in range(20):
        probs = two_pairs(np.random.default_rng(r))
        kc.update(probs)
        free.update(probs)
    assert np.abs(kc.c - 0.25).max() < 0.01
    assert np.abs(free.c - 0.25).max() > 0.1  # the data alone would move c


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_small_fixed_step_decreases_the_objective(objective):
    rng = np.random.default_rng(2)
    probs = random_probs(rng, 5)
    kc = KnowledgeCoefficients(5, rho=0.1, objective=objective, step_size=1e-3, normalize="simplex")
    kc.c = random_stochastic(rng, 5)
    before = kc.loss(probs)
    kc.update(probs)
    assert kc.loss(probs) < before


def test_adaptive_step_follows_the_kt_pfl_rule():
    g = torch.tensor([0.3, 0.03, 0.01, 0.001, 1e-9, 1e9], dtype=torch.float64)
    lr = adaptive_step(g)
    torch.testing.assert_close(lr, torch.tensor([0.04, 1.0, 1.0, 25.0, 5.0**5, 5.0**-5], dtype=torch.float64))
    g = torch.logspace(-5, 2, 50, dtype=torch.float64)
    prod = g * adaptive_step(g)
    assert ((prod >= 0.01 - 1e-15) & (prod <= 0.05 + 1e-12)).all()


# --------------------------------------------------------------------------- vectorised == loop

@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("step_size", [None, 0.05])
@pytest.mark.parametrize("normalize", NORMALIZATIONS)
def test_vectorized_update_equals_reference_loop(objective, step_size, normalize):
    for seed in range(4):
        rng = np.random.default_rng(seed)
        n = 7
        probs = random_probs(rng, n)
        c0 = random_stochastic(rng, n)
        present = None if seed == 0 else rng.random(n) < 0.7
        if present is not None:
            present[seed] = True
        kw = dict(rho=0.7, objective=objective, step_size=step_size, normalize=normalize)
        kc = KnowledgeCoefficients(n, **kw)
        kc.c = c0.copy()
        got = kc.update(probs, present)
        want = update_reference(c0, probs, present, **kw)
        assert np.abs(got - c0).max() > 1e-3  # something happened
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_several_steps_equal_repeated_reference_steps():
    rng = np.random.default_rng(3)
    probs, c0 = random_probs(rng, 5), random_stochastic(rng, 5)
    kc = KnowledgeCoefficients(5, steps=3)
    kc.c = c0.copy()
    want = c0
    for _ in range(3):
        want = update_reference(want, probs)
    np.testing.assert_allclose(kc.update(probs), want, atol=1e-12)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_watched_objective_is_the_objective_of_the_c_kept(objective):
    """With coef_tol > 0 the loss computed on the way (its constant part added back) is exactly loss(c)."""
    rng = np.random.default_rng(5)
    probs, c0 = random_probs(rng, 6), random_stochastic(rng, 6)
    kc = KnowledgeCoefficients(6, objective=objective, normalize="simplex", steps=7, tol=1e-9)
    kc.c = c0.copy()
    kc.update(probs)
    assert kc.last_loss == pytest.approx(kc.loss(probs), rel=1e-9)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_stopping_rule_keeps_the_best_c_of_the_plain_steps(objective):
    """tol > 0 follows the same steps as tol = 0, keeps the iterate of lowest objective among those it computed,
    and stops after PATIENCE steps without a tol-sized improvement."""
    rng = np.random.default_rng(6)
    n, steps, tol = 6, 30, 1e-2
    probs, c0 = random_probs(rng, n), random_stochastic(rng, n)
    plain = KnowledgeCoefficients(n, objective=objective, normalize="simplex", steps=1)
    plain.c = c0.copy()
    iterates, losses = [c0.copy()], [plain.loss(probs)]
    for _ in range(steps):
        iterates.append(plain.update(probs))
        losses.append(plain.loss(probs))
    best, stale, stop = np.inf, 0, steps
    for k, loss in enumerate(losses):
        stale = 0 if k == 0 or loss < best - tol * abs(best) else stale + 1
        best = min(best, loss)
        if stale == PATIENCE:
            stop = k
            break
    watched = KnowledgeCoefficients(n, objective=objective, normalize="simplex", steps=steps, tol=tol)
    watched.c = c0.copy()
    got = watched.update(probs)
    assert watched.last_steps == stop
    assert stop < steps  # the rule did stop early here
    keep = int(np.argmin(losses[:stop + 1]))
    np.testing.assert_allclose(got, iterates[keep], atol=1e-12)
    assert watched.loss(probs) <= losses[stop] + 1e-12


def test_stopping_rule_stops_where_nothing_is_left_to_gain():
    """Identical clients and c already uniform: no step can lower the objective, so c stays as it was after
    PATIENCE steps, while tol = 0 takes every step."""
    rng = np.random.default_rng(7)
    probs = np.repeat(random_probs(rng, 1), 5, axis=0)
    watched = KnowledgeCoefficients(5, normalize="simplex", steps=20, tol=1e-6)
    np.testing.assert_allclose(watched.update(probs), np.full((5, 5), 0.2), atol=1e-12)
    assert watched.last_steps == PATIENCE
    plain = KnowledgeCoefficients(5, normalize="simplex", steps=20)
    plain.update(probs)
    assert (plain.last_steps, plain.last_loss) == (20, None)


def test_coefficient_device_auto_and_a_missing_gpu():
    assert KnowledgeCoefficients(3, device="auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            KnowledgeCoefficients(3, device="cuda")


# --------------------------------------------------------------------------- targets

def test_each_client_gets_its_own_row():
    rng = np.random.default_rng(4)
    n = 5
    probs = random_probs(rng, n)
    kc = KnowledgeCoefficients(n)
    kc.c = random_stochastic(rng, n)  # asymmetric
    t = kc.targets(probs)
    assert t.shape == probs.shape
    for i in range(n):
        np.testing.assert_allclose(t[i], np.einsum("j,jmc->mc", kc.c[i], probs), rtol=1e-10)
    for i in range(1, n):  # would fail if everybody got row 0's target
        assert np.abs(t[i] - t[0]).max() > 1e-3


@pytest.mark.parametrize("weighting", ["trained", "cosine", "topk"])
def test_absent_clients_are_untouched_and_ignored(weighting):
    rng = np.random.default_rng(5)
    n = 6
    present = np.array([True, False, True, True, False, True])
    kc = KnowledgeCoefficients(n, weighting=weighting, topk=2)
    c0 = random_stochastic(rng, n)
    kc.c = c0.copy()
    probs = random_probs(rng, n)
    junk = probs.copy()
    junk[~present] = np.nan  # absent clients' rows must never be read
    c1 = kc.update(junk, present)
    assert_row_stochastic(c1)
    assert np.array_equal(c1[~present], c0[~present])
    assert np.array_equal(c1[:, ~present], c0[:, ~present])
    # the present part of each present row keeps its total
    np.testing.assert_allclose(c1[present][:, present].sum(1), c0[present][:, present].sum(1), atol=1e-12)
    assert np.abs(c1 - c0).max() > 1e-3
    t = kc.targets(junk, present)
    assert np.isfinite(t).all()
    w = c1[:, present] / c1[:, present].sum(1, keepdims=True)
    np.testing.assert_allclose(t, np.einsum("ij,jmc->imc", w, probs[present]), rtol=1e-10)


def test_present_as_indices_equals_mask():
    rng = np.random.default_rng(6)
    probs = random_probs(rng, 4)
    a, b = KnowledgeCoefficients(4), KnowledgeCoefficients(4)
    a.update(probs, np.array([True, False, True, True]))
    b.update(probs, [0, 2, 3])
    np.testing.assert_array_equal(a.c, b.c)


def test_float32_inputs_give_float32_targets_and_stochastic_c():
    rng = np.random.default_rng(7)
    probs = random_probs(rng, 5).astype(np.float32)
    kc = KnowledgeCoefficients(5)
    kc.update(probs)
    assert_row_stochastic(kc.c)
    assert kc.targets(probs).dtype == np.float32


# --------------------------------------------------------------------------- similarity weightings

def test_cosine_and_topk_weights():
    probs = two_pairs(np.random.default_rng(8))
    cos = KnowledgeCoefficients(4, weighting="cosine")
    cos.update(probs)
    assert_row_stochastic(cos.c)
    flat = probs.reshape(4, -1)
    sim = flat @ flat.T / np.outer(np.linalg.norm(flat, axis=1), np.linalg.norm(flat, axis=1))
    np.testing.assert_allclose(cos.c, sim / sim.sum(1, keepdims=True), rtol=1e-9)
    for k in (1, 2, 3):
        top = KnowledgeCoefficients(4, weighting="topk", topk=k)
        top.update(probs)
        assert_row_stochastic(top.c)
        assert ((top.c > 0).sum(1) == k).all()
        assert (np.diag(top.c) > 0).all()  # itself included, even when tied with its twin
    top = KnowledgeCoefficients(4, weighting="topk", topk=2)
    top.update(probs)
    np.testing.assert_allclose(top.c, np.kron(np.eye(2), np.full((2, 2), 0.5)))


def test_project_simplex():
    v = torch.tensor([[0.3, 0.3, 0.3], [2.0, 0.0, -1.0], [0.5, 0.4, 0.1]], dtype=torch.float64)
    w = project_simplex(v)
    torch.testing.assert_close(w, torch.tensor([[1 / 3] * 3, [1.0, 0, 0], [0.5, 0.4, 0.1]], dtype=torch.float64))


# --------------------------------------------------------------------------- the alignment subset

def test_alignment_rule_is_a_pure_function_of_seed_and_round():
    seeds = {alignment_seed(s, r) for s in range(3) for r in range(1, 40)}
    assert len(seeds) == 3 * 39 and alignment_seed(0, 5) == alignment_seed(0, 5)
    idx = alignment_indices(1000, 200, alignment_seed(0, 5))
    assert len(idx) == 200 and len(set(idx.tolist())) == 200 and (np.diff(idx) > 0).all() and idx.max() < 1000
    assert np.array_equal(idx, alignment_indices(1000, 200, alignment_seed(0, 5)))
    assert not np.array_equal(idx, alignment_indices(1000, 200, alignment_seed(0, 6)))
    assert np.array_equal(alignment_indices(50, 80, 1), np.arange(50))  # asked for more than there is: all


def test_the_server_strategy_loads_no_data_module():
    """The alignment rule lives in core, so the strategy imports neither the data modules nor PIL."""
    code = ("import sys, fedkt.strategy; "
            "print(sorted(m for m in ('fedkt.task', 'fedkt.data', 'fedkt.partition', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- FedMD

@pytest.mark.parametrize("mode", ["probs", "logits"])
def test_fedmd_consensus_is_the_mean_over_present(mode):
    rng = np.random.default_rng(9)
    values = rng.normal(size=(5, 7, 3)) if mode == "logits" else random_probs(rng, 5, 7, 3)
    np.testing.assert_allclose(fedmd_consensus(values, mode=mode), values.mean(0), rtol=1e-12)
    present = np.array([True, False, True, False, True])
    junk = values.copy()
    junk[~present] = np.inf
    got = fedmd_consensus(junk, present, mode=mode)
    assert got.shape == (7, 3)
    np.testing.assert_allclose(got, values[present].mean(0), rtol=1e-12)
    got_t = fedmd_consensus(torch.from_numpy(junk), present, mode=mode)
    assert isinstance(got_t, torch.Tensor)
    np.testing.assert_allclose(got_t.numpy(), values[present].mean(0), rtol=1e-12)


# --------------------------------------------------------------------------- upload checks

def test_check_predictions():
    good = random_probs(np.random.default_rng(10), 1, 8, 4)[0]
    assert check_predictions(good, 8, 4) is None
    assert check_predictions(torch.from_numpy(good), 8, 4) is None
    assert check_predictions(good * 30, 8, 4, kind="logits") is None
    bad = {
        "nan": np.where(np.eye(8, 4) > 0, np.nan, good),
        "inf": np.where(np.eye(8, 4) > 0, np.inf, good),
        "transposed": good.T,
        "too few rows": good[:7],
        "3-d": good[None],
        "not summing to 1": good * 1.01,
        "strings": np.array([["a"] * 4] * 8),
    }
    bad["negative"] = good.copy()
    bad["negative"][0, :2] = [-0.1, good[0, :2].sum() + 0.1]  # rows still sum to 1
    for name, arr in bad.items():
        assert check_predictions(arr, 8, 4) is not None, name
    assert check_predictions(good * 1e5, 8, 4, kind="logits") is not None
    assert check_predictions(np.full((8, 4), np.nan), 8, 4, kind="logits") is not None
    assert check_predictions(np.zeros((8, 4), dtype=np.int32), 8, 4, kind="logits") is not None  # ints
    assert check_predictions(np.eye(8, 4, dtype=bool), 8, 4, kind="logits") is not None
    assert check_predictions(good.astype(np.float16), 8, 4) is None  # float16 on the wire is fine


# --------------------------------------------------------------------------- checkpoints, config

def test_state_dict_round_trip():
    rng = np.random.default_rng(11)
    kc = KnowledgeCoefficients(4, rho=0.3, objective="mse", normalize="simplex", steps=2)
    kc.update(random_probs(rng, 4))
    state = kc.state_dict()
    other = KnowledgeCoefficients(4)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.c, kc.c)
    assert (other.rho, other.objective, other.normalize, other.steps) == (0.3, "mse", "simplex", 2)
    probs = random_probs(rng, 4)
    np.testing.assert_array_equal(other.update(probs), kc.update(probs))
    with pytest.raises(ValueError):
        KnowledgeCoefficients(3).load_state_dict(state)


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        KnowledgeCoefficients(4, objective="l1")
    with pytest.raises(ValueError):
        KnowledgeCoefficients(4, normalize="relu")
    for tol in (-0.1, 1.5):
        with pytest.raises(ValueError):
            KnowledgeCoefficients(4, tol=tol)
    kc = KnowledgeCoefficients(4)
    with pytest.raises(ValueError):
        kc.update(np.ones((3, 5, 2)) / 2)  # wrong number of clients
    with pytest.raises(ValueError):
        kc.update(np.ones((4, 5, 2)) / 2, present=np.zeros(4, bool))


TARGETS = np.array([[0.1, 0.2, 0.3, 0.4],
                    [0.5, 0.0, 0.0, 0.5],
                    [0.0, 0.0, 0.2, 0.8]], dtype=np.float32)


def test_shift_targets_classes_keeps_own_classes_renormalised():
    out = shift_targets(TARGETS, [0, 30, 10, 0], "classes")
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_allclose(out[0], [0, 0.4, 0.6, 0])
    np.testing.assert_allclose(out[1], [0, 0.5, 0.5, 0])  # no mass on the client's classes: uniform over them
    np.testing.assert_allclose(out[2], [0, 0, 1, 0])
    np.testing.assert_allclose(out.sum(1), 1, atol=1e-6)
    t = torch.tensor(TARGETS, dtype=torch.float64)
    assert torch.allclose(shift_targets(t, [1, 1, 1, 1], "classes"), t)  # every class: unchanged
    assert shift_targets(TARGETS, [1, 0, 0, 0], "none") is TARGETS


def test_shift_targets_prior_is_the_label_shift_correction():
    rng = np.random.default_rng(0)
    s = rng.dirichlet(np.ones(5), size=200)
    counts = np.array([50, 30, 15, 5, 0])
    out = shift_targets(s, counts, "prior")
    expected = s * (counts / counts.sum()) / s.mean(0)
    np.testing.assert_allclose(out, expected / expected.sum(1, keepdims=True), rtol=1e-12)
    assert (out[:, 4] == 0).all()  # a class the client lacks gets nothing, as with "classes"
    # a client whose prior is the senders' prior keeps the target as it is
    np.testing.assert_allclose(shift_targets(s, s.mean(0) * 1000, "prior"), s, rtol=1e-10)
    only_absent = np.array([[0, 0, 0, 0, 1.0]])  # no mass left: the client's prior
    np.testing.assert_allclose(shift_targets(only_absent, counts, "prior")[0], counts / counts.sum())


def test_shift_targets_rejects_bad_counts():
    for bad in ([0, 0, 0, 0], [1, 2, 3], [1, -1, 1, 1]):
        with pytest.raises(ValueError, match="class_counts"):
            shift_targets(TARGETS, bad, "classes")
    with pytest.raises(ValueError, match="how"):
        shift_targets(TARGETS, [1, 1, 1, 1], "local")


def test_config_offers_exactly_the_choices_the_code_accepts():
    # fedkt.config stays free of torch, so it lists the choices again: they must not drift apart
    from fedkt import core, data
    from fedkt.config import CHOICES
    assert CHOICES["algorithm.objective"] == core.OBJECTIVES
    assert CHOICES["algorithm.normalize"] == core.NORMALIZATIONS
    assert CHOICES["algorithm.weighting"] == core.WEIGHTINGS
    assert CHOICES["algorithm.target_shift"] == core.TARGET_SHIFTS
    assert CHOICES["data.resize"] == data.RESIZE_MODES
    assert CHOICES["data.name"] == data.DATASET_NAMES
