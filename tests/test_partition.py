"""Tests for spark_jax.setting.partition: Dirichlet/IID splits, NTK-DFL files, histograms, padding."""

import chex
import numpy as np
import pytest

from spark_jax.setting import data
from spark_jax.setting import partition as P
from spark_jax.setting import partition_report as R

C = 10


@pytest.fixture
def labels():
    """Synthetic labels: 10 classes x 600, in a shuffled order. int [6000]."""
    return np.random.default_rng(123).permutation(np.repeat(np.arange(C), 600))


@pytest.fixture(scope="module")
def real_labels(real_data_dir):
    """Real Fashion-MNIST train labels uint8 [60000] (only the labels file is parsed)."""
    return data.parse_idx(data.find_idx_files(real_data_dir, "fashion_mnist")["train_labels"])


def loop_histogram(partition, labels, num_classes=C):
    hist = np.zeros((partition.num_nodes, num_classes), np.int64)
    for u in range(partition.num_nodes):
        for i in partition.indices[partition.offsets[u]:partition.offsets[u + 1]]:
            hist[u, labels[i]] += 1
    return hist


def mean_max_share(hist):
    return float(np.mean([row.max() / row.sum() for row in hist]))


def assert_disjoint_cover(part, n):
    np.testing.assert_array_equal(np.sort(part.indices), np.arange(n))


# --------------------------------------------------------------- Partition

def test_partition_accessors():
    part = P.from_node_lists([[4, 2], [], [0, 1, 3]])
    assert part.num_nodes == 3 and part.offsets.dtype == np.int64 and part.indices.dtype == np.int64
    np.testing.assert_array_equal(part.counts, [2, 0, 3])
    np.testing.assert_array_equal(part.node_indices(2), [0, 1, 3])
    assert part.node_indices(1).size == 0
    with pytest.raises(IndexError, match="node 3 out of range"):
        part.node_indices(3)


# ------------------------------------------------------- ntk_dfl_dirichlet

def test_ntk_dfl_dirichlet_properties(labels):
    spn = 100
    part = P.ntk_dfl_dirichlet(labels, 40, spn, 0.1, np.random.default_rng(0))
    P.validate_partition(part, len(labels))
    assert part.num_nodes == 40
    # sum_c floor(spn * q_c) lies in (spn - C, spn]: each floor loses < 1.
    assert part.counts.min() > spn - C and part.counts.max() <= spn
    for u in range(part.num_nodes):
        idx = part.node_indices(u)
        assert len(np.unique(idx)) == len(idx), f"node {u} holds a sample twice"
        assert np.all(np.diff(labels[idx]) >= 0), "node indices are class-sorted"
    # Pools are reshuffled per node: nodes overlap (40 x ~100 draws from 6000), but far less
    # than without reshuffling, where every node would take the same front of each pool
    # (then at most C * spn = 1000 distinct indices).
    distinct = len(np.unique(part.indices))
    assert distinct < len(part.indices) and distinct > 0.5 * len(part.indices) > C * spn


def test_ntk_dfl_dirichlet_heterogeneity_and_seed(labels):
    skew = P.ntk_dfl_dirichlet(labels, 40, 100, 0.1, np.random.default_rng(1))
    flat = P.iid(labels, 40, np.random.default_rng(1), samples_per_node=100)
    s_skew = mean_max_share(loop_histogram(skew, labels))
    s_iid = mean_max_share(loop_histogram(flat, labels))
    assert s_skew > 2 * s_iid, (s_skew, s_iid)
    mild = P.ntk_dfl_dirichlet(labels, 40, 100, 100.0, np.random.default_rng(1))
    assert mean_max_share(loop_histogram(mild, labels)) < 0.5 * s_skew
    again = P.ntk_dfl_dirichlet(labels, 40, 100, 0.1, np.random.default_rng(1))
    np.testing.assert_array_equal(again.indices, skew.indices)


