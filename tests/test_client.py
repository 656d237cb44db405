"""KnowledgeClient (the NumPyClient) called directly, without Flower's simulation."""

import numpy as np
import torch
import pytest
from flwr.app import RecordDict
from flwr.common import Context

import fedkt.client_app as client_app
import fedkt.config as config
import fedkt.learner as learner
from fedkt.config import ConfigError, build_config, compose, load_config


def make_client(tmp_path, monkeypatch, *overrides, partition_id=1):
    monkeypatch.setenv("FEDKT_CACHE", str(tmp_path / "cache"))
    cfg = load_config(["experiment=smoke", *overrides], run_dir=str(tmp_path))
    context = Context(run_id=0, node_id=7, node_config={"partition-id": partition_id}, state=RecordDict(),
                      run_config={})
    return client_app.KnowledgeClient(cfg, context)


@pytest.mark.parametrize("target_shift", ["none", "classes", "prior"])
def test_target_shift_distils_towards_the_clients_own_view(tmp_path, monkeypatch, target_shift):
    client = make_client(tmp_path, monkeypatch, "partition=type2", f"algorithm.target_shift={target_shift}")
    seen = []
    real_distill = learner.distill

    def spy(model, x, targets, *args, **kwargs):
        seen.append(targets.clone())
        return real_distill(model, x, targets, *args, **kwargs)

    monkeypatch.setattr(learner, "distill", spy)
    target = np.full((64, 10), 0.1, dtype=np.float32)  # mass on every class
    client.fit([target], {"round": 2, "epochs": 1, "next_seed": 5, "target_seed": 4, "target_partition": 1})
    (sent,) = seen
    own = np.unique(client.learner.data.y_train.numpy())
    assert len(own) == 2  # type 2: two classes per client
    counts = np.bincount(client.learner.data.y_train.numpy(), minlength=10)
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
        build_config(cfg)
    with pytest.raises(ConfigError, match="algorithm.target_shift"):
        build_config(compose(["algorithm.target_shift=mine"]))


def swamped_client(tmp_path, monkeypatch, *overrides, idle_rounds=0):
    """A type-2 client that has learned its two classes, then (after `idle_rounds` rounds that train nothing) is sent
    a target that puts all mass on a class it does not hold, distilled for 10 epochs: the late collapse of issue 21
    in a few seconds. Returns (test accuracy before, after, the swamped round's metrics)."""
    client = make_client(tmp_path, monkeypatch, "partition=type2", "client.warmup_epochs=15", "client.augment=false",
                         "algorithm.distill_epochs=10", *overrides)
    context = client.store.context
    client.fit([], {"round": 1, "epochs": 1, "next_seed": 5, "target_seed": -1, "target_partition": -1})
    learned = client.evaluate([], {"round": 1})[2]["test_acc"]
    for rnd in range(2, 2 + idle_rounds):
        client = client_app.KnowledgeClient(client.cfg, context)
        client.fit([], {"round": rnd, "epochs": 0, "next_seed": 4 + rnd, "target_seed": -1, "target_partition": -1})
    own = np.unique(client.learner.data.y_train.numpy())
    target = np.zeros((64, 10), dtype=np.float32)
    target[:, np.setdiff1d(np.arange(10), own)[0]] = 1.0
    client = client_app.KnowledgeClient(client.cfg, context)
    rnd = 2 + idle_rounds
    _, _, metrics = client.fit([target], {"round": rnd, "epochs": 1, "next_seed": 5 + rnd, "target_seed": 4 + rnd,
                                          "target_partition": 1})
    return learned, client.evaluate([], {"round": rnd})[2]["test_acc"], metrics


def test_distillation_that_swamps_the_private_classes_erases_them_without_the_guard(tmp_path, monkeypatch):
    learned, after, metrics = swamped_client(tmp_path, monkeypatch, "client.distill_guard=none")
    assert learned >= 0.9 and after <= learned - 0.4
    assert "distill_kept" not in metrics


def test_the_validation_guard_undoes_a_distillation_that_lowers_validation_accuracy(tmp_path, monkeypatch):
    learned, after, metrics = swamped_client(tmp_path, monkeypatch, "client.distill_guard=val")
    assert learned >= 0.9 and after >= learned - 0.05
    assert metrics["distill_kept"] == 0


