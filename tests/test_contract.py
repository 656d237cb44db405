"""The client-server contract, in process and without Ray: a real KnowledgeTransfer strategy and real
KnowledgeClients on tiny data, driven round by round the way Flower drives them (a new client object per
message), with spies on what each client predicts on, distils on, trains on and evaluates on.

Each test names the plausible bug it exists to catch:
- the alignment subset drifting between server and client (another round's subset, shifted, reordered);
- the temperature lost on the wire (the server softening with T = 1);
- a client using the wrong split (evaluating on validation, training on test);
- state not carried between rounds (fresh weights, optimizer or lr policy; the warm-up repeated).
"""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import RecordDict
from flwr.common import Code, Context, EvaluateRes, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from test_strategy import FakeProxy

import fedkt.client_app as client_app
import fedkt.learner as learner
from fedkt.config import load_config
from fedkt.data import normalize
from fedkt.strategy import KnowledgeTransfer
from fedkt.task import load_federation, normalization_stats, public_data

N = 4


class Federation:
    """The strategy and N clients; `fit_round(r)` runs one round (fit, aggregate, evaluate) by hand.

    While a client works, `self.current` names it, so the spies can file what they see under its
    partition id: seen[(kind, round, pid)] is a list of what the spied function received."""

    def __init__(self, tmp_path, monkeypatch, *overrides):
        monkeypatch.setenv("FEDKT_CACHE", str(tmp_path / "cache"))
        self.cfg = load_config(["experiment=smoke", f"num_clients={N}", "data.public_size=200",
                                 "algorithm.align_size=48", *overrides], run_dir=str(tmp_path))
        self.strategy = KnowledgeTransfer(self.cfg, num_classes=10)
        self.manager = SimpleClientManager()
        self.proxies = {f"node-{pid * 37 + 11}": FakeProxy(f"node-{pid * 37 + 11}", pid) for pid in range(N)}
        for proxy in self.proxies.values():
            self.manager.register(proxy)
        self.contexts = {pid: Context(run_id=1, node_id=pid * 37 + 11, node_config={"partition-id": pid},
                                      state=RecordDict(), run_config={}) for pid in range(N)}
        self.seen: dict[tuple, list] = {}
        self.current = None  # (round, pid, client) while a client works
        self.uploads: dict[int, dict[int, np.ndarray]] = {}  # round -> pid -> what the client sent

    def spy(self, monkeypatch, kind, name):
        """Replace fedkt.learner.<name> by a wrapper that records (args, kwargs, client) before calling it."""
        real = getattr(learner, name)

        def wrapper(*args, **kwargs):
            rnd, pid, client = self.current
            self.seen.setdefault((kind, rnd, pid), []).append((args, kwargs, client))
            return real(*args, **kwargs)

        monkeypatch.setattr(learner, name, wrapper)

    def client(self, pid):
        return client_app.KnowledgeClient(self.cfg, self.contexts[pid])

    def fit_round(self, rnd):
        instructions = self.strategy.configure_fit(rnd, ndarrays_to_parameters([]), self.manager)
        results = []
        for proxy, ins in instructions:
            pid = proxy.partition_id
            client = self.client(pid)
            self.current = (rnd, pid, client)
            arrays, n, metrics = client.fit(parameters_to_ndarrays(ins.parameters), ins.config)
            self.uploads.setdefault(rnd, {})[pid] = arrays[0] if arrays else None
            results.append((proxy, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, metrics)))
        self.strategy.aggregate_fit(rnd, results, [])
        evals = []
        for proxy, ins in self.strategy.configure_evaluate(rnd, ndarrays_to_parameters([]), self.manager):
            pid = proxy.partition_id
            client = self.client(pid)
            self.current = (rnd, pid, client)
            loss, n, metrics = client.evaluate([], ins.config)
            evals.append((proxy, EvaluateRes(Status(Code.OK, ""), loss, n, metrics)))
        self.strategy.aggregate_evaluate(rnd, evals, [])
        self.current = None


def softmax(z, temperature):
    z = np.asarray(z, dtype=np.float64) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def rows_of(tensor):
    return [bytes(row.numpy().tobytes()) for row in tensor]


# -- 1 and 2: the alignment subset and the temperature ------------------------------------------------

