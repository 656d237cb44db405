"""Split a labelled training set into a public set and private client shards (IID, non-IID type 1, type 2),
each shard cut into stratified train / val / test parts. Everything is reproducible from one seed.

Own partitioners rather than flwr-datasets: that package would pull in HuggingFace datasets and pyarrow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedkt.config import SCHEMES, TYPE1_METHODS


def majority_share(labels) -> float:
    """The share of the most common class in labels: the accuracy of a model that always answers that class, the
    floor a client that learned nothing from its images reaches on a skewed split. NaN for an empty split."""
    labels = np.asarray(labels, dtype=np.int64)
    return float(np.bincount(labels).max() / len(labels)) if len(labels) else float("nan")


@dataclass(eq=False)
class ClientShard:
    """One client's private data: index arrays into the data set's train split."""
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @property
    def all(self) -> np.ndarray:
        return np.concatenate([self.train, self.val, self.test])

    def __eq__(self, other) -> bool:
        return isinstance(other, ClientShard) and all(
            np.array_equal(getattr(self, k), getattr(other, k)) for k in ("train", "val", "test"))


@dataclass(eq=False)
class Partition:
    """A public set and the client shards, all index arrays into the train split, pairwise disjoint."""
    public: np.ndarray
    clients: list[ClientShard]
    scheme: str
    seed: int
    num_classes: int
    params: dict = field(default_factory=dict)  # the make_partition arguments, for the record

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def class_counts(self, labels) -> np.ndarray:
        """(num_clients, num_classes) counts of each class over each client's whole shard."""
        labels = np.asarray(labels)
        return np.stack([np.bincount(labels[c.all], minlength=self.num_classes) for c in self.clients])

    def majority_shares(self, labels, split: str = "test") -> list[float]:
        """Per client, majority_share of one split ("train", "val" or "test")."""
        labels = np.asarray(labels)
        return [majority_share(labels[getattr(c, split)]) for c in self.clients]

    def summary(self, labels, class_names=None) -> str:
        """A table: per client, the count of each class and the train / val / test sizes."""
        names = list(class_names) if class_names is not None else [str(c) for c in range(self.num_classes)]
        counts = self.class_counts(labels)
        width = max(5, max(len(n) for n in names) + 1)
        header = f"{'client':>6} " + "".join(f"{n[:width - 1]:>{width}}" for n in names)
        header += f" {'train':>6} {'val':>6} {'test':>6} {'total':>6}"
        lines = [f"partition {self.scheme}, seed {self.seed}, {self.num_clients} clients, "
                 f"public set {len(self.public)} samples", header]
        for i, (shard, row) in enumerate(zip(self.clients, counts)):
            lines.append(f"{i:>6} " + "".join(f"{v:>{width}}" for v in row)
                         + f" {len(shard.train):>6} {len(shard.val):>6} {len(shard.test):>6} {row.sum():>6}")
        return "\n".join(lines)

    def to_json(self, path):
        data = {"scheme": self.scheme, "seed": self.seed, "num_classes": self.num_classes,
                "params": self.params, "public": self.public.tolist(),
                "clients": [{k: getattr(c, k).tolist() for k in ("train", "val", "test")} for c in self.clients]}
        Path(path).write_text(json.dumps(data))

    @classmethod
    def from_json(cls, path) -> "Partition":
        try:
            data = json.loads(Path(path).read_text())
            idx = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
            return cls(public=idx(data["public"]),
                       clients=[ClientShard(idx(c["train"]), idx(c["val"]), idx(c["test"])) for c in data["clients"]],
                       scheme=data["scheme"], seed=int(data["seed"]), num_classes=int(data["num_classes"]),
                       params=data.get("params", {}))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a readable partition file ({type(e).__name__}: {e}); "
                             f"write it with Partition.to_json") from e

    def __eq__(self, other) -> bool:
        return (isinstance(other, Partition) and np.array_equal(self.public, other.public)
                and self.clients == other.clients and self.scheme == other.scheme
                and self.seed == other.seed and self.num_classes == other.num_classes)


