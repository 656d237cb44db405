"""FedAvg (`algorithm=fedavg`): the reference arm a knowledge-transfer paper is read against, plain
parameter averaging by Flower's own `FedAvg` strategy.

`FederatedAveraging` keeps everything KnowledgeTransfer does for the records (partition ids, identity
checks, failures, min_fit_fraction, one row per client per round, checkpoints) and hands the averaging to a
wrapped `flwr.server.strategy.FedAvg` (weighted by each client's number of training samples). The clients
must share one architecture (fedkt.config.build_config says so before Ray starts); each round every client
starts from the global model, trains on its shard and sends its whole model state back; evaluation sends
the new global model to every client, which tests it on its own test split (the paper's metric, as for the
other arms). The server holds no data: it builds the initial model for 3-channel images (CIFAR-10, the
generated data, RGB image folders).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.common import EvaluateIns, FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvg

from fedkt.config import RunConfig
from fedkt.models import build_model, model_arrays
from fedkt.strategy import KnowledgeTransfer


class FederatedAveraging(KnowledgeTransfer):
    def __init__(self, cfg: RunConfig, num_classes: int, on_round=None):
        super().__init__(cfg, num_classes=num_classes, on_round=on_round)
        torch.manual_seed(cfg.seed)
        model = build_model(self.architectures[0], num_classes=num_classes, in_channels=3,
                            norm=cfg.model.norm, stem=cfg.model.stem)
        self.global_arrays = model_arrays(model)
        # every client every round; how many must answer is min_fit_fraction's business (KnowledgeTransfer)
        self.fedavg = FedAvg(fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=1, min_evaluate_clients=1,
                             min_available_clients=1, initial_parameters=ndarrays_to_parameters(self.global_arrays))
        self._fit_results: dict = {}

    def initialize_parameters(self, client_manager):
        return self.fedavg.initialize_parameters(client_manager)

    def configure_fit(self, server_round, parameters, client_manager):
        instructions = super().configure_fit(server_round, parameters, client_manager)
        params = ndarrays_to_parameters(self.global_arrays)
        self._round["bytes_down"] = sum(a.nbytes for a in self.global_arrays) * len(instructions)
        return [(proxy, FitIns(params, {**ins.config, "next_seed": -1})) for proxy, ins in instructions]

    def aggregate_fit(self, server_round, results, failures):
        self._fit_results = {proxy.cid: (proxy, res) for proxy, res in results}
        return super().aggregate_fit(server_round, results, failures)

    def _check_upload(self, arrays: list[np.ndarray]) -> str | None:
        if len(arrays) != len(self.global_arrays):
            return f"expected {len(self.global_arrays)} arrays (the model's state), got {len(arrays)}"
        for got, want in zip(arrays, self.global_arrays):
            if got.shape != want.shape:
                return f"an array of shape {got.shape} where the model has {want.shape}"
            if got.dtype.kind == "f" and not np.isfinite(got).all():
                return "non-finite parameters"
        return None

    def _update_targets(self, server_round: int, uploads: dict) -> dict:
        """The accepted uploads (partition id -> node, as just recorded) averaged by Flower's FedAvg."""
        nodes = {pid: node for node, pid in self.node_to_partition.items()}
        accepted = [self._fit_results[nodes[pid]] for pid in sorted(uploads)]  # a sum in a fixed order: same seed, same figures
        parameters, _ = self.fedavg.aggregate_fit(server_round, accepted, [])
        self.global_arrays = [np.asarray(a).astype(w.dtype) for a, w in
                              zip(parameters_to_ndarrays(parameters), self.global_arrays)]
        return {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        params = ndarrays_to_parameters(self.global_arrays)
        return [(proxy, EvaluateIns(params, ins.config))
                for proxy, ins in super().configure_evaluate(server_round, parameters, client_manager)]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "global_arrays": [a.copy() for a in self.global_arrays]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.global_arrays = [np.asarray(a) for a in state["global_arrays"]]


def make_strategy(cfg: RunConfig, num_classes: int, on_round=None) -> KnowledgeTransfer:
    """The server strategy of cfg's algorithm."""
    if cfg.algorithm.name == "fedavg":
        return FederatedAveraging(cfg, num_classes=num_classes, on_round=on_round)
    return KnowledgeTransfer(cfg, num_classes=num_classes, on_round=on_round)
