"""Tests for spark_jax.setting.data: IDX parsing, source search, checks, normalization."""

import gzip
import os
import struct
import sys
import types

import chex
import numpy as np
import pytest

from spark_jax.setting import data

N_TRAIN, N_TEST = 60000, 10000


def write_idx(path, array, magic=None, count=None, compress=None):
    """Writes `array` (uint8) as an IDX file with an explicit big-endian header (independent of parse_idx)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x800 + array.ndim) if magic is None else magic
    dims = list(array.shape)
    if count is not None:
        dims[0] = count
    blob = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + array.tobytes()
    compress = str(path).endswith(".gz") if compress is None else compress
    if compress:
        blob = gzip.compress(blob, compresslevel=1)
    with open(path, "wb") as f:
        f.write(blob)
    return path


def fake_split(n, offset=0):
    """Deterministic uint8 images [n, 28, 28] (image i is a shifted ramp) and labels [n] = i % 10."""
    i = np.arange(offset, offset + n, dtype=np.int64)
    # uint8 addition wraps mod 256, which is the intended pattern.
    images = (i.astype(np.uint8)[:, None] + np.arange(784).astype(np.uint8)[None, :]).reshape(n, 28, 28)
    return images, (i % 10).astype(np.uint8)


def write_dataset(directory, n_train=N_TRAIN, n_test=N_TEST, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    tr_x, tr_y = fake_split(n_train)
    te_x, te_y = fake_split(n_test, offset=7)
    ext = ".gz" if gz else ""
    for stem, arr in [("train-images-idx3-ubyte", tr_x), ("train-labels-idx1-ubyte", tr_y),
                      ("t10k-images-idx3-ubyte", te_x), ("t10k-labels-idx1-ubyte", te_y)]:
        write_idx(directory / (stem + ext), arr)
    return directory


class FakeTfds(types.ModuleType):
    """Stands in for tensorflow_datasets: records every call, fails if a download is ever requested."""

    def __init__(self, sizes=None):
        super().__init__("tensorflow_datasets")
        self.sizes, self.calls = sizes, []

    def data_source(self, name, *, split=None, download=True, try_gcs=True, **kwargs):
        self.calls.append(dict(name=name, split=split, download=download, try_gcs=try_gcs))
        assert download is False and try_gcs is False, "TFDS must never be asked to download"
        if self.sizes is None:
            raise KeyError("dataset has not been generated yet")
        images = [np.full((28, 28, 1), v, np.uint8) for v in range(256)]
        return [{"image": images[i % 256], "label": i % 10} for i in range(self.sizes[split])]


@pytest.fixture(autouse=True)
def offline_tfds(monkeypatch):
    """Every test runs with a fake, never-downloading TFDS that holds no prepared dataset."""
    fake = FakeTfds()
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    return fake


@pytest.fixture
def no_sources(monkeypatch, tmp_path):
    """No env var, an empty Debian location, no download cache: only TFDS is left."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no-cache"))
    monkeypatch.setitem(data.DEBIAN_DIRS, "fashion_mnist", str(tmp_path / "no-debian"))


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory):
    """A full-size (60000/10000) synthetic Fashion-MNIST in D/fashion_mnist/."""
    root = tmp_path_factory.mktemp("full")
    write_dataset(root / "fashion_mnist")
    return root


# ----------------------------------------------------------------- parse_idx

@pytest.mark.parametrize("suffix", [".gz", ""])
def test_parse_idx_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 0, 9, 1, 7], np.uint8)
    got_x = data.parse_idx(write_idx(tmp_path / f"img{suffix}", images))
    got_y = data.parse_idx(write_idx(tmp_path / f"lab{suffix}", labels))
    assert got_x.dtype == np.uint8 and got_y.dtype == np.uint8
    chex.assert_shape(got_x, (5, 28, 28))
    np.testing.assert_array_equal(got_x, images)
    np.testing.assert_array_equal(got_y, labels)