def make_partition(labels, num_clients, scheme="type1", seed=0, public_size=5000, alpha=0.5,
                   type1_method="dirichlet", classes_per_client=2, samples_per_client=None,
                   test_fraction=0.25, val_fraction=0.2, min_per_class=2) -> Partition:
    """Draw the public set, share the rest among clients by `scheme`, split each shard train/val/test.

    type1: every class at every client (at least min_per_class each), amounts from Dirichlet(alpha) or
    log-normal(0, 2) weights; type2: exactly classes_per_client classes per client; iid: uniform.
    samples_per_client caps each shard (None or 0 = share out all that is left after the public set).
    """
    labels = np.asarray(labels).astype(np.int64, copy=False)
    if labels.ndim != 1 or len(labels) == 0 or labels.min() < 0:
        raise ValueError("make_partition: labels must be a non-empty 1-D array of non-negative class ids")
    num_classes = int(labels.max()) + 1
    samples_per_client = samples_per_client or None
    _check_args(len(labels), num_classes, num_clients, scheme, public_size, alpha, type1_method,
                classes_per_client, samples_per_client, test_fraction, val_fraction, min_per_class)
    rng_public, rng_split, rng_local = (np.random.default_rng([seed, k]) for k in range(3))

    public = _stratified_draw(labels, np.arange(len(labels)), public_size, rng_public)
    rest = np.setdiff1d(np.arange(len(labels)), public)
    pools = [rng_split.permutation(rest[labels[rest] == c]) for c in range(num_classes)]

    if scheme == "iid":
        shards = _split_iid(np.concatenate(pools), num_clients, samples_per_client, min_per_class, rng_split)
    else:
        if scheme == "type1":
            counts = _type1_counts(pools, num_clients, alpha, type1_method, samples_per_client,
                                   min_per_class, rng_split)
        else:
            counts = _type2_counts(pools, num_clients, classes_per_client, samples_per_client,
                                   min_per_class, rng_split)
        shards = _take(pools, counts)

    clients = [_split_shard(labels, s, test_fraction, val_fraction, rng_local) for s in shards]
    params = dict(num_clients=num_clients, public_size=public_size, alpha=alpha, type1_method=type1_method,
                  classes_per_client=classes_per_client, samples_per_client=samples_per_client,
                  test_fraction=test_fraction, val_fraction=val_fraction, min_per_class=min_per_class)
    return Partition(public=np.sort(public), clients=clients, scheme=scheme, seed=seed,
                     num_classes=num_classes, params=params)


# -----------------------------------------------------------------------------
# argument checks

def _bad(key, value, allowed):
    return ValueError(f"{key}={value!r} is not allowed: {allowed}")


def _check_args(n, num_classes, num_clients, scheme, public_size, alpha, type1_method, classes_per_client,
                samples_per_client, test_fraction, val_fraction, min_per_class):
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise _bad("num_clients", num_clients, "a positive integer")
    if scheme not in SCHEMES:
        raise _bad("partition.scheme", scheme, f"one of {', '.join(SCHEMES)}")
    if type1_method not in TYPE1_METHODS:
        raise _bad("partition.type1_method", type1_method, f"one of {', '.join(TYPE1_METHODS)}")
    if not alpha > 0:
        raise _bad("partition.alpha", alpha, "a Dirichlet concentration > 0")
    if scheme == "type2" and not (isinstance(classes_per_client, (int, np.integer))
                                  and 1 <= classes_per_client <= num_classes):
        raise _bad("partition.classes_per_client", classes_per_client, f"an integer from 1 to {num_classes}")
    if not 0 <= public_size < n:
        raise _bad("data.public_size", public_size, f"0 <= public_size < {n} (the train split's size)")
    for key, value in (("partition.test_fraction", test_fraction), ("partition.val_fraction", val_fraction)):
        if not 0 < value < 1:
            raise _bad(key, value, "a fraction strictly between 0 and 1")
    if not isinstance(min_per_class, (int, np.integer)) or min_per_class < 1:
        raise _bad("partition.min_per_class", min_per_class, "a positive integer")
    needed = {"type1": num_classes, "type2": classes_per_client, "iid": 1}[scheme] * min_per_class
    if samples_per_client is not None and samples_per_client < needed:
        raise _bad("data.samples_per_client", samples_per_client,
                   f"0 (all data) or at least {needed} (min_per_class={min_per_class} of each class a "
                   f"{scheme} client holds)")


