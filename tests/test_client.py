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


@pytest.mark.parametrize("target_classes", ["all", "local"])
def test_target_classes_local_distils_only_towards_own_classes(tmp_path, monkeypatch, target_classes):
    client = make_client(tmp_path, monkeypatch, "partition=type2", f"algorithm.target_classes={target_classes}")
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
    if target_classes == "all":
        np.testing.assert_allclose(sent.numpy(), target)
    else:
        others = np.setdiff1d(np.arange(10), own)
        assert (sent[:, others] == 0).all()
        np.testing.assert_allclose(sent[:, own].numpy(), 0.5)


def test_target_classes_local_needs_probability_targets():
    cfg = compose(["algorithm=fedmd", "algorithm.consensus=logits", "algorithm.distill_loss=l1",
                   "algorithm.target_classes=local"])
    with pytest.raises(ConfigError, match="algorithm.target_classes=local"):
        validate(cfg)
    with pytest.raises(ConfigError, match="algorithm.target_classes"):
        validate(compose(["algorithm.target_classes=mine"]))
