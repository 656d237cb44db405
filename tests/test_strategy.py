"""The Flower strategy without Ray: fabricated fit results in, per-client instructions out."""

import numpy as np
import pytest
from flwr.common import Code, EvaluateRes, FitRes, GetPropertiesRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from fedkt.aggregation import kl_round_seconds, local_epochs, make_coefficients
from fedkt.config import load_config
from fedkt.core import soft_predictions
from fedkt.strategy import KnowledgeTransfer

N, M, C = 4, 16, 5


class FakeProxy(ClientProxy):
    """A registered node. The strategy may ask its partition id (get_properties); any other direct
    call fails the test."""

    def __init__(self, cid, partition_id=None):
        super().__init__(cid)
        self.partition_id = partition_id

    def get_properties(self, ins, timeout, group_id):
        return GetPropertiesRes(Status(Code.OK, ""), {"partition_id": self.partition_id})

    def _unused(self, *args, **kwargs):
        raise AssertionError("the strategy must not call clients directly")

    get_parameters = fit = evaluate = reconnect = _unused


def make_cfg(algorithm="ktpfl", **extra):
    overrides = [f"algorithm={algorithm}", f"num_clients={N}", "model.architectures=lenet",
                 f"algorithm.align_size={M}", "data.public_size=100"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_config(overrides)


def make_manager(node_ids, partition_ids=None):
    manager = SimpleClientManager()
    partition_ids = partition_ids or [None] * len(node_ids)
    proxies = {nid: FakeProxy(nid, pid) for nid, pid in zip(node_ids, partition_ids)}
    for proxy in proxies.values():
        manager.register(proxy)
    return manager, proxies


def fit_res(pid, array):
    arrays = [] if array is None else [array]
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), 10, {"partition_id": pid})


def eval_res(pid, acc):
    return EvaluateRes(Status(Code.OK, ""), 1.0 - acc, 10, {"partition_id": pid, "test_acc": acc})