def _check_capacity(pools, holders, min_per_class, num_clients):
    """Each class must give min_per_class samples to each client that holds it."""
    for c, (pool, k) in enumerate(zip(pools, holders)):
        if len(pool) < k * min_per_class:
            raise ValueError(f"num_clients={num_clients} is too large: {k} clients hold class {c} and need "
                             f"min_per_class={min_per_class} samples of it each ({k * min_per_class}), but only "
                             f"{len(pool)} are left after the public set; use fewer clients or a smaller "
                             f"data.public_size")


# -----------------------------------------------------------------------------
# how many samples of each class each client gets

def _apportion(total, weights) -> np.ndarray:
    """Integers summing to `total`, proportional to `weights` (largest remainder)."""
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(weights), 1 / len(weights))
    exact = total * weights
    out = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - out), kind="stable")
    out[order[:int(total - out.sum())]] += 1
    return out


def _type1_counts(pools, num_clients, alpha, method, samples_per_client, min_per_class, rng):
    """(num_clients, num_classes) counts: min_per_class of every class plus extras by random weights."""
    num_classes = len(pools)
    _check_capacity(pools, [num_clients] * num_classes, min_per_class, num_clients)
    if method == "dirichlet":
        weights = rng.dirichlet(np.full(num_classes, alpha), size=num_clients)
    else:  # KT-pFL code: log-normal(0, 2) power law
        weights = rng.lognormal(0.0, 2.0, size=(num_clients, num_classes))
    spare = np.array([len(p) for p in pools]) - num_clients * min_per_class
    if samples_per_client is None:  # share out each class fully, in proportion to the weights
        extra = np.stack([_apportion(spare[c], weights[:, c]) for c in range(num_classes)], axis=1)
    else:  # each client's extras follow its own weights, cut down where a class runs short
        budget = samples_per_client - num_classes * min_per_class
        extra = np.stack([_apportion(budget, w) for w in weights])
        for c in range(num_classes):
            if extra[:, c].sum() > spare[c]:
                extra[:, c] = _apportion(spare[c], extra[:, c])
    return min_per_class + extra


