"""partition.png: each client's class counts as stacked bars, from the run's partition table."""

import numpy as np

from fedkt.plots import read_class_counts, write_run_figures

TABLE = """partition type2, seed 0, 3 clients, public set 200 samples
client  cat dog frog  train    val   test  total
     0   10   0    5     9      3      3     15
     1    0  20    0    12      4      4     20
     2    7   7    7    13      4      4     21
"""


def test_partition_figure_is_drawn_from_the_class_counts(tmp_path):
    (tmp_path / "partition.txt").write_text(TABLE)
    names, counts = read_class_counts(tmp_path)
    assert names == ["cat", "dog", "frog"]
    np.testing.assert_array_equal(counts, [[10, 0, 5], [0, 20, 0], [7, 7, 7]])
    written = write_run_figures(tmp_path)
    assert tmp_path / "partition.png" in written
    assert (tmp_path / "partition.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_class_counts_no_partition_figure(tmp_path):
    (tmp_path / "partition.txt").write_text("garbage\n")
    assert read_class_counts(tmp_path) is None
    assert tmp_path / "partition.png" not in write_run_figures(tmp_path)
