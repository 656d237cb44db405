"""Optional TensorBoard logging of a run (`logging.tensorboard=true`; `pip install -e ".[tensorboard]"`).

Into `<run dir>/tensorboard/`, after every round: the round's summary (`round/mean_test_acc`, std, min, max,
mean test loss, seconds, bytes up and down), every client's accuracies and losses (`client_07/test_acc`,
...) and, for KT-pFL, the coefficient matrix c as a greyscale image (`coefficients`, c_ij / max c). Look at
it with `tensorboard --logdir outputs/`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROUND_KEYS = ("mean_test_acc", "std_test_acc", "min_test_acc", "max_test_acc", "mean_test_loss", "seconds",
              "bytes_up", "bytes_down")
CLIENT_KEYS = ("test_acc", "test_loss", "fit_train_acc", "fit_train_loss", "fit_val_acc", "fit_val_loss",
               "fit_distill_loss", "fit_lr")


class TensorBoardLog:
    """Called after every round with the record, the client rows and c (or None), like RunRecorder."""

    def __init__(self, run_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter  # the optional extra: imported only when asked for

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def __call__(self, record: dict, rows: list[dict], c: np.ndarray | None) -> None:
        step = int(record["round"])
        for key in ROUND_KEYS:
            if isinstance(record.get(key), (int, float)):
                self.writer.add_scalar(f"round/{key}", float(record[key]), step)
        for row in rows:
            for key in CLIENT_KEYS:
                if isinstance(row.get(key), (int, float)):
                    self.writer.add_scalar(f"client_{int(row['partition_id']):02d}/{key}", float(row[key]), step)
        if c is not None:
            image = np.asarray(c, dtype=np.float32)
            self.writer.add_image("coefficients", image[None] / max(float(image.max()), 1e-12), step,
                                  dataformats="CHW")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
