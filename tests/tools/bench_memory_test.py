"""tools/bench_memory.py without training: the nested subsets and the table's growth."""

import numpy as np

import bench_memory as bench


def test_subsets_are_nested_keep_the_test_split_and_count_the_image_bytes(tmp_path):
    labels = np.repeat(np.arange(4), 25)  # sorted by class, like the Fashion-MNIST file
    images = np.zeros((100, 2, 2), np.uint8)
    images[:, 0, 0] = np.arange(100)  # each image names its sample
    source = {"x_train": images,
              "y_train": labels, "x_test": np.zeros((3, 2, 2), np.uint8),
              "y_test": np.arange(3), "class_names": np.array(list("abcd"))}
    small, large = str(tmp_path / "s.npz"), str(tmp_path / "l.npz")
    assert bench.write_subset(source, 20, small) == 20 * 4
    assert bench.write_subset(source, 60, large) == 60 * 4
    with np.load(small) as s, np.load(large) as l:
        np.testing.assert_array_equal(l["x_train"][:20], s["x_train"])  # nested
        assert len(np.unique(s["y_train"])) == 4  # not the first 20 of a sorted file
        np.testing.assert_array_equal(s["y_train"], labels[s["x_train"][:, 0, 0]])
        np.testing.assert_array_equal(s["y_test"], source["y_test"])
        np.testing.assert_array_equal(s["class_names"], source["class_names"])


def test_table_gives_growth_over_each_flagfiles_smallest_size():
    rows = [{"flagfile": "a.cfg", "size": 10, "image_mib": 1.0, "rss_mib": 1000.0,
             "seconds": 5.0},
            {"flagfile": "a.cfg", "size": 60, "image_mib": 6.0, "rss_mib": 1010.4,
             "seconds": 20.0},
            {"flagfile": "b.cfg", "size": 10, "image_mib": 1.0, "rss_mib": 1500.0,
             "seconds": 9.0}]
    lines = bench.table(rows).splitlines()
    assert lines[2] == "| a.cfg | 10 | 1.0 | 1000 | +0 | +0.0 | 5 |"
    assert lines[3] == "| a.cfg | 60 | 6.0 | 1010 | +10 | +5.0 | 20 |"
    assert lines[4] == "| b.cfg | 10 | 1.0 | 1500 | +0 | +0.0 | 9 |"