def test_ntk_dfl_dirichlet_nodes_never_empty(labels):
    # samples_per_node=2 with 10 classes: many q give floor(2 q_c) = 0 everywhere -> redraws.
    part = P.ntk_dfl_dirichlet(labels, 200, 2, 1.0, np.random.default_rng(0))
    assert part.counts.min() >= 1 and part.counts.max() <= 2


def test_ntk_dfl_dirichlet_matches_ntk_dfl_files(real_labels):
    """Our recipe gives the same skew statistics as the published fmnist300/alpha0.1 files."""
    ref = P.label_histogram(P.load_ntk_dfl_partition(num_train=60000), real_labels, 10)
    ours = P.label_histogram(P.ntk_dfl_dirichlet(real_labels, 300, 200, 0.1, np.random.default_rng(0)), real_labels, 10)
    assert abs(mean_max_share(ours) - mean_max_share(ref)) < 0.05
    assert abs((ours > 0).sum(1).mean() - (ref > 0).sum(1).mean()) < 0.5
    assert 191 <= ours.sum(1).min() and ours.sum(1).max() <= 200


# ----------------------------------------------------------- hsu / iid

def test_hsu_dirichlet_disjoint_cover_min_size(labels):
    part = P.hsu_dirichlet(labels, 20, 0.5, np.random.default_rng(0), min_size=30)
    assert part.num_nodes == 20
    assert_disjoint_cover(part, len(labels))
    assert part.counts.min() >= 30
    hist = loop_histogram(part, labels)
    np.testing.assert_array_equal(hist.sum(0), np.full(C, 600))
    flat = P.iid(labels, 20, np.random.default_rng(0))
    assert mean_max_share(hist) > 1.5 * mean_max_share(loop_histogram(flat, labels))


def test_hsu_dirichlet_gives_up_with_clear_error(labels):
    with pytest.raises(ValueError, match="no draw in 3 gave every one of 300 nodes >= 10 samples"):
        P.hsu_dirichlet(labels, 300, 0.01, np.random.default_rng(0), min_size=10, max_tries=3)


def test_iid_splits(labels):
    part = P.iid(labels, 7, np.random.default_rng(0))
    assert_disjoint_cover(part, len(labels))
    assert set(part.counts.tolist()) == {857, 858}  # 6000 = 6 * 857 + 858
    fixed = P.iid(labels, 10, np.random.default_rng(0), samples_per_node=500)
    np.testing.assert_array_equal(fixed.counts, np.full(10, 500))
    assert len(np.unique(fixed.indices)) == 5000
    assert mean_max_share(loop_histogram(fixed, labels)) < 0.2  # near-balanced (ideal 0.1)


# ------------------------------------------------------------ bad inputs

@pytest.mark.parametrize("call, match", [
    (lambda y, r: P.ntk_dfl_dirichlet(y, 10, 100, 0.0, r), r"alpha must be > 0 \(smaller = more heterogeneous\)"),
    (lambda y, r: P.hsu_dirichlet(y, 10, -1.0, r), r"alpha must be > 0"),
    (lambda y, r: P.ntk_dfl_dirichlet(y, 0, 100, 0.1, r), "num_nodes must be an integer >= 1"),
    (lambda y, r: P.iid(y, 6001, r), r"more nodes \(6001\) than samples \(6000\)"),
    (lambda y, r: P.ntk_dfl_dirichlet(y, 10, 0, 0.1, r), "samples_per_node must be an integer >= 1"),
    (lambda y, r: P.ntk_dfl_dirichlet(y, 10, 601, 0.1, r), r"exceeds the smallest class pool \(600\)"),
    (lambda y, r: P.iid(y, 10, r, samples_per_node=601), "exceed the 6000 samples"),
    (lambda y, r: P.hsu_dirichlet(y, 10, 0.5, r, min_size=601), r"min_size \(601\)"),
    (lambda y, r: P.iid(y.astype(np.float32), 10, r), "integer array"),
    (lambda y, r: P.iid(y - 1, 10, r), "labels must be >= 0"),
])
def test_bad_inputs(labels, call, match):
    with pytest.raises(ValueError, match=match):
        call(labels, np.random.default_rng(0))


