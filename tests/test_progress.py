"""Feedback inside a round (clients done out of expected, at most every few seconds) and a time-left
estimate that leaves the first round, with its warm-up, out."""

import logging

import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

from fedkt.config import load_config
from fedkt.progress import CountedProxy, RoundProgress
from fedkt.results import RunRecorder
from fedkt.strategy import KnowledgeTransfer
from test_strategy import make_manager


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_clients_done_are_reported_at_most_every_interval_and_at_the_end():
    clock, lines = Clock(), []
    progress = RoundProgress("round 3/20 training", 5, interval=5.0, clock=clock, emit=lines.append)
    for t, ok in ((1, True), (2, False), (6, True), (7, True)):
        clock.now = 100 + t
        progress.finished(ok)
    assert lines == ["round 3/20 training: 3/5 clients done (1 failed), 6 s"]
    clock.now = 108
    progress.finished(True)
    assert lines[-1] == "round 3/20 training: 5/5 clients done (1 failed), 8 s"
    quick, lines = RoundProgress("r", 2, clock=Clock(), emit=lines.append), []
    quick.finished(True)
    quick.finished(True)
    assert lines == []  # a round shorter than the interval says nothing more than its summary line


class Answering:
    cid = "7"

    def fit(self, ins, timeout, group_id):
        return FitRes(Status(Code.OK, ""), ndarrays_to_parameters([]), 1, {})

    def evaluate(self, ins, timeout, group_id):
        raise TimeoutError("gone")


def test_counted_proxy_counts_answers_and_failures():
    lines = []
    progress = RoundProgress("r", 2, interval=0.0, emit=lines.append)
    proxy = CountedProxy(Answering(), progress)
    assert proxy.cid == "7"
    proxy.fit(None, timeout=None, group_id=1)
    with pytest.raises(TimeoutError):
        proxy.evaluate(None, timeout=None, group_id=1)
    assert (progress.done, progress.failed) == (2, 1)
    assert lines[-1].startswith("r: 2/2 clients done (1 failed)")


def test_a_round_says_when_it_starts_and_counts_its_clients(caplog):
    cfg = load_config(["experiment=smoke", "model.architectures=lenet"])
    strategy = KnowledgeTransfer(cfg, num_classes=10)
    manager, proxies = make_manager(["a", "b", "c", "d"])
    with caplog.at_level(logging.INFO, logger="fedkt"):
        instructions = strategy.configure_fit(1, ndarrays_to_parameters([]), manager)
    assert "round 1/2 started: 4 clients training" in caplog.text
    assert all(isinstance(p, CountedProxy) for p, _ in instructions)
    assert sorted(p.cid for p, _ in instructions) == ["a", "b", "c", "d"]
    evaluate = strategy.configure_evaluate(1, ndarrays_to_parameters([]), manager)
    assert all(isinstance(p, CountedProxy) for p, _ in evaluate) and len(evaluate) == 4


def test_time_left_leaves_the_warm_up_round_out(tmp_path):
    cfg = load_config(["experiment=paper_cpu"])  # 20 rounds
    recorder = RunRecorder(tmp_path, cfg)
    record = {"round": 1, "mean_test_acc": 0.5, "min_test_acc": 0.1, "max_test_acc": 0.9, "eval_clients": 20,
              "seconds": 100.0}
    recorder.rounds.append(record)
    assert recorder.progress_line(record).endswith("about 31 min 40 s left (from round 1, with its warm-up)")
    for r in (2, 3):
        recorder.rounds.append({**record, "round": r, "seconds": 10.0})
    assert recorder.progress_line(recorder.rounds[-1]).endswith("| 10.0 s | about 2 min 50 s left")