def _type2_counts(pools, num_clients, k, samples_per_client, min_per_class, rng):
    """(num_clients, num_classes) counts with exactly k classes per client, classes used about evenly."""
    num_classes = len(pools)
    uses = np.full(num_classes, num_clients * k // num_classes)
    uses[rng.permutation(num_classes)[:num_clients * k % num_classes]] += 1
    holders = uses.copy()
    _check_capacity(pools, holders, min_per_class, num_clients)
    has = np.zeros((num_clients, num_classes), dtype=bool)
    for i in range(num_clients):  # greedy on the most-needed classes, random tie-break: always feasible
        pick = np.lexsort((rng.random(num_classes), -uses))[:k]
        has[i, pick] = True
        uses[pick] -= 1
    counts = np.zeros((num_clients, num_classes), dtype=np.int64)
    for c in range(num_classes):
        members = np.flatnonzero(has[:, c])
        if len(members) == 0:  # fewer client slots than classes: this class stays unused
            continue
        counts[members, c] = _apportion(len(pools[c]), np.ones(len(members)))
    if samples_per_client is not None:  # a cap not divisible by k: the extra samples rotate over the k classes
        caps = _apportion(samples_per_client, np.ones(k))
        for i in range(num_clients):
            own = np.flatnonzero(has[i])
            counts[i, own] = np.minimum(counts[i, own], np.roll(caps, i)[:len(own)])
    return counts


def _take(pools, counts) -> list[np.ndarray]:
    """Cut each class pool into consecutive, disjoint pieces of the given sizes."""
    starts = np.vstack([np.zeros(counts.shape[1], dtype=np.int64), np.cumsum(counts, axis=0)])
    return [np.concatenate([pools[c][starts[i, c]:starts[i + 1, c]] for c in range(counts.shape[1])])
            for i in range(counts.shape[0])]


def _split_iid(indices, num_clients, samples_per_client, min_per_class, rng):
    if len(indices) < num_clients * min_per_class:
        raise ValueError(f"num_clients={num_clients} needs {num_clients * min_per_class} samples, only "
                         f"{len(indices)} are left after the public set; use fewer clients or a smaller "
                         f"data.public_size")
    indices = rng.permutation(indices)
    size = len(indices) // num_clients
    if samples_per_client is not None:
        size = min(size, samples_per_client)
        return [indices[i * size:(i + 1) * size] for i in range(num_clients)]
    return np.array_split(indices, num_clients)


# -----------------------------------------------------------------------------
# stratified draws

def _stratified_counts(class_sizes, fraction, rng, keep_train=False, keep_aside=False) -> np.ndarray:
    """How many of each class to put aside so that `fraction` of the whole goes, each class in proportion.

    keep_train: every class keeps at least one sample; keep_aside: a class with >= 2 samples puts one aside.
    """
    class_sizes = np.asarray(class_sizes, dtype=np.int64)
    exact = fraction * class_sizes
    out = np.floor(exact).astype(np.int64)
    shortfall = int(round(exact.sum())) - int(out.sum())
    order = np.lexsort((rng.random(len(out)), -(exact - out)))  # largest remainders, random tie-break
    out[order[:shortfall]] += 1
    if keep_aside:
        out = np.where(class_sizes >= 2, np.maximum(out, 1), out)
    if keep_train:
        out = np.minimum(out, np.maximum(class_sizes - 1, 0))
    return np.minimum(out, class_sizes)


def _stratified_draw(labels, indices, size, rng) -> np.ndarray:
    """A random subset of `indices` of the given size, each class in proportion."""
    if size == 0:
        return np.zeros(0, dtype=np.int64)
    classes = labels[indices]
    present = np.unique(classes)
    sizes = np.array([(classes == c).sum() for c in present])
    take = _stratified_counts(sizes, size / len(indices), rng)
    picked = [rng.choice(indices[classes == c], size=t, replace=False) for c, t in zip(present, take)]
    return np.concatenate(picked).astype(np.int64)


def _split_shard(labels, shard, test_fraction, val_fraction, rng) -> ClientShard:
    """Stratified test part of the shard, then a stratified validation part of what remains."""
    def cut(indices, fraction, keep_aside):
        classes = labels[indices]
        present = np.unique(classes)
        sizes = np.array([(classes == c).sum() for c in present])
        take = _stratified_counts(sizes, fraction, rng, keep_train=True, keep_aside=keep_aside)
        aside, kept = [], []
        for c, t in zip(present, take):
            members = rng.permutation(indices[classes == c])
            aside.append(members[:t])
            kept.append(members[t:])
        empty = [np.zeros(0, dtype=np.int64)]
        return np.concatenate(kept + empty), np.concatenate(aside + empty)

    trainval, test = cut(np.asarray(shard, dtype=np.int64), test_fraction, keep_aside=True)
    train, val = cut(trainval, val_fraction, keep_aside=False)
    return ClientShard(train=np.sort(train), val=np.sort(val), test=np.sort(test))