# ------------------------------------------------------ NTK-DFL files

def test_bundled_fmnist300_alpha01_seed0():
    part = P.load_ntk_dfl_partition("fashion_mnist", 300, "alpha0.1", 0, num_train=60000)
    assert part.num_nodes == 300 and part.offsets.dtype == np.int64 and part.indices.dtype == np.int64
    assert (part.counts.min(), part.counts.max()) == (194, 199)
    assert part.indices.min() >= 0 and part.indices.max() < 60000
    for u in range(300):
        assert len(np.unique(part.node_indices(u))) == part.counts[u]


def test_all_bundled_files_are_valid():
    sets = {"fashion_mnist": ([f"alpha0.{k}" for k in range(1, 6)], 5, 60000, (193, 199)),
            "mnist": (["alpha0.05", "alpha0.1", "alpha0.5"], 3, 50000, (159, 165))}
    for dataset, (splits, seeds, num_train, (lo, hi)) in sets.items():
        for split in splits:
            for seed in range(seeds):
                part = P.load_ntk_dfl_partition(dataset, 300, split, seed, num_train=num_train)
                assert lo <= part.counts.min() and part.counts.max() <= hi, (dataset, split, seed)
    for seed in range(3):
        part = P.load_ntk_dfl_partition("fashion_mnist", 300, "iid", seed, num_train=60000)
        np.testing.assert_array_equal(part.counts, np.full(300, 200))
        assert_disjoint_cover(part, 60000)


def _write_npz(root, offsets, indices, split="alpha0.1", seed=0):
    path = root / "partitions" / "fmnist300" / split / f"seed{seed}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, offsets=np.asarray(offsets, np.int64), indices=np.asarray(indices, np.int64))
    return path


def test_search_order_data_dir_then_env_then_bundled(tmp_path, monkeypatch):
    mine = _write_npz(tmp_path / "a", np.arange(301), np.arange(300))
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    assert P.ntk_dfl_partition_path("fashion_mnist", 300, "alpha0.1", 0, tmp_path / "a") == mine
    np.testing.assert_array_equal(P.load_ntk_dfl_partition(data_dir=tmp_path / "a").counts, np.ones(300))
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "a"))
    assert P.ntk_dfl_partition_path("fashion_mnist", 300, "alpha0.1", 0) == mine
    bundled = P.BUNDLED_DIR / "fmnist300" / "alpha0.1" / "seed1.npz"
    assert P.ntk_dfl_partition_path("fashion_mnist", 300, "alpha0.1", 1) == bundled


