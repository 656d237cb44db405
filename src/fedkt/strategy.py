"""The server side's Flower adapter: a Strategy that moves the clients' predictions and targets.

Each round r every client distils towards the target it was sent (computed on round r-1's alignment
subset), trains on its shard and uploads its predictions on round r's alignment subset. The strategy
maps uploads to partition ids (node ids are random), checks who sent them, and hands the accepted ones
to the algorithm's server side (fedkt.aggregation.KnowledgeServer: KT-pFL's c, FedMD's consensus, or
nothing for `local`); it records what happened and keeps the rounds going when clients fail or leave.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

import numpy as np
from flwr.common import (EvaluateIns, EvaluateRes, FitIns, FitRes, GetPropertiesIns, Parameters,
                         ndarrays_to_parameters, parameters_to_ndarrays)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fedkt.aggregation import KnowledgeServer, local_epochs
from fedkt.config import RunConfig
from fedkt.progress import RoundProgress

log = logging.getLogger("fedkt")


class FederationError(RuntimeError):
    """A round that cannot go on (too few valid client updates)."""


class KnowledgeTransfer(Strategy):
    """KT-pFL (`ktpfl`), FedMD (`fedmd`) or no collaboration (`local`) over all clients every round.

    `on_round(record, clients, c)` is called once per round after evaluation with the round's summary,
    one row per client, and c (KT-pFL) or None.
    """

    def __init__(self, cfg: RunConfig, num_classes: int, on_round: Callable | None = None):
        self.cfg = cfg
        self.algorithm = cfg.algorithm.name
        self.num_clients = cfg.num_clients
        self.num_rounds = cfg.num_rounds
        self.architectures = cfg.architectures
        self.server = KnowledgeServer(cfg, num_classes)  # the algorithm's side: c, targets, upload checks
        self.on_round = on_round
        self.min_fit_clients = math.ceil(cfg.min_fit_fraction * self.num_clients)
        self.node_to_partition: dict[str, int] = {}
        self.round_offset = 0  # rounds done before a resume: Flower counts from 1 again
        self._live: set[str] = set()
        self._gone: dict[int, str] = {}  # partition id -> its node, which Flower stopped listing
        self.history: list[dict] = []  # one summary per round
        self.client_rows: list[dict] = []  # one row per client per round
        self._round: dict = {}
        self._clients: dict[int, dict] = {}

    @property
    def coefficients(self):
        """KT-pFL's coefficient matrix (fedkt.core.KnowledgeCoefficients), None for the other algorithms."""
        return self.server.coefficients

    @property
    def targets(self) -> dict:
        """Partition id -> (the round whose alignment subset it was computed on, the target)."""
        return self.server.targets

    # -- Flower hooks ------------------------------------------------------------------------------

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters([])  # no global model: clients own different architectures

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        server_round += self.round_offset
        self._round = {"round": server_round, "start": time.time(), "bytes_down": 0}
        self._clients = {}
        self._listed(server_round, client_manager)  # a client known to be gone is not waited for
        client_manager.wait_for(self.num_clients - len(self._gone), timeout=self.cfg.round_timeout or 60)
        proxies = self._listed(server_round, client_manager)
        if self.targets:
            self._identify(proxies)
            self._listed(server_round, client_manager, proxies)  # a gone client back under a new node id
        base = {
            "round": server_round,
            "epochs": local_epochs(self.cfg, server_round),
            "next_seed": self.server.next_seed(server_round),
            "target_seed": -1,
            "target_partition": -1,
        }
        wire = np.float16 if self.cfg.algorithm.wire_dtype == "float16" else np.float32
        instructions = []
        for proxy in proxies:
            config, arrays = dict(base), []
            pid = self.node_to_partition.get(proxy.cid)
            sent = None if pid is None else self.server.target_for(pid)
            if sent is not None:
                config["target_seed"], target = sent
                config["target_partition"] = pid
                arrays = [target.astype(wire)]
                self._round["bytes_down"] += arrays[0].nbytes
            instructions.append((proxy, FitIns(ndarrays_to_parameters(arrays), config)))
        log.info("round %d/%d started: %d clients training", server_round, self.num_rounds, len(instructions))
        return RoundProgress(f"round {server_round}/{self.num_rounds} training", len(instructions)).track(instructions)

    def _listed(self, server_round: int, client_manager: ClientManager,
                proxies: list[ClientProxy] | None = None) -> list[ClientProxy]:
        """The nodes Flower lists now; notes, once each, a known client whose node it stopped listing (gone:
        the SuperLink lists only nodes with a recent heartbeat, and a message to one it has declared
        offline fails as 'Node Unavailable') and a gone client whose node is listed again (back)."""
        proxies = list(client_manager.all().values()) if proxies is None else proxies
        self._live = {proxy.cid for proxy in proxies}
        for node, pid in self.node_to_partition.items():
            if node in self._live and pid in self._gone:
                del self._gone[pid]
                log.info("round %d: client %d is back (node %s)", server_round, pid, node)
            elif node not in self._live and pid not in self._gone:
                self._gone[pid] = node
                log.warning("round %d: client %d (node %s) is no longer connected (no heartbeat): later rounds "
                            "neither send to it nor wait for it until it connects again", server_round, pid, node)
        return proxies

    def _identify(self, proxies: list[ClientProxy]) -> None:
        """Ask nodes not yet seen (a resumed run, a node that joined late) for their partition id."""
        for proxy in proxies:
            if proxy.cid in self.node_to_partition:
                continue
            try:
                # as long as a round may wait: a fresh ClientApp's first message (imports, data) can take over a
                # minute on a loaded machine, and a node that does not answer gets no target this round
                res = proxy.get_properties(GetPropertiesIns({}), timeout=self.cfg.round_timeout or 600,
                                           group_id=self._round["round"])
                pid = res.properties.get("partition_id")
            except Exception as error:  # an unreachable node simply gets no target this round
                log.warning("could not ask node %s for its partition id: %s", proxy.cid, _short(error))
                continue
            if isinstance(pid, int) and 0 <= pid < self.num_clients and self._owner(pid) in (None, proxy.cid):
                self.node_to_partition = {n: p for n, p in self.node_to_partition.items() if p != pid}
                self.node_to_partition[proxy.cid] = pid

    def _owner(self, pid: int) -> str | None:
        """The live node known to hold partition `pid` (a node that left gives its id up)."""
        return next((n for n, p in self.node_to_partition.items() if p == pid and n in self._live), None)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures):
        server_round += self.round_offset
        uploads, rejected, bytes_up = {}, [], 0
        for proxy, res in results:
            metrics = dict(res.metrics)
            pid = metrics.get("partition_id")
            reason = self._check_identity(proxy.cid, pid, claimed=self._clients)
            arrays = parameters_to_ndarrays(res.parameters)
            bytes_up += sum(a.nbytes for a in arrays)
            if reason is None and self.algorithm != "local":
                reason = self._check_upload(arrays)
            if reason:
                rejected.append((pid, reason))
                continue
            if self.algorithm != "local":
                uploads[pid] = arrays[0].astype(np.float32)
            self.node_to_partition = {n: p for n, p in self.node_to_partition.items() if p != pid}
            self.node_to_partition[proxy.cid] = pid
            self._clients[pid] = {f"fit_{k}": v for k, v in metrics.items() if k not in ("partition_id", "architecture")}
        for pid, reason in rejected:
            log.warning("round %d: rejected an upload claiming partition id %s: %s", server_round, pid, reason)
        for failure in failures:
            log.warning("round %d: a client failed in fit: %s", server_round, _short(failure))
        self._round.update(fit_failures=len(failures), rejected=len(rejected), bytes_up=bytes_up,
                           fit_clients=len(self._clients))
        if len(self._clients) < self.min_fit_clients:
            raise FederationError(
                f"round {server_round}: only {len(self._clients)} of {self.num_clients} clients answered with a "
                f"valid update ({len(failures)} failed, {len(rejected)} rejected); min_fit_fraction="
                f"{self.cfg.min_fit_fraction} needs {self.min_fit_clients}. The last complete round's "
                f"results and checkpoint are kept in the run directory.")
        if uploads:
            start = time.perf_counter()
            facts = self._update_targets(server_round, uploads)
            self._round.update(server_seconds=time.perf_counter() - start, **facts)
        return None, {"fit_failures": len(failures), "rejected": len(rejected)}

    def _check_identity(self, node: str, pid, claimed) -> str | None:
        """A partition id must be valid, claimed once per round (`claimed`: the ids already taken in this
        phase), and the one this node had before."""
        if not isinstance(pid, int) or not 0 <= pid < self.num_clients:
            return f"invalid partition id {pid!r} from node {node}"
        if pid in claimed:
            return f"partition id {pid} claimed twice in one round (again by node {node})"
        known = self.node_to_partition.get(node)
        if known is not None and known != pid:
            return f"node {node} is client {known} but claimed partition id {pid}"
        owner = self._owner(pid)
        if owner is not None and owner != node:
            return f"partition id {pid} belongs to node {owner}, not to node {node}"
        return None

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        server_round += self.round_offset
        ins = EvaluateIns(ndarrays_to_parameters([]), {"round": server_round})
        instructions = [(proxy, ins) for proxy in self._listed(server_round, client_manager)]
        return RoundProgress(f"round {server_round}/{self.num_rounds} evaluation", len(instructions)).track(instructions)

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]], failures):
        server_round += self.round_offset
        evaluated: set[int] = set()
        for proxy, res in results:
            pid = res.metrics.get("partition_id")
            reason = self._check_identity(proxy.cid, pid, claimed=evaluated)
            if reason:
                log.warning("round %d: evaluation result ignored: %s", server_round, reason)
                continue
            evaluated.add(pid)
            row = self._clients.setdefault(pid, {})
            row.update(test_loss=float(res.loss), test_acc=float(res.metrics["test_acc"]),
                       test_samples=int(res.num_examples))
            if "test_majority_share" in res.metrics:  # clients of fedkt before 2026-12-02 do not send it
                row["test_majority_share"] = float(res.metrics["test_majority_share"])
        for failure in failures:
            log.warning("round %d: a client failed in evaluate: %s", server_round, _short(failure))
        record = self._finish_round(server_round, eval_failures=len(failures))
        return record["mean_test_loss"], {"mean_test_acc": record["mean_test_acc"]}

    def evaluate(self, server_round: int, parameters: Parameters):
        return None  # no global model to evaluate centrally

    # -- the algorithm (fedkt.aggregation; FedAvg overrides these two) -----------------------------

    def _check_upload(self, arrays: list[np.ndarray]) -> str | None:
        return self.server.check_upload(arrays)

    def _update_targets(self, server_round: int, uploads: dict[int, np.ndarray]) -> dict:
        """The server's step; returns facts for the round's record (fedkt.aggregation.KnowledgeServer.update)."""
        return self.server.update(server_round, uploads)

    # -- checkpoints -------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """All the server needs to go on after the last complete round (node ids are not kept: they
        change when a run restarts, and nodes are asked for their partition id again)."""
        return {
            "round": self.history[-1]["round"] if self.history else 0,
            **self.server.state_dict(),
            "history": list(self.history),
            "client_rows": list(self.client_rows),
        }

    def load_state_dict(self, state: dict) -> None:
        self.round_offset = int(state["round"])
        self.server.load_state_dict(state)
        self.history = list(state["history"])
        self.client_rows = list(state["client_rows"])

    # -- records -----------------------------------------------------------------------------------

    def _finish_round(self, server_round: int, eval_failures: int) -> dict:
        rows = []
        for pid in sorted(self._clients):
            row = {"round": server_round, "partition_id": pid, "architecture": self.architectures[pid]}
            row.update(self._clients[pid])
            rows.append(row)
        accs = np.array([r["test_acc"] for r in rows if "test_acc" in r], dtype=float)
        losses = np.array([r["test_loss"] for r in rows if "test_loss" in r], dtype=float)
        val_accs = np.array([r["fit_val_acc"] for r in rows if "fit_val_acc" in r], dtype=float)
        record = {k: v for k, v in self._round.items() if k != "start"}
        record.update(
            round=server_round,
            mean_test_acc=float(accs.mean()) if accs.size else float("nan"),
            std_test_acc=float(accs.std()) if accs.size else float("nan"),
            min_test_acc=float(accs.min()) if accs.size else float("nan"),
            max_test_acc=float(accs.max()) if accs.size else float("nan"),
            mean_test_loss=float(losses.mean()) if losses.size else float("nan"),
            mean_val_acc=float(val_accs.mean()) if val_accs.size else float("nan"),
            eval_clients=int(accs.size), eval_failures=eval_failures,
            seconds=time.time() - self._round.get("start", time.time()))
        self.history.append(record)
        self.client_rows.extend(rows)
        c = None if self.coefficients is None else np.array(self.coefficients.c, copy=True)
        if self.on_round is not None:
            self.on_round(record, rows, c)
        return record


def _short(failure) -> str:
    """One line from a failure (Flower wraps client exceptions with their whole remote traceback)."""
    if isinstance(failure, BaseException):
        text = str(failure)
        for marker in ("Message: ", "Exception "):
            if marker in text:
                text = text.rsplit(marker, 1)[-1]
        return text.strip().splitlines()[0][:300] if text.strip() else repr(failure)
    return f"result with status {getattr(failure, 'status', failure)}"
