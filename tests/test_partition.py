"""Partitions: disjoint, covering, per-scheme class structure, seeded, stratified splits, bad requests."""

import numpy as np
import pytest

from fedkt.data import CIFAR10_CLASSES
from fedkt.partition import ClientShard, Partition, make_partition, majority_share


@pytest.fixture(scope="module")
def labels():
    """CIFAR-like labels: 10 balanced classes, 12,000 samples, shuffled."""
    return np.random.default_rng(123).permutation(np.arange(12000) % 10)


def all_indices(part):
    return [part.public] + [a for c in part.clients for a in (c.train, c.val, c.test)]


def assert_disjoint_in_range(part, n):
    parts = all_indices(part)
    joined = np.concatenate(parts)
    assert joined.dtype == np.int64 and all(a.dtype == np.int64 for a in parts)
    assert joined.min() >= 0 and joined.max() < n
    assert len(np.unique(joined)) == len(joined), "an index is in two places"


@pytest.mark.parametrize("scheme", ["type1", "type2", "iid"])
def test_disjoint_and_covering(labels, scheme):
    part = make_partition(labels, num_clients=8, scheme=scheme, public_size=2000, seed=0)
    assert_disjoint_in_range(part, len(labels))
    assert len(part.public) == 2000 and part.num_clients == 8
    # with no cap, public set + shards use every sample
    assert len(np.concatenate(all_indices(part))) == len(labels)
    # the public set is stratified: 200 of each class
    assert np.bincount(labels[part.public], minlength=10).tolist() == [200] * 10


@pytest.mark.parametrize("scheme", ["type1", "type2", "iid"])
def test_samples_per_client_caps(labels, scheme):
    part = make_partition(labels, num_clients=6, scheme=scheme, public_size=1000, samples_per_client=300)
    assert_disjoint_in_range(part, len(labels))
    sizes = [len(c.all) for c in part.clients]
    assert max(sizes) <= 300
    if scheme != "type1":
        assert sizes == [300] * 6
    assert make_partition(labels, 6, scheme=scheme, samples_per_client=0) == make_partition(labels, 6, scheme=scheme)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("cap", [301, 302, 299])
def test_type2_shard_never_exceeds_a_cap_that_k_does_not_divide(labels, k, cap):
    part = make_partition(labels, num_clients=6, scheme="type2", classes_per_client=k, public_size=1000,
                          samples_per_client=cap)
    assert_disjoint_in_range(part, len(labels))
    assert [len(c.all) for c in part.clients] == [cap] * 6  # the whole cap, never more (was 302 / 303)
    counts = part.class_counts(labels)
    assert ((counts > 0).sum(1) == k).all()
    assert counts.max() - counts[counts > 0].min() <= 1  # the k classes as even as the cap allows


@pytest.mark.parametrize("k,num_clients", [(1, 10), (2, 20), (2, 7), (3, 9), (10, 4)])
def test_type2_exact_classes(labels, k, num_clients):
    part = make_partition(labels, num_clients, scheme="type2", classes_per_client=k, public_size=1000, seed=1)
    counts = part.class_counts(labels)
    assert ((counts > 0).sum(axis=1) == k).all()
    uses = (counts > 0).sum(axis=0)
    assert uses.sum() == num_clients * k and uses.max() - uses.min() <= 1, "classes not used evenly"
    for shard in part.clients:  # each held class is in both the train and the test part
        held = set(np.flatnonzero(np.bincount(labels[shard.all], minlength=10)))
        assert set(labels[shard.train]) == held and set(labels[shard.test]) == held


def test_type2_pairs_vary(labels):
    part = make_partition(labels, 20, scheme="type2", classes_per_client=2, public_size=1000)
    pairs = {tuple(np.flatnonzero(row)) for row in part.class_counts(labels)}
    assert len(pairs) >= 8, "class pairs should not repeat one fixed pattern"


@pytest.mark.parametrize("method", ["dirichlet", "lognormal"])
def test_type1_every_class_everywhere(labels, method):
    part = make_partition(labels, 20, scheme="type1", type1_method=method, public_size=2000, seed=2)
    counts = part.class_counts(labels)
    assert (counts >= 2).all()
    assert counts.std(axis=0).mean() > 50, "amounts per class should vary between clients"
    for shard in part.clients:
        assert set(labels[shard.train]) == set(range(10)) and set(labels[shard.test]) == set(range(10))


def test_type1_alpha_controls_skew(labels):
    def skew(alpha):
        counts = make_partition(labels, 20, scheme="type1", alpha=alpha, public_size=0).class_counts(labels)
        return (counts.max(axis=1) / counts.sum(axis=1)).mean()
    assert skew(0.1) > skew(1.0) > skew(100.0)
    assert skew(100.0) < 0.2


def test_min_per_class(labels):
    part = make_partition(labels, 10, scheme="type1", alpha=0.05, min_per_class=7, public_size=0)
    assert part.class_counts(labels).min() >= 7


def test_seeds(labels):
    for scheme in ("type1", "type2", "iid"):
        a = make_partition(labels, 10, scheme=scheme, seed=5, public_size=1000)
        b = make_partition(labels, 10, scheme=scheme, seed=5, public_size=1000)
        c = make_partition(labels, 10, scheme=scheme, seed=6, public_size=1000)
        assert a == b
        assert all(np.array_equal(x, y) for x, y in zip(all_indices(a), all_indices(b)))
        assert a != c and not np.array_equal(a.public, c.public)
        assert not all(np.array_equal(x.train, y.train) for x, y in zip(a.clients, c.clients))
    # the public set depends on the seed only, not on the scheme
    assert np.array_equal(make_partition(labels, 10, "type1", seed=5, public_size=1000).public,
                          make_partition(labels, 10, "type2", seed=5, public_size=1000).public)


