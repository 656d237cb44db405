"""algorithm=fedavg: Flower's own FedAvg inside fedkt's records, end to end through `python -m fedkt.sim` on
the smoke preset (one architecture), and refused before Ray for mixed architectures."""

import json

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr.server.strategy import FedAvg

from fedkt.config import ConfigError, build_config, compose, load_config
from fedkt.fedavg import FederatedAveraging, make_strategy
from fedkt.report import write_report
from fedkt.strategy import KnowledgeTransfer
from test_sim import run_cli
from test_strategy import FakeProxy, eval_res


def test_fedavg_is_flowers_fedavg_weighted_by_samples_and_recorded_per_client():
    cfg = load_config(["algorithm=fedavg", "experiment=smoke"])
    strategy = make_strategy(cfg, num_classes=10)
    assert isinstance(strategy, FederatedAveraging) and isinstance(strategy.fedavg, FedAvg)
    assert isinstance(make_strategy(load_config(["experiment=smoke"]), num_classes=10), KnowledgeTransfer)
    initial = parameters_to_ndarrays(strategy.initialize_parameters(None))
    assert [a.shape for a in initial] == [a.shape for a in strategy.global_arrays]
    manager = SimpleClientManager()
    proxies = [FakeProxy(f"n{i}") for i in range(4)]
    for proxy in proxies:
        manager.register(proxy)
    instructions = strategy.configure_fit(1, None, manager)
    assert len(instructions) == 4 and all(ins.config["next_seed"] == -1 for _, ins in instructions)
    sent = parameters_to_ndarrays(instructions[0][1].parameters)
    assert all(np.array_equal(a, b) for a, b in zip(sent, initial))  # everyone starts from the global model
    # clients 0..3 send their model state filled with pid, from 1, 1, 2, 4 training samples
    samples = [1, 1, 2, 4]
    results = [(proxies[p], FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.full_like(a, p) for a in initial]),
                                   samples[p], {"partition_id": p, "train_acc": 0.5})) for p in range(4)]
    bad = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([initial[0]]), 5, {"partition_id": 3})
    strategy.aggregate_fit(1, results[:3] + [(proxies[3], bad)], [])  # a wrong-shaped upload is rejected
    expected = (0 * 1 + 1 * 1 + 2 * 2) / 4
    np.testing.assert_allclose(strategy.global_arrays[0], expected, rtol=1e-6)
    assert strategy._round["rejected"] == 1 and strategy._round["fit_clients"] == 3
    evaluate = strategy.configure_evaluate(1, None, manager)
    assert all(np.allclose(parameters_to_ndarrays(ins.parameters)[0], expected) for _, ins in evaluate)
    strategy.aggregate_evaluate(1, [(proxies[p], eval_res(p, 0.25 * p)) for p in range(4)], [])
    record = strategy.history[-1]
    assert record["mean_test_acc"] == pytest.approx(0.375) and record["bytes_down"] > 0
    state = strategy.state_dict()
    again = make_strategy(cfg, num_classes=10)
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.global_arrays[0], strategy.global_arrays[0])


def test_fedavg_refuses_clients_of_several_architectures():
    with pytest.raises(ConfigError, match="algorithm.name=fedavg.*2 architectures.*model.architectures=lenet"):
        build_config(compose(["algorithm=fedavg", "experiment=smoke", "model.architectures=[lenet,alexnet]"]))
    build_config(compose(["algorithm=fedavg", "experiment=smoke"]))


def test_fedavg_smoke_run_writes_the_records_figures_and_report(tmp_path):
    refused = run_cli(tmp_path, "experiment=smoke", "algorithm=fedavg", "model.architectures=[lenet,alexnet]",
                      timeout=120)
    assert refused.returncode == 2 and "algorithm.name=fedavg" in refused.stderr + refused.stdout
    proc = run_cli(tmp_path, "experiment=smoke", "algorithm=fedavg")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["algorithm"] == "fedavg"
    assert summary["rounds_completed"] == 2 and set(summary["final_client_test_acc"]) == {"0", "1", "2", "3"}
    assert 0.0 <= summary["final_mean_test_acc"] <= 1.0
    rows = json.loads((run / "metrics.json").read_text())
    assert all(r["fit_clients"] == 4 and r["eval_clients"] == 4 and r["rejected"] == 0 for r in rows)
    model_bytes = rows[0]["bytes_down"] / 4
    assert model_bytes > 100_000 and rows[0]["bytes_up"] == pytest.approx(4 * model_bytes)  # whole LeNets
    assert len((run / "clients.csv").read_text().splitlines()) == 1 + 2 * 4
    for figure in ("accuracy.png", "clients.png", "bytes.png"):
        assert (run / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run / "coefficients.npy").exists()
    report = write_report([run], tmp_path / "report")
    assert "fedavg" in (tmp_path / "report" / "report.md").read_text() and len(report.runs) == 1