@pytest.mark.parametrize("algorithm", ["ktpfl", "fedmd"])
def test_a_client_distils_on_exactly_the_images_its_target_was_built_on_at_the_configured_temperature(
        tmp_path, monkeypatch, algorithm):
    temperature = 3.0
    fed = Federation(tmp_path, monkeypatch, f"algorithm={algorithm}", f"algorithm.temperature={temperature}",
                     "num_rounds=3")
    fed.spy(monkeypatch, "predict", "predict_logits")
    fed.spy(monkeypatch, "distill", "distill")
    x_public, _ = public_data(fed.cfg)
    c_after = {}
    for rnd in (1, 2, 3):
        fed.fit_round(rnd)
        if algorithm == "ktpfl":
            c_after[rnd] = np.array(fed.strategy.coefficients.c)

    for rnd in (1, 2, 3):  # all clients predict on the same subset of the public set, new each round
        subsets = [fed.seen[("predict", rnd, pid)][0][0][1] for pid in range(N)]
        assert all(torch.equal(s, subsets[0]) for s in subsets) and len(subsets[0]) == 48
        assert set(rows_of(subsets[0])) <= set(rows_of(x_public))
    predicted = {rnd: fed.seen[("predict", rnd, 0)][0][0][1] for rnd in (1, 2, 3)}
    assert not torch.equal(predicted[1], predicted[2]) and not torch.equal(predicted[2], predicted[3])

    for rnd in (2, 3):
        z = np.stack([fed.uploads[rnd - 1][pid] for pid in range(N)])  # what the clients sent in round r-1
        probs = softmax(z, temperature)
        for pid in range(N):
            ((args, kwargs, _),) = fed.seen[("distill", rnd, pid)]
            _, x_distilled, target = args[:3]
            assert torch.equal(x_distilled, predicted[rnd - 1])  # the same images, in the same order
            if algorithm == "ktpfl":  # target_i = sum_j c_ij softmax(z_j / T), c as updated in round r-1
                expected = np.einsum("j,jmk->mk", c_after[rnd - 1][pid], probs)
            else:  # FedMD: one consensus, the mean of the softened predictions
                expected = probs.mean(axis=0)
            np.testing.assert_allclose(target.numpy(), expected, rtol=1e-5, atol=1e-6)
            assert kwargs["temperature"] == temperature  # the client softens its student the same way


# -- 3: the client's splits ----------------------------------------------------------------------------

def test_private_training_sees_only_the_train_split_validation_steers_and_evaluation_sees_the_test_split(
        tmp_path, monkeypatch):
    fed = Federation(tmp_path, monkeypatch, "algorithm=ktpfl", "client.lr_policy=plateau", "num_rounds=2")
    fed.spy(monkeypatch, "train", "train_epochs")
    fed.spy(monkeypatch, "evaluate", "evaluate_model")
    fed.fit_round(1)
    fed.fit_round(2)
    data, partition = load_federation(fed.cfg)
    mean, std = normalization_stats(fed.cfg)  # computed here from the partition, not from the client

    def split(pid, name):
        idx = torch.as_tensor(getattr(partition.clients[pid], name))
        return normalize(data.x_train[idx], mean, std), data.y_train[idx]

    for pid in range(N):
        x_train, y_train = split(pid, "train")
        x_val, y_val = split(pid, "val")
        x_test, y_test = split(pid, "test")
        for rnd, trainings in ((1, 2), (2, 1)):  # round 1: warm-up and private epochs; round 2: private only
            calls = fed.seen[("train", rnd, pid)]
            assert len(calls) == trainings
            for args, _, _ in calls:
                assert torch.equal(args[1], x_train) and torch.equal(args[2], y_train)
            fit_eval, test_eval = fed.seen[("evaluate", rnd, pid)]  # fit: validation (for the lr), then test
            assert torch.equal(fit_eval[0][1], x_val) and torch.equal(fit_eval[0][2], y_val)
            assert torch.equal(test_eval[0][1], x_test) and torch.equal(test_eval[0][2], y_test)
        row = next(r for r in fed.strategy.client_rows if r["round"] == 2 and r["partition_id"] == pid)
        assert row["test_samples"] == len(y_test)


# -- 4: state between rounds ---------------------------------------------------------------------------

def snapshot(client):
    return {"model": copy.deepcopy(client.learner.model.state_dict()),
            "optimizer": copy.deepcopy(client.learner.optimizer.state_dict()),
            "policy": dict(client.learner.policy.state_dict())}


