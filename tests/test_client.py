"""KnowledgeClient (the NumPyClient) called directly, without Flower's simulation."""

import numpy as np
import pytest
from flwr.app import RecordDict
from flwr.common import Context

import fedkt.client_app as client_app
from fedkt.config import ConfigError, compose, validate


def make_client(tmp_path, monkeypatch, *overrides, partition_id=1):
    monkeypatch.setenv("FEDKT_CACHE", str(tmp_path / "cache"))
    cfg = dict(compose(["experiment=smoke", *overrides]), run_dir=str(tmp_path))
    context = Context(run_id=0, node_id=7, node_config={"partition-id": partition_id}, state=RecordDict(),
                      run_config={})
    return client_app.KnowledgeClient(cfg, context)


@pytest.mark.parametrize("target_shift", ["none", "classes", "prior"])
def test_target_shift_distils_towards_the_clients_own_view(tmp_path, monkeypatch, target_shift):
    client = make_client(tmp_path, monkeypatch, "partition=type2", f"algorithm.target_shift={target_shift}")
    seen = []
    real_distill = client_app.distill

    def spy(model, x, targets, *args, **kwargs):
        seen.append(targets.clone())
        return real_distill(model, x, targets, *args, **kwargs)

    monkeypatch.setattr(client_app, "distill", spy)
    target = np.full((64, 10), 0.1, dtype=np.float32)  # mass on every class
    client.fit([target], {"round": 2, "epochs": 1, "next_seed": 5, "target_seed": 4, "target_partition": 1})
    (sent,) = seen
    own = np.unique(client.data.y_train.numpy())
    assert len(own) == 2  # type 2: two classes per client
    counts = np.bincount(client.data.y_train.numpy(), minlength=10)
    if target_shift == "none":
        np.testing.assert_allclose(sent.numpy(), target)
    else:
        others = np.setdiff1d(np.arange(10), own)
        assert (sent[:, others] == 0).all()
        share = 0.5 if target_shift == "classes" else counts[own] / counts.sum()  # a flat target: the prior
        np.testing.assert_allclose(sent[:, own].numpy(), np.broadcast_to(share, (64, 2)), rtol=1e-5)


def test_target_shift_needs_probability_targets():
    cfg = compose(["algorithm=fedmd", "algorithm.consensus=logits", "algorithm.distill_loss=l1",
                   "algorithm.target_shift=prior"])
    with pytest.raises(ConfigError, match="algorithm.target_shift=prior"):
        validate(cfg)
    with pytest.raises(ConfigError, match="algorithm.target_shift"):
        validate(compose(["algorithm.target_shift=mine"]))