def test_the_validation_guard_keeps_a_distillation_that_does_no_harm(tmp_path, monkeypatch):
    client = make_client(tmp_path, monkeypatch, "partition=type2", "client.distill_guard=val")
    seen = []
    real_distill = learner.distill

    def spy(model, *args, **kwargs):
        loss = real_distill(model, *args, **kwargs)
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return loss

    monkeypatch.setattr(learner, "distill", spy)
    # validation accuracy that does not drop (patched constant): the distilled weights stay, and with no private
    # epoch after it they are the weights the round ends with
    monkeypatch.setattr(learner.Learner, "validate", lambda self: (1.0, 0.5))
    target = np.full((64, 10), 0.1, dtype=np.float32)
    _, _, metrics = client.fit([target], {"round": 2, "epochs": 0, "next_seed": 5, "target_seed": 4,
                                          "target_partition": 1})
    assert metrics["distill_kept"] == 1
    (distilled,) = seen
    assert all(torch.equal(client.learner.model.state_dict()[k], v) for k, v in distilled.items())


@pytest.mark.parametrize("policy", ["fixed", "follow"])
def test_a_distillation_rate_that_follows_the_lowered_private_rate_keeps_the_clients_classes(tmp_path, monkeypatch,
                                                                                               policy):
    """Issue 21's remedy on tiny data: the plateau policy has cut the private rate 50-fold when a swamping target
    arrives; distilled at the fixed rate (the KT-pFL code) the client loses its own classes, at the rate that
    follows the policy (the default) it keeps them."""
    learned, after, metrics = swamped_client(  # round 2 trains nothing: no better validation, the rate is cut
        tmp_path, monkeypatch, "client.lr_policy=plateau", "client.lr_patience=1", "client.lr_factor=0.02",
        f"algorithm.distill_lr_policy={policy}", "num_rounds=3", idle_rounds=1)
    assert metrics["lr"] == pytest.approx(0.02 * 0.02)  # the private rate the policy left
    assert learned >= 0.9
    if policy == "fixed":
        assert metrics["distill_lr"] == pytest.approx(0.02) and after <= learned - 0.4
    else:
        assert metrics["distill_lr"] == pytest.approx(0.02 * 0.02) and after >= learned - 0.05


def test_channels_last_clients_keep_their_layout_and_figures_across_messages(tmp_path, monkeypatch):
    """model.channels_last: the named architectures run channels-last from the first message on, and a client
    restored from its saved state (every later message) is the same model in the same layout."""
    archs = "model.architectures=[lenet,alexnet,resnet18,shufflenetv2]"
    cfg = load_config(["experiment=smoke", archs, "num_clients=4", "model.channels_last=[lenet,shufflenetv2]"],
                      run_dir=str(tmp_path))
    assert cfg.channels_last == {"lenet", "shufflenetv2"}
    monkeypatch.setenv("FEDKT_CACHE", str(tmp_path / "cache"))
    for arch, fresh, restored in fresh_and_restored(cfg):
        for model in (fresh.model, restored.model):
            conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
            assert conv.weight.is_contiguous(memory_format=torch.channels_last) == (arch in cfg.channels_last), arch


def test_skip_padding_taps_clients_keep_it_across_messages(tmp_path, monkeypatch):
    """model.skip_padding_taps: every zero-padded convolution of a client, fresh or restored from its saved state,
    computes only its live taps; off, none does."""
    base = ["experiment=smoke", "model.architectures=[resnet18]", "num_clients=1", "model.stem=imagenet"]
    monkeypatch.setenv("FEDKT_CACHE", str(tmp_path / "cache"))
    for on in (True, False):
        cfg = load_config([*base, f"model.skip_padding_taps={str(on).lower()}"], run_dir=str(tmp_path / str(on)))
        for _, fresh, restored in fresh_and_restored(cfg):
            for model in (fresh.model, restored.model):
                padded = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and any(m.padding)]
                skipping = [m for m in padded if "forward" in vars(m)]  # an instance forward: _forward_live_taps
                assert len(padded) == 17 and len(skipping) == (17 if on else 0)