def test_split_sizes_and_stratification(labels):
    part = make_partition(labels, 5, scheme="type1", alpha=1.0, public_size=2000, seed=3)
    for shard in part.clients:
        n = len(shard.all)
        assert abs(len(shard.test) - 0.25 * n) <= 2
        trainval = len(shard.train) + len(shard.val)
        assert abs(len(shard.val) - 0.2 * trainval) <= 2
        for c in range(10):  # per class, too
            n_c = (labels[shard.all] == c).sum()
            test_c = (labels[shard.test] == c).sum()
            val_c = (labels[shard.val] == c).sum()
            assert abs(test_c - 0.25 * n_c) <= 1
            assert abs(val_c - 0.2 * (n_c - test_c)) <= 1
    custom = make_partition(labels, 4, scheme="iid", public_size=0, test_fraction=0.5, val_fraction=0.1)
    assert [len(c.test) for c in custom.clients] == [1500] * 4
    assert [len(c.val) for c in custom.clients] == [150] * 4


def test_tiny_classes_in_train_and_test(labels):
    """A class with only min_per_class=2 samples at a client goes one to train, one to test."""
    part = make_partition(labels, 10, scheme="type1", alpha=0.01, samples_per_client=100, public_size=0)
    for shard in part.clients:
        assert set(labels[shard.train]) == set(range(10)) == set(labels[shard.test])


def test_paper_setting_on_cifar(cifar_data):
    y = cifar_data.y_train.numpy()
    part = make_partition(y, 20, scheme="type2", public_size=5000, seed=0)
    assert_disjoint_in_range(part, len(y))
    assert ((part.class_counts(y) > 0).sum(axis=1) == 2).all()
    assert all(len(c.test) == 562 and len(c.train) + len(c.val) == 1688 for c in part.clients)


def test_summary(labels):
    part = make_partition(labels, 3, scheme="type2", public_size=500, seed=0)
    text = part.summary(labels, class_names=CIFAR10_CLASSES)
    assert "public set 500" in text and "type2" in text and "airplane" in text and "truck" in text
    lines = text.splitlines()
    assert len(lines) == 2 + 3
    counts = part.class_counts(labels)
    for i, line in enumerate(lines[2:]):
        numbers = [int(v) for v in line.split()]
        shard = part.clients[i]
        assert numbers == [i, *counts[i], len(shard.train), len(shard.val), len(shard.test), len(shard.all)]
    assert "    0" in part.summary(labels)  # default class names are the ids


def test_json_round_trip(labels, tmp_path):
    part = make_partition(labels, 6, scheme="type1", seed=4, public_size=700, samples_per_client=500)
    path = tmp_path / "partition.json"
    part.to_json(path)
    back = Partition.from_json(path)
    assert back == part and back.scheme == "type1" and back.seed == 4 and back.num_classes == 10
    assert all(np.array_equal(x, y) and y.dtype == np.int64 for x, y in zip(all_indices(part), all_indices(back)))
    assert back.params["samples_per_client"] == 500
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        Partition.from_json(tmp_path / "bad.json")


def test_class_counts(labels):
    shard = ClientShard(train=np.array([0, 1]), val=np.array([2]), test=np.array([3]))
    part = Partition(public=np.array([4]), clients=[shard], scheme="iid", seed=0, num_classes=10)
    assert part.class_counts(labels).tolist() == [np.bincount(labels[:4], minlength=10).tolist()]


def test_majority_share_is_what_always_answering_the_commonest_class_scores(labels):
    assert majority_share([3, 3, 1, 3, 0]) == 3 / 5
    assert majority_share(np.array([7])) == 1.0
    assert np.isnan(majority_share([]))  # an empty split has no floor, and no accuracy either
    part = make_partition(labels, 8, scheme="type2", seed=1, public_size=500, samples_per_client=300)
    for split in ("train", "val", "test"):
        for shard, share in zip(part.clients, part.majority_shares(labels, split)):
            y = labels[getattr(shard, split)]
            best_constant = max(np.mean(y == k) for k in range(10))  # the reference: try every constant answer
            assert share == pytest.approx(best_constant) and share >= 0.5  # two classes a client: at least half


@pytest.mark.parametrize("kwargs,key", [
    (dict(scheme="type2", classes_per_client=11), "partition.classes_per_client"),
    (dict(scheme="type2", classes_per_client=0), "partition.classes_per_client"),
    (dict(public_size=12001), "data.public_size"),
    (dict(public_size=-1), "data.public_size"),
    (dict(alpha=0.0), "partition.alpha"),
    (dict(alpha=-1.0), "partition.alpha"),
    (dict(scheme="type3"), "partition.scheme"),
    (dict(type1_method="zipf"), "partition.type1_method"),
    (dict(test_fraction=0.0), "partition.test_fraction"),
    (dict(test_fraction=1.0), "partition.test_fraction"),
    (dict(val_fraction=1.5), "partition.val_fraction"),
    (dict(num_clients=0), "num_clients"),
    (dict(num_clients=600), "num_clients"),  # 10 classes x 2 x 600 > 12,000 - 5,000
    (dict(num_clients=2000, scheme="type2"), "num_clients"),  # 400 holders x 2 > 700 a class
    (dict(samples_per_client=5), "data.samples_per_client"),
    (dict(min_per_class=0), "partition.min_per_class"),
])
def test_impossible_requests(labels, kwargs, key):
    kwargs = {"num_clients": 10, **kwargs}
    with pytest.raises(ValueError) as err:
        make_partition(labels, **kwargs)
    message = str(err.value)
    assert key in message
    bad = [v for k, v in kwargs.items() if k == key.split(".")[-1]]
    if bad:
        assert repr(bad[0]) in message or str(bad[0]) in message
