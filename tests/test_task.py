"""What a client works on (fedkt.task): normalization that never sees a held-out pixel."""

import numpy as np
import torch

from fedkt.config import load_config
from fedkt.data import normalize
from fedkt.task import client_data, load_federation, normalization_stats, public_data


def test_normalization_statistics_come_only_from_what_clients_may_train_on(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDKT_CACHE", str(tmp_path))
    cfg = load_config(["experiment=smoke", "partition=type2"])
    data, partition = load_federation(cfg)
    trainable = np.concatenate([partition.public, *(c.train for c in partition.clients)])
    held_out = np.concatenate([a for c in partition.clients for a in (c.val, c.test)])
    pixels = data.x_train.numpy().astype(np.float64) / 255
    mean, std = normalization_stats(cfg)
    np.testing.assert_allclose(mean, pixels[trainable].mean(axis=(0, 2, 3)), atol=1e-9)
    np.testing.assert_allclose(std, pixels[trainable].std(axis=(0, 2, 3)), atol=1e-9)
    with_held_out = pixels[np.concatenate([trainable, held_out])].mean(axis=(0, 2, 3))
    assert np.abs(np.asarray(mean) - with_held_out).max() > 1e-4  # the held-out pixels would move the mean
    shard = partition.clients[1]
    x = client_data(cfg, 1)
    for split in ("train", "val", "test"):  # every split, the public set too, normalized with those stats
        idx = torch.as_tensor(getattr(shard, split))
        assert torch.equal(getattr(x, f"x_{split}"), normalize(data.x_train[idx], mean, std))
    assert torch.equal(public_data(cfg)[0], normalize(data.x_train[torch.as_tensor(partition.public)], mean, std))