def fresh_and_restored(cfg):
    """Per client: its architecture, a warmed-up Learner and one restored from its saved state (what every later
    message builds), after checking that both predict the same."""
    for pid, arch in enumerate(cfg.architectures):
        fresh = learner.Learner(cfg, pid)
        fresh.warm_up(seed=3)
        restored = learner.Learner(cfg, pid, fresh.state_bytes())
        np.testing.assert_array_equal(restored.predict(align_seed=1), fresh.predict(align_seed=1))
        yield arch, fresh, restored


def test_channels_last_names_only_architectures():
    with pytest.raises(ConfigError, match="model.channels_last: unknown architecture 'vgg'"):
        load_config(["model.channels_last=[lenet,vgg]"])
    assert load_config(['model.channels_last=""']).channels_last == frozenset()


def test_bfloat16_clients_compute_in_bfloat16_and_keep_float32_weights_across_messages(tmp_path, monkeypatch):
    """model.bfloat16: the named architectures' convolutions run in bfloat16 from the first message on, while
    weights, saved states and the logits they send stay float32; a restored client is the same model; the
    others are untouched."""
    archs = "model.architectures=[lenet,alexnet]"
    cfg = load_config(["experiment=smoke", archs, "num_clients=2", "model.bfloat16=[alexnet]"], run_dir=str(tmp_path))
    assert cfg.bfloat16 == {"alexnet"}
    monkeypatch.setenv("FEDKT_CACHE", str(tmp_path / "cache"))
    for arch, fresh, restored in fresh_and_restored(cfg):
        for model in (fresh.model, restored.model):
            seen = []
            conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
            hook = conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
            logits = model(fresh.data.x_test[:4])
            hook.remove()
            assert seen == [torch.bfloat16 if arch == "alexnet" else torch.float32], arch
            assert logits.dtype == torch.float32
            assert all(t.dtype == torch.float32 for t in model.state_dict().values() if t.is_floating_point())


def test_bfloat16_names_only_architectures_and_warns_where_it_is_emulated(monkeypatch):
    with pytest.raises(ConfigError, match="model.bfloat16: unknown architecture 'vgg'"):
        load_config(["model.bfloat16=[lenet,vgg]"])
    cfg = load_config(["model.bfloat16=[alexnet,lenet]"])
    assert learner.bfloat16_warning(cfg, on_gpu=False, cpu_units="") is not None
    assert "model.bfloat16=alexnet,lenet" in learner.bfloat16_warning(cfg, on_gpu=False, cpu_units="")
    assert learner.bfloat16_warning(cfg, on_gpu=False, cpu_units="amx_bf16") is None
    assert learner.bfloat16_warning(cfg, on_gpu=True, cpu_units="") is None
    assert learner.bfloat16_warning(load_config(["experiment=smoke"]), on_gpu=False, cpu_units="") is None  # off
    monkeypatch.setattr(config, "cpu_bfloat16_units", lambda: "")
    assert learner.bfloat16_warning(load_config([]), on_gpu=False, cpu_units="") is None  # auto names none there


def test_state_size_estimates_what_a_client_saves(tmp_path, monkeypatch):
    """learner.state_size (the disk-room check before a run) against the bytes a trained client really saves."""
    archs = "model.architectures=[lenet,alexnet,resnet18,shufflenetv2]"
    cfg = load_config(["experiment=smoke", archs, "num_clients=4"], run_dir=str(tmp_path))
    monkeypatch.setenv("FEDKT_CACHE", str(tmp_path / "cache"))
    for pid, arch in enumerate(cfg.architectures):
        client = learner.Learner(cfg, pid)
        client.warm_up(seed=3)  # SGD's momentum buffers exist from the first step on
        saved = len(client.state_bytes())
        assert 0.97 * saved <= learner.state_size(cfg, arch, 10) <= saved, arch
    no_momentum = load_config(["experiment=smoke", archs, "num_clients=4", "client.momentum=0"])
    assert learner.state_size(no_momentum, "resnet18", 10) < 0.6 * learner.state_size(cfg, "resnet18", 10)