def _truncated_gzip(path):
    blob = gzip.compress(struct.pack(">II", 0x801, 100) + bytes(100))
    path.write_bytes(blob[:len(blob) // 2])


@pytest.mark.parametrize("case, make", [
    ("bad_magic", lambda p: write_idx(p, np.zeros(5, np.uint8), magic=0x00000802)),
    ("float_type", lambda p: write_idx(p, np.zeros((2, 28, 28), np.uint8), magic=0x00000D03)),
    ("truncated_payload", lambda p: p.write_bytes(gzip.compress(
        struct.pack(">IIII", 0x803, 5, 28, 28) + bytes(5 * 784 - 10)))),
    ("count_too_big", lambda p: write_idx(p, np.zeros((5, 28, 28), np.uint8), count=6)),
    ("count_too_small", lambda p: write_idx(p, np.zeros(5, np.uint8), count=4)),
    ("short_header", lambda p: p.write_bytes(gzip.compress(struct.pack(">I", 0x803) + b"\x00\x00"))),
    ("not_gzip", lambda p: write_idx(p, np.zeros(5, np.uint8), compress=False)),
    ("truncated_gzip", _truncated_gzip),
])
def test_parse_idx_corrupt_raises_data_error_naming_file(tmp_path, case, make):
    path = tmp_path / f"{case}-idx-ubyte.gz"
    make(path)
    with pytest.raises(data.DataError, match=path.name):
        data.parse_idx(path)


# ------------------------------------------------------------- load_dataset

def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="'fashion_mnist', 'mnist'"):
        data.load_dataset("cifar10")


def test_missing_files_says_how_to_get_data(tmp_path):
    with pytest.raises(data.DataError) as err:
        data.load_dataset(data_dir=tmp_path)
    msg = str(err.value)
    for needle in ["apt-get install dataset-fashion-mnist", "SPARK_JAX_DATA_DIR", str(tmp_path),
                   "train-images-idx3-ubyte.gz"]:
        assert needle in msg
    assert "\n" not in msg


def test_nothing_found_lists_every_attempt(no_sources, offline_tfds):
    with pytest.raises(data.DataError) as err:
        data.load_dataset("fashion_mnist")
    msg = str(err.value)
    assert "SPARK_JAX_DATA_DIR: not set" in msg and "no-debian" in msg and "TFDS" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert [c["download"] for c in offline_tfds.calls] == [False]


def test_tfds_fallback_reads_prepared_dataset_without_download(no_sources, monkeypatch):
    fake = FakeTfds(sizes={"train": N_TRAIN, "test": N_TEST})
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    ds = data.load_dataset("mnist")
    assert ds.source == "tfds:mnist" and ds.name == "mnist"
    assert [(c["split"], c["download"]) for c in fake.calls] == [("train", False), ("test", False)]
    chex.assert_shape(ds.train_images, (N_TRAIN, 28, 28))
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.uint8
    np.testing.assert_array_equal(ds.test_labels[:12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
    assert ds.train_images[300, 5, 5] == 300 % 256


def test_full_size_synthetic_round_trip(full_dir):
    ds = data.load_dataset("fashion_mnist", data_dir=full_dir)
    assert ds.source == str(full_dir / "fashion_mnist")
    want = [*fake_split(N_TRAIN), *fake_split(N_TEST, offset=7)]
    got = [ds.train_images, ds.train_labels, ds.test_images, ds.test_labels]
    for g, w in zip(got, want):
        assert g.dtype == np.uint8 and g.shape == w.shape and np.array_equal(g, w)


@pytest.mark.parametrize("layout", ["fashion-mnist", "."])
def test_alternative_layouts(full_dir, tmp_path, layout):
    target = tmp_path / layout
    target.mkdir(exist_ok=True)
    for f in (full_dir / "fashion_mnist").iterdir():
        os.symlink(f, target / f.name)
    assert data.load_dataset(data_dir=tmp_path).source == str(target)


def test_env_var_then_debian(full_dir, tmp_path, monkeypatch, offline_tfds):
    monkeypatch.setenv(data.ENV_VAR, str(full_dir))
    assert data.load_dataset().source == str(full_dir / "fashion_mnist")
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))  # empty: falls through to Debian
    monkeypatch.setitem(data.DEBIAN_DIRS, "fashion_mnist", str(full_dir / "fashion_mnist"))
    assert data.load_dataset().source == str(full_dir / "fashion_mnist")
    assert offline_tfds.calls == []


def test_data_dir_is_exclusive(full_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(full_dir))
    with pytest.raises(data.DataError, match="no complete set"):
        data.load_dataset(data_dir=tmp_path)


def test_debian_location_is_fashion_mnist_only(full_dir, monkeypatch, tmp_path, offline_tfds):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setitem(data.DEBIAN_DIRS, "fashion_mnist", str(full_dir / "fashion_mnist"))
    with pytest.raises(data.DataError, match="none exists for mnist"):
        data.load_dataset("mnist")


def test_uncompressed_files_are_found(tmp_path):
    for stem in data.IDX_FILES.values():
        (tmp_path / stem).write_bytes(b"")
    files = data.find_idx_files(tmp_path, "mnist")
    assert {k: p.name for k, p in files.items()} == data.IDX_FILES


def test_wrong_counts_are_rejected(tmp_path):
    write_dataset(tmp_path / "fashion_mnist", n_train=50, n_test=10)
    with pytest.raises(data.DataError, match="has 50 examples; expected 60000"):
        data.load_dataset(data_dir=tmp_path)


def test_label_range_and_agreement_checked():
    x = np.zeros((N_TRAIN, 28, 28), np.uint8)
    good = dict(train_images=x, train_labels=np.zeros(N_TRAIN, np.uint8),
                test_images=x[:N_TEST], test_labels=np.zeros(N_TEST, np.uint8))
    assert data.check_arrays("mnist", good, "here").name == "mnist"
    with pytest.raises(data.DataError, match="reach 10"):
        data.check_arrays("mnist", {**good, "test_labels": np.full(N_TEST, 10, np.uint8)}, "here")
    with pytest.raises(data.DataError, match="labels of shape"):
        data.check_arrays("mnist", {**good, "test_labels": np.zeros(N_TEST - 1, np.uint8)}, "here")
    with pytest.raises(data.DataError, match="expected uint8"):
        data.check_arrays("mnist", {**good, "train_images": x[:, :27]}, "here")


# ---------------------------------------------------------- normalize_images

def test_normalize_images_closed_form():
    x = np.array([[0, 255], [51, 128]], np.uint8).reshape(1, 2, 2)
    got = data.normalize_images(x, "mnist")
    assert got.dtype == np.float32
    chex.assert_shape(got, (1, 2, 2, 1))
    want = (np.array([0, 255, 51, 128], np.float64) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-6)


def test_normalize_images_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        data.normalize_images(np.zeros((1, 28, 28), np.float32), "mnist")
    with pytest.raises(ValueError, match="unknown dataset"):
        data.normalize_images(np.zeros((1, 28, 28), np.uint8), "kmnist")


def test_dataset_registry_drives_checks_and_normalization(monkeypatch):
    """A new dataset is one `DatasetSpec` entry: its shapes, classes, sizes and statistics are what is checked."""
    spec = data.DatasetSpec("tiny", (4, 3), 3, {"train": 5, "test": 2}, 0.5, 0.25)
    monkeypatch.setitem(data.DATASETS, "tiny", spec)
    assert data.dataset_spec("tiny") is spec and spec.image_size == 12
    arrays = {"train_images": np.zeros((5, 4, 3), np.uint8), "train_labels": np.array([0, 1, 2, 0, 1], np.uint8),
              "test_images": np.zeros((2, 4, 3), np.uint8), "test_labels": np.array([2, 2], np.uint8)}
    assert data.check_arrays("tiny", arrays, "mem").train_images.shape == (5, 4, 3)
    with pytest.raises(data.DataError, match=r"expected 0\.\.2"):
        data.check_arrays("tiny", {**arrays, "test_labels": np.array([3, 0], np.uint8)}, "mem")
    with pytest.raises(data.DataError, match=r"expected uint8 \[N, 4, 3\]"):
        data.check_arrays("tiny", {**arrays, "test_images": np.zeros((2, 28, 28), np.uint8)}, "mem")
    with pytest.raises(data.DataError, match="expected 5"):
        data.check_arrays("tiny", {**arrays, "train_images": np.zeros((6, 4, 3), np.uint8),
                                   "train_labels": np.zeros(6, np.uint8)}, "mem")
    np.testing.assert_allclose(data.normalize_images(np.array([[0, 255]], np.uint8), "tiny").ravel(), [-2.0, 2.0])
    with pytest.raises(ValueError, match="unknown dataset 'kmnist'"):
        data.dataset_spec("kmnist")


def _assert_spec_matches(ds):
    """The registry entry of `ds.name` describes the files read: sizes, shapes, classes, mean and std."""
    spec = data.dataset_spec(ds.name)
    for split, n in spec.split_sizes.items():
        chex.assert_shape(getattr(ds, f"{split}_images"), (n, *spec.image_shape))
        assert int(getattr(ds, f"{split}_labels").max()) + 1 == spec.num_classes
    counts = np.bincount(ds.train_images.ravel(), minlength=256)  # exact moments of x/255 from a histogram
    v = np.arange(256) / 255.0
    mean = counts @ v / counts.sum()
    std = np.sqrt(counts @ (v - mean) ** 2 / counts.sum())
    assert abs(mean - spec.mean) < 5e-4 and abs(std - spec.std) < 5e-4, (mean, std)


# ----------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def real_fmnist(real_data_dir):
    return data.load_dataset("fashion_mnist", data_dir=real_data_dir)


def test_real_fashion_mnist(real_fmnist):
    ds = real_fmnist
    chex.assert_shape([ds.train_images, ds.train_labels, ds.test_images, ds.test_labels],
                      [(N_TRAIN, 28, 28), (N_TRAIN,), (N_TEST, 28, 28), (N_TEST,)])
    np.testing.assert_array_equal(np.bincount(ds.train_labels, minlength=10), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(ds.test_labels, minlength=10), np.full(10, 1000))
    np.testing.assert_array_equal(ds.train_labels[:10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])
    np.testing.assert_array_equal(ds.test_labels[:10], [9, 2, 1, 1, 6, 1, 4, 6, 5, 7])
    assert abs(ds.train_images.mean(dtype=np.float64) / 255 - 0.2860) < 5e-4
    assert abs(ds.test_images.mean(dtype=np.float64) / 255 - 0.2868) < 5e-4
    _assert_spec_matches(ds)


def test_real_normalization_is_standard(real_fmnist):
    x = data.normalize_images(real_fmnist.train_images, "fashion_mnist")
    chex.assert_shape(x, (N_TRAIN, 28, 28, 1))
    assert abs(float(x.mean(dtype=np.float64))) < 1e-3
    sub = x[::12].astype(np.float64)  # every 12th image: a float64 copy of all 60000 is slow
    assert abs(sub.std() - 1.0) < 0.02
    want = (real_fmnist.train_images[::12, :, :, None] / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(sub, want, atol=1e-5)


def test_real_mnist(real_data_dir):
    if data.find_idx_files(real_data_dir, "mnist") is None:
        pytest.skip(f"no MNIST files beside Fashion-MNIST in {real_data_dir}")
    ds = data.load_dataset("mnist", data_dir=real_data_dir)
    np.testing.assert_array_equal(ds.train_labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(ds.test_labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    assert abs(ds.train_images.mean(dtype=np.float64) / 255 - 0.1307) < 5e-4
    _assert_spec_matches(ds)