def assert_same_state(now, before):
    for name, tensor in before["model"].items():
        assert torch.equal(now["model"][name], tensor), name
    assert now["optimizer"]["param_groups"] == before["optimizer"]["param_groups"]
    assert before["optimizer"]["state"]  # SGD with momentum keeps buffers: something to compare
    for key, slot in before["optimizer"]["state"].items():
        for name, value in slot.items():
            assert torch.equal(now["optimizer"]["state"][key][name], value), (key, name)
    assert now["policy"] == before["policy"]


@pytest.mark.parametrize("store", ["disk", "context"])
@pytest.mark.parametrize("algorithm", ["ktpfl", "local"])
def test_each_fit_starts_where_the_last_one_ended_and_warms_up_once(tmp_path, monkeypatch, store, algorithm):
    fed = Federation(tmp_path, monkeypatch, f"algorithm={algorithm}", f"client.state_store={store}",
                     "client.lr_policy=cosine", "num_rounds=3")
    fed.spy(monkeypatch, "train", "train_epochs")
    ended, started = {}, {}
    real_state_bytes = learner.Learner.state_bytes

    def save_spy(self):  # the state a round ends with, as it is handed to the store
        rnd, pid, client = fed.current
        ended[(rnd, pid)] = snapshot(client)
        return real_state_bytes(self)

    def first_step_spy(name):  # the state the first step of a round sees
        real = getattr(learner, name)

        def spy(*args, **kwargs):
            rnd, pid, client = fed.current
            started.setdefault((rnd, pid), snapshot(client))
            return real(*args, **kwargs)

        monkeypatch.setattr(learner, name, spy)

    monkeypatch.setattr(learner.Learner, "state_bytes", save_spy)
    first_step_spy("distill")
    first_step_spy("train_epochs")
    for rnd in (1, 2, 3):
        fed.fit_round(rnd)
    for pid in range(N):
        assert len(fed.seen[("train", 1, pid)]) == 2  # warm-up, then the round's private epochs
        for rnd in (2, 3):
            assert len(fed.seen[("train", rnd, pid)]) == 1  # no second warm-up
            assert_same_state(started[(rnd, pid)], ended[(rnd - 1, pid)])
            assert started[(rnd, pid)]["policy"]["steps"] == rnd - 1
        assert ended[(1, pid)]["policy"]["lr"] < fed.cfg.client.lr  # the cosine policy moved the lr


# -- the distillation rate follows the adaptive policy ------------------------------------------------

@pytest.mark.parametrize("policy", ["follow", "fixed"])
def test_the_distillation_rate_follows_the_learning_rate_policy_unless_fixed(tmp_path, monkeypatch, policy):
    fed = Federation(tmp_path, monkeypatch, "algorithm=ktpfl", "client.lr_policy=cosine", "num_rounds=3",
                     "algorithm.distill_lr=0.04", f"algorithm.distill_lr_policy={policy}")
    rates = {}  # (round, pid) -> (distillation rate, private rate) as the distillation starts
    real_distill = learner.distill

    def distill_spy(model, x, targets, optimizer, *args, **kwargs):
        rnd, pid, client = fed.current
        rates[(rnd, pid)] = (optimizer.param_groups[0]["lr"], client.learner.optimizer.param_groups[0]["lr"])
        return real_distill(model, x, targets, optimizer, *args, **kwargs)

    monkeypatch.setattr(learner, "distill", distill_spy)
    for rnd in (1, 2, 3):
        fed.fit_round(rnd)
    for rnd in (2, 3):
        for pid in range(N):
            distill_lr, private_lr = rates[(rnd, pid)]
            assert private_lr < 0.02  # the cosine policy has lowered the private rate
            expected = 0.04 * private_lr / 0.02 if policy == "follow" else 0.04
            assert distill_lr == pytest.approx(expected, rel=1e-9)
            row = next(r for r in fed.strategy.client_rows if r["round"] == rnd and r["partition_id"] == pid)
            assert row["fit_distill_lr"] == pytest.approx(expected, rel=1e-9)


def test_every_planted_bug_of_the_audit_still_applies_to_the_code():
    """scripts/plant_contract_bugs.py plants the bugs these tests exist to catch; each plant's text must still
    stand exactly once in the code, or the check it stands for silently stops planting anything."""
    import runpy

    plants = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "plant_contract_bugs.py"))["PLANTS"]
    assert len(plants) == 11
    for name, path, old, new in plants:
        text = (Path(__file__).resolve().parents[1] / path).read_text()
        assert text.count(old) == 1 and old != new, name