def test_min_steps_raises_a_small_shards_epochs_to_the_steps_asked(tmp_path, monkeypatch):
    """client.min_steps: a client whose round epochs take fewer SGD steps trains as many more epochs as it needs,
    exactly as if the server had asked for them; a shard that already takes enough is left alone."""
    monkeypatch.setenv("FEDKT_CACHE", str(tmp_path / "cache"))
    base = ["experiment=smoke", "algorithm=local", "client.batch_size=32"]
    plain = load_config(base, run_dir=str(tmp_path))
    raised = load_config([*base, "client.min_steps=7"], run_dir=str(tmp_path))
    n = learner.Learner(plain, 0).num_train
    per_epoch = learner.steps_per_epoch(n, 32)
    assert per_epoch < 7  # the smoke shard takes fewer steps an epoch than asked
    wanted = -(-7 // per_epoch)
    assert learner.round_epochs(raised, 1, n) == wanted and learner.round_epochs(plain, 1, n) == 1
    assert learner.round_epochs(raised, wanted + 2, n) == wanted + 2  # never fewer than the server asked
    assert learner.round_epochs(raised, 1, 10 * 32) == 1               # 10 steps an epoch: enough already

    def trained(cfg, epochs):
        client = learner.Learner(cfg, 0)
        client.fit_round(1, epochs)
        return client.model.state_dict()

    with_min_steps, asked_outright, one_epoch = trained(raised, 1), trained(plain, wanted), trained(plain, 1)
    for name, tensor in asked_outright.items():
        torch.testing.assert_close(with_min_steps[name], tensor, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(one_epoch[k], v) for k, v in asked_outright.items())


def test_a_client_without_a_validation_image_is_refused_where_its_settings_read_one(tmp_path, monkeypatch):
    """A deployed client (no simulation start to check every shard first) whose shard leaves no validation image
    says so when it is built, with the ways out, rather than failing in the plateau rate after its training; with
    nothing reading validation accuracy it runs."""
    monkeypatch.setenv("FEDKT_CACHE", str(tmp_path / "cache"))
    tiny = ["experiment=smoke", "partition=type1", "data.samples_per_client=20"]  # 10 train, 0 validation images
    for setting in ("client.lr_policy=plateau", "client.distill_guard=val"):
        with pytest.raises(ConfigError, match=f"client 1 has no validation image \\(10 training images\\).*"
                                              f"{setting}.*raise data.samples_per_client"):
            learner.Learner(load_config([*tiny, setting], run_dir=str(tmp_path)), 1)
    client = learner.Learner(load_config([*tiny, "client.lr_policy=constant"], run_dir=str(tmp_path)), 1)
    assert len(client.data.y_val) == 0
    client.fit_round(1, 1)


def test_a_deployed_client_warns_itself_when_it_takes_few_private_steps(tmp_path, monkeypatch, caplog):
    """`flwr run`'s ServerApp holds no shard sizes, so a deployed client says in round 1 that it is under-trained;
    a simulated one leaves it to python -m fedkt.sim's one warning for the whole federation."""
    paper_quick = load_config(["experiment=paper_quick"])
    text = learner.few_steps_warning(paper_quick, 3, 21)  # 21 images, batch 32: one step an epoch, 56 in the run
    assert "client 3 takes 56 private SGD steps" in text and "client.min_steps" in text
    assert learner.few_steps_warning(paper_quick, 3, 480) is None
    assert learner.few_steps_warning(load_config(["experiment=smoke"]), 3, 21) is None  # generated data
    assert learner.few_steps_warning(load_config(["experiment=quick"]), 3, 17) is None  # pre-trained: fine-tuning
    pretrained = load_config(["experiment=paper_quick", "client.warmup_public_epochs=1"])
    assert learner.few_steps_warning(pretrained, 3, 21) is None
    asked = []
    monkeypatch.setattr(client_app, "few_steps_warning", lambda cfg, pid, n: asked.append((pid, n)) or "too few")
    config = {"epochs": 1, "next_seed": 5, "target_seed": -1, "target_partition": -1}
    client = make_client(tmp_path, monkeypatch)
    with caplog.at_level("WARNING", logger="fedkt"):
        client.fit([], {"round": 1, **config})  # simulated: no warning
        deployed = client_app.KnowledgeClient(client.cfg, client.store.context, warn_few_steps=True)
        deployed.fit([], {"round": 2, **config})  # only in round 1
        assert asked == [] and "too few" not in caplog.text
        deployed.fit([], {"round": 1, **config})
    assert asked == [(1, deployed.learner.num_train)] and "too few" in caplog.text


def test_a_client_without_saved_state_after_round_one_says_it_starts_over(tmp_path, monkeypatch, caplog):
    """A client that completed no round (it failed them) or whose saved state is gone starts from its initial model:
    right, but it resets what the client learned, so it is logged, never silent."""
    config = {"epochs": 0, "next_seed": 5, "target_seed": -1, "target_partition": -1}
    client = make_client(tmp_path, monkeypatch)
    with caplog.at_level("WARNING", logger="fedkt"):
        client.fit([], {"round": 1, **config})
        client.fit([], {"round": 2, **config})  # round 1's state is there
        assert "no saved state" not in caplog.text
        for saved in (tmp_path / "clients").rglob("round_*.pt"):
            saved.unlink()
        client.fit([], {"round": 3, **config})
    assert "client 1: no saved state from rounds before 3" in caplog.text and "client.state_store=disk" in caplog.text


@pytest.mark.parametrize("store", ["disk", "context"])
@pytest.mark.parametrize("algorithm", ["ktpfl", "local"])
def test_evaluate_answers_with_the_test_fit_measured_on_the_state_it_saved(tmp_path, monkeypatch, store, algorithm):
    """The evaluate message of the arms that test their own model restores no client: it answers with what fit
    measured on the state it saved, exactly what restoring that state and testing it gives. A state saved
    without a result (an older run's) is restored and tested as before."""
    config = {"epochs": 1, "next_seed": 5, "target_seed": -1, "target_partition": -1}
    client = make_client(tmp_path, monkeypatch, f"algorithm={algorithm}", f"client.state_store={store}")
    context = client.store.context
    built = []

    class CountedLearner(learner.Learner):
        def __init__(self, *args, **kwargs):
            built.append(args[1])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(client_app, "Learner", CountedLearner)
    for rnd in (1, 2):
        client = client_app.KnowledgeClient(client.cfg, context)
        client.fit([], {"round": rnd, **config})
    (_, saved) = client.store.load(2)
    restored = learner.Learner(client.cfg, 1, saved)
    loss, acc = restored.test()
    built.clear()
    answer = client_app.KnowledgeClient(client.cfg, context).evaluate([], {"round": 2})
    assert built == []  # no client restored
    assert answer == (loss, len(restored.data.y_test), {"partition_id": 1, "test_acc": acc,
                                                         "test_majority_share": restored.test_majority_share})
    assert client_app.KnowledgeClient(client.cfg, context).evaluate([], {"round": 3}) == answer  # round 3 not fitted
    older = client_app.KnowledgeClient(client.cfg, context)
    older.store.save(2, saved)  # as a run before results were kept beside the state saved it
    assert older.evaluate([], {"round": 2}) == answer and built == [1]
    if store == "disk":  # a damaged result file is read past: the client is restored and tested
        older.store.save(2, saved, {"loss": 0.0, "acc": 0.0, "samples": 0, "majority_share": 0.0})
        next(older.store.folder.glob("round_0002.json")).write_text("{not json")
        assert older.evaluate([], {"round": 2}) == answer and built == [1, 1]


def test_fedavg_evaluates_the_global_model_it_is_sent_not_what_fit_left(tmp_path, monkeypatch):
    config = {"epochs": 1, "next_seed": 5, "target_seed": -1, "target_partition": -1}
    client = make_client(tmp_path, monkeypatch, "algorithm=fedavg")
    start = learner.model_arrays(learner.Learner(client.cfg, 1).model)
    client.fit(start, {"round": 1, **config})
    assert list((tmp_path / "clients").rglob("*.pt")) and not list((tmp_path / "clients").rglob("*.json"))
    zeros = [np.zeros_like(a) for a in start]
    fresh = client_app.KnowledgeClient(client.cfg, client.store.context)
    fresh.evaluate(zeros, {"round": 1})
    assert fresh.learner is not None and all((a == 0).all() for a in learner.model_arrays(fresh.learner.model))