def test_missing_file_names_path_and_lists_available(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        P.load_ntk_dfl_partition("fashion_mnist", 300, "alpha0.7", 0, data_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "partitions" / "fmnist300" / "alpha0.7" / "seed0.npz") in msg
    assert "alpha0.1 (seed0 seed1 seed2 seed3 seed4)" in msg and "iid (seed0 seed1 seed2)" in msg
    with pytest.raises(ValueError, match="unknown dataset"):
        P.ntk_dfl_partition_path("cifar10", 300, "alpha0.1", 0)


@pytest.mark.parametrize("offsets, indices, num_train, match", [
    (np.r_[1, np.arange(1, 301)], np.arange(300), None, "start at 0"),
    (np.r_[0, 2, 1, np.arange(3, 301)], np.arange(300), None, "non-decreasing"),
    (np.arange(301), np.arange(299), None, "end at"),
    (np.arange(301), np.arange(300), 299, "index 299 out of range"),
    (np.arange(201), np.arange(200), None, "holds 200 nodes, expected 300"),
])
def test_invalid_files_rejected(tmp_path, offsets, indices, num_train, match):
    path = _write_npz(tmp_path, offsets, indices)
    with pytest.raises(ValueError, match=match) as err:
        P.load_ntk_dfl_partition(data_dir=tmp_path, num_train=num_train)
    assert str(path) in str(err.value)


# --------------------------------------------------- histograms and plots

def test_label_histogram_matches_loop(labels):
    part = P.ntk_dfl_dirichlet(labels, 25, 50, 0.3, np.random.default_rng(2))
    hist = P.label_histogram(part, labels, 10)
    assert hist.dtype == np.int64
    chex.assert_shape(hist, (25, C))
    np.testing.assert_array_equal(hist, loop_histogram(part, labels))
    with pytest.raises(ValueError, match="num_classes"):
        P.label_histogram(part, labels, num_classes=5)


def test_histogram_summary_and_share():
    hist = np.array([[3, 1, 0], [0, 0, 2], [1, 1, 1]])
    np.testing.assert_allclose(R.max_class_share(hist), [0.75, 1.0, 1 / 3])
    text = R.histogram_summary(hist)
    for needle in ["nodes: 3", "samples per node: min 2 / mean 3.0 / max 4",
                   f"mean max-class share: {(0.75 + 1 + 1 / 3) / 3:.3f}",
                   "classes per node: min 1 / mean 2.00 / max 3", "   1:    0    0    2"]:
        assert needle in text, needle


def test_plot_label_heatmap_writes_png(tmp_path, labels):
    hist = P.label_histogram(P.iid(labels, 30, np.random.default_rng(0)), labels, 10)
    path = tmp_path / "plots" / "heat.png"
    R.plot_label_heatmap(hist, path)
    blob = path.read_bytes()
    assert len(blob) > 1000 and blob[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------- make_node_data

def test_make_node_data_pads_and_gathers():
    rng = np.random.default_rng(0)
    n = 40
    images = rng.normal(size=(n, 28, 28, 1)).astype(np.float32)
    labels = rng.integers(0, C, size=n)
    part = P.from_node_lists([[5, 3, 3], [], [0, 1, 2, 39, 7], [10]])
    nd = P.make_node_data(images, labels, part, n_max=6)
    chex.assert_shape([nd.x, nd.y, nd.mask, nd.counts], [(4, 6, 28, 28, 1), (4, 6), (4, 6), (4,)])
    assert (nd.x.dtype, nd.y.dtype, nd.mask.dtype, nd.counts.dtype) == (np.float32, np.int32, np.bool_, np.int32)
    np.testing.assert_array_equal(nd.mask.sum(1), [3, 0, 5, 1])
    np.testing.assert_array_equal(nd.counts, [3, 0, 5, 1])
    for u in range(4):
        idx = part.node_indices(u)
        k = len(idx)
        np.testing.assert_array_equal(nd.x[u, :k], images[idx])
        np.testing.assert_array_equal(nd.y[u, :k], labels[idx])
        assert not nd.x[u, k:].any() and not nd.y[u, k:].any() and not nd.mask[u, k:].any()
    assert P.make_node_data(images, labels, part).x.shape[1] == 5  # default n_max = largest node


def test_make_node_data_rejects_bad_input():
    images = np.zeros((10, 28, 28, 1), np.float32)
    labels = np.zeros(10, np.int64)
    part = P.from_node_lists([[0, 1, 2], [3]])
    with pytest.raises(ValueError, match=r"n_max \(2\) is smaller than the largest node \(3 samples\)"):
        P.make_node_data(images, labels, part, n_max=2)
    with pytest.raises(ValueError, match="normalize_images"):
        P.make_node_data(np.zeros((10, 28, 28), np.uint8), labels, part)
    with pytest.raises(ValueError, match="9 images but 10 labels"):
        P.make_node_data(images[:9], labels, part)
    with pytest.raises(ValueError, match="out of range"):
        P.make_node_data(images, labels, P.from_node_lists([[0, 10]]))
