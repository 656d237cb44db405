"""What a client works on: its shard and the public set as float tensors (the round's alignment subset of the
public set is fedkt.core.alignment_indices).

The data set and its partition are cached per process: every virtual client in one Ray actor reads the
same decoded arrays (they are read-only), and the partition is a pure function of the config.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from fedkt.config import DataConfig, PartitionConfig, RunConfig
from fedkt.data import ImageData, channel_stats, load_dataset, normalize
from fedkt.partition import Partition, make_partition


@dataclass
class ClientData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


# The parts of the config that decide the data and the partition: hashable (frozen dataclasses), so they key the
# per-process caches below directly.
DataKey = tuple[int, int, DataConfig, PartitionConfig]


def data_key(cfg: RunConfig) -> DataKey:
    return (cfg.seed, cfg.num_clients, cfg.data, cfg.partition)


def load_federation(cfg: RunConfig) -> tuple[ImageData, Partition]:
    return _load_federation(data_key(cfg))


@functools.lru_cache(maxsize=2)
def _load_federation(key: DataKey) -> tuple[ImageData, Partition]:
    seed, num_clients, data_cfg, part_cfg = key
    data = load_dataset(
        data_cfg.name, data_cfg.root, cache_dir=data_cfg.cache_dir or None, download=data_cfg.download,
        image_size=data_cfg.image_size, resize=data_cfg.resize)
    partition = make_partition(
        data.y_train.numpy(), num_clients, scheme=part_cfg.scheme, seed=seed, public_size=data_cfg.public_size,
        alpha=part_cfg.alpha, type1_method=part_cfg.type1_method, classes_per_client=part_cfg.classes_per_client,
        samples_per_client=data_cfg.samples_per_client or None, test_fraction=part_cfg.test_fraction,
        val_fraction=part_cfg.val_fraction)
    return data, partition


def normalization_stats(cfg: RunConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return _normalization_stats(data_key(cfg))


@functools.lru_cache(maxsize=2)
def _normalization_stats(key: DataKey) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the pixels clients may train on: their train splits and the public set,
    never a validation or test image."""
    data, partition = _load_federation(key)
    idx = np.concatenate([partition.public, *(shard.train for shard in partition.clients)])
    return channel_stats(data.x_train[torch.as_tensor(idx, dtype=torch.long)].numpy())


def client_data(cfg: RunConfig, partition_id: int) -> ClientData:
    data, partition = load_federation(cfg)
    shard = partition.clients[partition_id]
    mean, std = normalization_stats(cfg)

    def take(idx):
        idx = torch.as_tensor(idx, dtype=torch.long)
        return normalize(data.x_train[idx], mean, std), data.y_train[idx]

    return ClientData(*take(shard.train), *take(shard.val), *take(shard.test))


def public_data(cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The public set as normalized float inputs and its labels (labels only for transfer warm-up)."""
    return _public_data(data_key(cfg))


@functools.lru_cache(maxsize=2)
def _public_data(key: DataKey) -> tuple[torch.Tensor, torch.Tensor]:
    data, partition = _load_federation(key)
    idx = torch.as_tensor(partition.public, dtype=torch.long)
    return normalize(data.x_train[idx], *_normalization_stats(key)), data.y_train[idx]