def logits_for(pid, rng):
    """Clients 0,1 agree with each other, as do 2,3; the pairs disagree."""
    base = rng.normal(size=(2, M, C)).astype(np.float32) * 3
    return base[pid // 2] + 0.01 * pid


def run_round(strategy, manager, proxies, uploads, rnd=1):
    """configure_fit, then the clients answer with `uploads` {node_id: (pid, array)} in that order."""
    instructions = strategy.configure_fit(rnd, ndarrays_to_parameters([]), manager)
    results = [(proxies[nid], fit_res(pid, arr)) for nid, (pid, arr) in uploads.items()]
    strategy.aggregate_fit(rnd, results, [])
    evals = [(proxies[nid], eval_res(pid, 0.5)) for nid, (pid, _) in uploads.items()]
    strategy.aggregate_evaluate(rnd, evals, [])
    return instructions


def test_targets_follow_partition_ids_not_arrival_order():
    rng = np.random.default_rng(0)
    node_ids = ["9137", "22", "501", "7"]  # random node ids; pid order differs from arrival order
    pids = {"9137": 2, "22": 0, "501": 3, "7": 1}
    manager, proxies = make_manager(node_ids)
    strategy = KnowledgeTransfer(make_cfg(), num_classes=C)
    base = rng.normal(size=(2, M, C)).astype(np.float32) * 3
    uploads = {nid: (pid, base[pid // 2] + 0.01 * pid) for nid, pid in pids.items()}
    run_round(strategy, manager, proxies, uploads, rnd=1)

    c = strategy.coefficients.c
    assert not np.allclose(c, 1.0 / N)  # c moved
    instructions = strategy.configure_fit(2, ndarrays_to_parameters([]), manager)
    assert len(instructions) == N
    values = np.stack([uploads[nid][1] for nid in sorted(pids, key=pids.get)])
    expected = strategy.coefficients.targets(soft_predictions(values, 1.0), np.ones(N, bool))
    sent = {}
    for proxy, ins in instructions:
        pid = pids[proxy.cid]
        assert ins.config["target_partition"] == pid
        (target,) = parameters_to_ndarrays(ins.parameters)
        np.testing.assert_allclose(target, expected[pid], rtol=1e-5, atol=1e-6)
        sent[pid] = target
    # personalised: the two pairs get different targets
    assert np.abs(sent[0] - sent[2]).max() > 0.05


def test_bad_uploads_are_rejected_counted_and_kept_out_of_c():
    rng = np.random.default_rng(1)
    manager, proxies = make_manager(["a", "b", "c", "d"])
    strategy = KnowledgeTransfer(make_cfg(), num_classes=C)
    good = rng.normal(size=(M, C)).astype(np.float32)
    nan = good.copy()
    nan[3, 2] = np.nan
    uploads = {"a": (0, good), "b": (1, good[:-1]),  # wrong shape
               "c": (2, nan), "d": (3, good * 1.1)}
    run_round(strategy, manager, proxies, uploads)
    record = strategy.history[-1]
    assert record["rejected"] == 2
    c = strategy.coefficients.c
    # clients 1 and 2 were absent from the update: their rows and columns stayed at 1/N
    for pid in (1, 2):
        np.testing.assert_allclose(c[pid], 1.0 / N)
        np.testing.assert_allclose(c[:, pid], 1.0 / N)
    assert set(strategy.targets) == {0, 3}


def test_repeated_partition_id_is_rejected():
    rng = np.random.default_rng(2)
    manager, proxies = make_manager(["a", "b", "c", "d"])
    strategy = KnowledgeTransfer(make_cfg(), num_classes=C)
    arr = lambda: rng.normal(size=(M, C)).astype(np.float32)  # noqa: E731
    run_round(strategy, manager, proxies, {"a": (0, arr()), "b": (0, arr()), "c": (2, arr()), "d": (9, arr())})
    assert strategy.history[-1]["rejected"] == 2
    assert set(strategy.targets) == {0, 2}


def test_evaluation_results_pass_the_same_identity_check_as_uploads(caplog):
    """A node may not overwrite another client's test accuracy: an evaluation result claiming a partition
    id that belongs to another live node, one claimed twice, or one unlike the node's own is ignored."""
    rng = np.random.default_rng(5)
    manager, proxies = make_manager(["a", "b", "c", "d"])
    strategy = KnowledgeTransfer(make_cfg(), num_classes=C)
    arr = lambda: rng.normal(size=(M, C)).astype(np.float32)  # noqa: E731
    run_round(strategy, manager, proxies, {nid: (pid, arr()) for pid, nid in enumerate("abcd")})
    strategy.configure_fit(2, ndarrays_to_parameters([]), manager)
    strategy.aggregate_fit(2, [(proxies[n], fit_res(p, arr())) for p, n in enumerate("abcd")], [])
    evals = [(proxies["a"], eval_res(0, 0.6)), (proxies["b"], eval_res(1, 0.7)),
             (proxies["c"], eval_res(0, 0.0)),    # c is client 2: claims a's id
             (proxies["d"], eval_res(3, 0.8)), (proxies["d"], eval_res(3, 0.1)),  # claimed twice
             (proxies["c"], eval_res(2, 0.9))]
    with caplog.at_level("WARNING", logger="fedkt"):
        strategy.aggregate_evaluate(2, evals, [])
    accs = {row["partition_id"]: row["test_acc"] for row in strategy.client_rows if row["round"] == 2}
    assert accs == {0: 0.6, 1: 0.7, 2: 0.9, 3: 0.8}
    assert sum("evaluation result ignored" in r.getMessage() for r in caplog.records) == 2


def test_fedmd_sends_everyone_the_consensus():
    rng = np.random.default_rng(3)
    manager, proxies = make_manager(["a", "b", "c", "d"])
    strategy = KnowledgeTransfer(make_cfg("fedmd"), num_classes=C)
    uploads = {nid: (pid, rng.normal(size=(M, C)).astype(np.float32)) for pid, nid in enumerate("abcd")}
    run_round(strategy, manager, proxies, uploads)
    mean = soft_predictions(np.stack([u[1] for u in uploads.values()]), 1.0).mean(axis=0)
    for proxy, ins in strategy.configure_fit(2, ndarrays_to_parameters([]), manager):
        (target,) = parameters_to_ndarrays(ins.parameters)
        np.testing.assert_allclose(target, mean, rtol=1e-5, atol=1e-6)
    assert strategy.coefficients is None


def test_local_exchanges_nothing():
    manager, proxies = make_manager(["a", "b", "c", "d"])
    strategy = KnowledgeTransfer(make_cfg("local"), num_classes=C)
    instructions = run_round(strategy, manager, proxies, {nid: (pid, None) for pid, nid in enumerate("abcd")})
    assert all(ins.config["next_seed"] == -1 for _, ins in instructions)
    for _, ins in strategy.configure_fit(2, ndarrays_to_parameters([]), manager):
        assert parameters_to_ndarrays(ins.parameters) == []
        assert ins.config["target_seed"] == -1


def test_round_record_is_unweighted_mean_over_clients():
    manager, proxies = make_manager(["a", "b", "c", "d"])
    seen = []
    strategy = KnowledgeTransfer(make_cfg("local"), num_classes=C, on_round=lambda r, rows, c: seen.append((r, rows)))
    strategy.configure_fit(1, ndarrays_to_parameters([]), manager)
    strategy.aggregate_fit(1, [(proxies[n], fit_res(p, None)) for p, n in enumerate("abcd")], [])
    accs = [0.2, 0.4, 0.6, 1.0]
    evals = [(proxies[n], EvaluateRes(Status(Code.OK, ""), 0.0, 10 ** p, {"partition_id": p, "test_acc": a}))
             for p, (n, a) in enumerate(zip("abcd", accs))]
    strategy.aggregate_evaluate(1, evals, [RuntimeError("client lost")])
    record, rows = seen[-1]
    assert record["mean_test_acc"] == pytest.approx(np.mean(accs))  # not weighted by 1, 10, 100, 1000 samples
    assert record["eval_failures"] == 1
    assert [r["test_acc"] for r in rows] == accs


def test_local_epochs_ramp():
    cfg = make_cfg(**{"client.local_epochs": 1, "client.max_local_epochs": 10, "num_rounds": 10})
    assert [local_epochs(cfg, r) for r in (1, 10)] == [1, 10]
    assert local_epochs(make_cfg(**{"client.local_epochs": 2, "client.max_local_epochs": 0}), 5) == 2  # fixed


def test_large_kl_federation_is_warned_about_its_server_cost(caplog):
    assert kl_round_seconds(1000, 5000, 20) == pytest.approx(44, rel=0.01)  # measured: 44.3 s
    big = load_config(["algorithm=ktpfl", "num_clients=1000", "model.architectures=lenet", "algorithm.align_size=5000"])
    with caplog.at_level("WARNING", logger="fedkt"):
        make_coefficients(make_cfg())
        assert not caplog.records
        make_coefficients(big)
    assert "algorithm.objective=mse" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fedkt"):
        make_coefficients(load_config(["algorithm=ktpfl", "num_clients=1000", "model.architectures=lenet",
                                   "algorithm.align_size=5000", "algorithm.objective=mse"]))
    assert not caplog.records


def test_absent_client_keeps_its_last_target_and_subset():
    from fedkt.core import alignment_seed

    rng = np.random.default_rng(4)
    manager, proxies = make_manager(["a", "b", "c", "d"])
    strategy = KnowledgeTransfer(make_cfg(), num_classes=C)
    arr = lambda: rng.normal(size=(M, C)).astype(np.float32)  # noqa: E731
    run_round(strategy, manager, proxies, {nid: (pid, arr()) for pid, nid in enumerate("abcd")}, rnd=1)
    round1_target = strategy.targets[1][1].copy()
    run_round(strategy, manager, proxies, {"a": (0, arr()), "c": (2, arr()), "d": (3, arr())}, rnd=2)  # b absent
    sent = {proxy.cid: ins for proxy, ins in strategy.configure_fit(3, ndarrays_to_parameters([]), manager)}
    assert sent["b"].config["target_seed"] == alignment_seed(0, 1)  # its round-1 target, on round 1's subset
    np.testing.assert_array_equal(parameters_to_ndarrays(sent["b"].parameters)[0], round1_target)
    assert sent["a"].config["target_seed"] == alignment_seed(0, 2)


def test_checkpoint_round_trip_continues_round_numbers():
    rng = np.random.default_rng(5)
    manager, proxies = make_manager(["a", "b", "c", "d"])
    strategy = KnowledgeTransfer(make_cfg(), num_classes=C)
    run_round(strategy, manager, proxies, {nid: (pid, rng.normal(size=(M, C)).astype(np.float32))
                                           for pid, nid in enumerate("abcd")}, rnd=1)
    restored = KnowledgeTransfer(make_cfg(), num_classes=C)
    restored.load_state_dict(strategy.state_dict())
    np.testing.assert_array_equal(restored.coefficients.c, strategy.coefficients.c)
    manager2, _ = make_manager(["w", "x", "y", "z"], [3, 2, 1, 0])  # new node ids after a restart
    instructions = restored.configure_fit(1, ndarrays_to_parameters([]), manager2)  # asks who they are
    assert {ins.config["round"] for _, ins in instructions} == {2}  # Flower's round 1 is the run's round 2
    for proxy, ins in instructions:
        assert ins.config["target_partition"] == proxy.partition_id
        np.testing.assert_array_equal(parameters_to_ndarrays(ins.parameters)[0],
                                      strategy.targets[proxy.partition_id][1])



class WaitRecordingManager(SimpleClientManager):
    """A SimpleClientManager that records how many nodes the strategy waits for, without blocking
    (the real one waits up to round_timeout for nodes that are not there)."""

    def __init__(self):
        super().__init__()
        self.waited_for = []

    def wait_for(self, num_clients, timeout=86400):
        self.waited_for.append(num_clients)
        return len(self) >= num_clients


def test_a_node_flower_stopped_listing_is_not_waited_for_until_it_is_back(caplog):
    """A deployment loses node d (client 3) after round 1. In round 2 its fit fails with Flower's 'Node
    Unavailable' error and Flower's compat layer unregisters it (the SuperLink lists only nodes with a
    recent heartbeat). Later rounds neither send to it nor wait for it (waiting cost round_timeout a round),
    and say so once; a client that merely raised stays listed and is still sent to and waited for; when
    client 3 comes back under a new node id it gets its target and is waited for again, said once."""
    rng = np.random.default_rng(6)
    manager = WaitRecordingManager()
    proxies = {nid: FakeProxy(nid, pid) for pid, nid in enumerate("abcd")}
    for proxy in proxies.values():
        manager.register(proxy)
    strategy = KnowledgeTransfer(make_cfg(round_timeout=600), num_classes=C)
    empty = ndarrays_to_parameters([])

    def fit(rnd):
        return {proxy.cid: ins for proxy, ins in strategy.configure_fit(rnd, empty, manager)}

    def answer(rnd, nodes, failures=()):
        """The fit results of `nodes`, then every node sent an evaluation answers it."""
        results = [(proxies[n], fit_res(proxies[n].partition_id, rng.normal(size=(M, C)).astype(np.float32)))
                   for n in nodes]
        strategy.aggregate_fit(rnd, results, list(failures))
        evaluate = strategy.configure_evaluate(rnd, empty, manager)
        strategy.aggregate_evaluate(rnd, [(proxy, eval_res(proxy.partition_id, 0.5)) for proxy, _ in evaluate], [])

    unavailable = ValueError("Message contains an Error (reason: Error: Node Unavailable - The destination node "
                             "failed to report a heartbeat within 2 x its expected interval.).")
    with caplog.at_level("INFO", logger="fedkt"):
        assert set(fit(1)) == set("abcd") and manager.waited_for == [N]  # start-up: every client
        answer(1, "abcd")
        assert set(fit(2)) == set("abcd")  # d is still listed when round 2 starts
        manager.unregister(proxies["d"])  # ... then the SuperLink declares it offline
        answer(2, "abc", [unavailable])
        for rnd in (3, 4):  # not sent to, not waited for; b raises in round 3 but stays listed
            assert set(fit(rnd)) == set("abc") and manager.waited_for[-1] == 3
            answer(rnd, "ac", [RuntimeError("client b raised")]) if rnd == 3 else answer(rnd, "abc")
        proxies["e"] = FakeProxy("e", 3)  # client 3 reconnects: a new node id
        manager.register(proxies["e"])
        sent = fit(5)
        assert set(sent) == set("abce") and sent["e"].config["target_partition"] == 3
        answer(5, "abce")
        assert set(fit(6)) == set("abce") and manager.waited_for[-1] == N
    assert [r["eval_clients"] for r in strategy.history] == [4, 3, 3, 3, 4]
    assert [r["fit_failures"] for r in strategy.history] == [0, 1, 1, 0, 0]
    answered = {r: {row["partition_id"] for row in strategy.client_rows if row["round"] == r} for r in (2, 3, 4)}
    assert answered == {2: {0, 1, 2}, 3: {0, 1, 2}, 4: {0, 1, 2}}
    messages = [record.getMessage() for record in caplog.records]
    gone = [m for m in messages if "client 3 (node d)" in m and "nor wait for it" in m]
    back = [m for m in messages if "client 3 is back (node e)" in m]
    assert len(gone) == 1 and len(back) == 1, messages
    assert not any("client 1" in m and "nor wait for it" in m for m in messages), messages
