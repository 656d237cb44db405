"""Optional TensorBoard logging (logging.tensorboard=true): the event file read back."""

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedkt.config import ConfigError, build_config, compose
from fedkt.tracking import TensorBoardLog


def read_events(run_dir):
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def test_rounds_clients_and_coefficients_are_read_back(tmp_path):
    board = TensorBoardLog(tmp_path)
    c = np.array([[0.5, 0.5], [0.2, 0.8]])
    for rnd, acc in ((1, 0.3), (2, 0.6)):
        record = {"round": rnd, "mean_test_acc": acc, "min_test_acc": acc - 0.1, "seconds": 3.0, "bytes_up": 10}
        rows = [{"round": rnd, "partition_id": p, "test_acc": acc + p / 10, "fit_train_acc": 0.9} for p in (0, 1)]
        board(record, rows, c)
    board.close()
    events = read_events(tmp_path)
    scalars = events.Tags()["scalars"]
    assert {"round/mean_test_acc", "round/seconds", "client_01/test_acc", "client_00/fit_train_acc"} <= set(scalars)
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("round/mean_test_acc")] == [(1, 0.3), (2, 0.6)]
    assert [round(e.value, 6) for e in events.Scalars("client_01/test_acc")] == [0.4, 0.7]
    (image, _) = events.Images("coefficients")
    assert (image.width, image.height, image.step) == (2, 2, 1)


def test_tensorboard_is_off_by_default_and_checked():
    assert compose([])["logging"]["tensorboard"] is False
    build_config(compose(["logging.tensorboard=true"]))  # the package is installed here (the test extra)
    with pytest.raises(ConfigError, match="logging.tensorboard='yes' must be true or false"):
        build_config(compose(["logging.tensorboard=yes"]))
