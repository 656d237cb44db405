"""client.warmup_cache: a client's labelled public pre-training computed once and reused by any run that would
compute the same one (the arms of a sweep), with the same figures as computing it."""

import logging

import numpy as np
import torch

import fedkt.learner as learner
from fedkt.config import load_config

PRETRAINED = ["client.warmup_public_epochs=2", "algorithm.align_size=32"]


def make_learner(tmp_path, monkeypatch, *overrides, partition_id=1):
    monkeypatch.setenv("FEDKT_CACHE", str(tmp_path / "cache"))
    cfg = load_config(["experiment=smoke", *PRETRAINED, *overrides], run_dir=str(tmp_path))
    return learner.Learner(cfg, partition_id)


PUBLIC_SIZE = 200  # the smoke preset's public set; its clients hold fewer training images


def count_public_training(monkeypatch) -> list:
    """Spy on the learner's train_epochs: the sizes of the sets it trains on."""
    sizes, real = [], learner.train_epochs
    def spy(model, x, *args, **kwargs):
        sizes.append(len(x))
        return real(model, x, *args, **kwargs)
    monkeypatch.setattr(learner, "train_epochs", spy)
    return sizes


def first_round(client):
    uploads, metrics = client.fit_round(1, 1, next_seed=3)
    return uploads, metrics, {name: t.clone() for name, t in client.model.state_dict().items()}


def assert_same_round(a, b):
    (uploads_a, metrics_a, state_a), (uploads_b, metrics_b, state_b) = a, b
    assert {k: v for k, v in metrics_a.items() if k != "pretrain_cached"} == \
        {k: v for k, v in metrics_b.items() if k != "pretrain_cached"}
    for x, y in zip(uploads_a, uploads_b, strict=True):
        np.testing.assert_array_equal(x, y)
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


def test_a_cached_pretraining_gives_the_arms_the_round_that_computing_it_gives(tmp_path, monkeypatch):
    sizes = count_public_training(monkeypatch)
    computed = first_round(make_learner(tmp_path, monkeypatch, "algorithm=local"))
    assert sizes.count(PUBLIC_SIZE) == 1 and len(sizes) == 3  # pre-training, the private warm-up, the round
    assert "pretrain_cached" not in computed[1]
    sizes.clear()
    written = first_round(make_learner(tmp_path, monkeypatch, "algorithm=local", "client.warmup_cache=true"))
    assert_same_round(computed, written)
    assert written[1]["pretrain_cached"] == 0
    assert sizes.count(PUBLIC_SIZE) == 1 and len(list((tmp_path / "cache" / "warmup").glob("lenet-*.pt"))) == 1
    sizes.clear()
    for arm in ("ktpfl", "fedmd"):  # another arm of the same sweep reads it, and goes on exactly as computing it
        read = first_round(make_learner(tmp_path, monkeypatch, f"algorithm={arm}", "client.warmup_cache=true"))
        assert_same_round(computed, read)
        assert read[1]["pretrain_cached"] == 1
    assert len(sizes) == 4 and PUBLIC_SIZE not in sizes  # two arms' private epochs only


def test_the_cache_key_holds_what_changes_the_pretraining_and_only_that(tmp_path, monkeypatch):
    def path(*overrides, partition_id=1, seed=11):
        client = make_learner(tmp_path, monkeypatch, *overrides, partition_id=partition_id)
        x, y = learner.public_data(client.cfg)
        return client.warmup_cache_path(seed, x, y)

    base = path()
    for same in (["algorithm=fedmd"], ["algorithm=local"], ["client.local_epochs=10", "client.max_local_epochs=0"],
                 ["num_rounds=7"], ["client.warmup_cache=true"], ["client.warmup_epochs=3"]):
        assert path(*same) == base, same
    for other in (["client.lr=0.05"], ["client.warmup_public_epochs=3"], ["seed=1"], ["model.norm=batch"],
                  ["client.augment=false"], ["partition=type2"], ["client.batch_size=16"]):
        assert path(*other) != base, other
    assert path(partition_id=2) != base and path(seed=12) != base
    client = make_learner(tmp_path, monkeypatch)
    x, y = learner.public_data(client.cfg)
    with torch.no_grad():  # other starting weights (FedAvg's round 1 starts from the global model)
        next(client.model.parameters()).add_(1e-3)
    assert client.warmup_cache_path(11, x, y) != base


def test_a_damaged_cache_file_is_logged_and_the_pretraining_computed_again(tmp_path, monkeypatch, caplog):
    computed = first_round(make_learner(tmp_path, monkeypatch))
    first_round(make_learner(tmp_path, monkeypatch, "client.warmup_cache=true"))
    (cached,) = (tmp_path / "cache" / "warmup").glob("*.pt")
    cached.write_bytes(b"not a torch file")
    sizes = count_public_training(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="fedkt"):
        assert_same_round(computed, first_round(make_learner(tmp_path, monkeypatch, "client.warmup_cache=true")))
    assert sizes.count(PUBLIC_SIZE) == 1 and "cannot read the cached pre-training" in caplog.text
    sizes.clear()
    first_round(make_learner(tmp_path, monkeypatch, "client.warmup_cache=true"))  # written whole again
    assert len(sizes) == 2 and PUBLIC_SIZE not in sizes


def test_no_public_pretraining_writes_no_cache(tmp_path, monkeypatch):
    uploads, metrics, _ = first_round(make_learner(tmp_path, monkeypatch, "client.warmup_public_epochs=0",
                                                   "client.warmup_cache=true"))
    assert "pretrain_cached" not in metrics and not (tmp_path / "cache" / "warmup").exists()
