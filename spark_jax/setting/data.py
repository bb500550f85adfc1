"""Image datasets from files to uint8 arrays (SPEC.md "Data").

Fashion-MNIST is the default dataset, MNIST the second. Both are read from the
four canonical IDX files; `load_dataset` looks, in order, in

1. `data_dir` if given (then only there), else `$SPARK_JAX_DATA_DIR`: in
   `D/<name>`, `D/<name with - for _>` and `D` itself, `.gz` or uncompressed;
2. the Debian package location (`apt-get install dataset-fashion-mnist`,
   Fashion-MNIST only);
3. the download cache `~/.cache/spark_jax/<name>` (`spark_jax.setting.download`; when
   `$SPARK_JAX_DATA_DIR` is set, downloads go to `$SPARK_JAX_DATA_DIR/<name>`);
4. an already prepared local TensorFlow Datasets copy, read with
   `tfds.data_source(..., download=False)`: the network is never touched.

Only when none has the files and `download=True` (`config.data.download`) are
they downloaded, checksummed, by `spark_jax.setting.download`.

Arrays stay uint8 here; `normalize_images` gives the float32 network inputs
(x/255 - mean)/std with a trailing channel axis.

Every file is read once: its bytes are hashed (`data_checksums`, ~0.1 s for the
four files) into the Dataset's `fingerprint`, which a run records in its
config.json. A file whose SHA-256 is that of another dataset's canonical file
is refused (MNIST's files under a Fashion-MNIST config would train on MNIST
with Fashion-MNIST normalisation); a file of no published sum is the user's
own data and is used as given.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import zlib
from typing import NamedTuple

import numpy as np
from absl import logging

from spark_jax.setting import data_checksums

ENV_VAR = "SPARK_JAX_DATA_DIR"
# Where the Debian/Ubuntu package `dataset-fashion-mnist` installs the files.
DEBIAN_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}


class DatasetSpec(NamedTuple):
    """What the code needs to know of a dataset (SPEC.md "Data").

    image_shape: one image's uint8 array shape (H, W); num_classes C (labels 0..C-1);
    split_sizes: examples per split {'train': N_train, 'test': N_test}; (mean, std) of x/255
    over the training images, for `normalize_images`.
    """

    name: str
    image_shape: tuple[int, int]
    num_classes: int
    split_sizes: dict[str, int]
    mean: float
    std: float

    @property
    def image_size(self) -> int:
        """Pixels per image, H * W (the MLP's input width)."""
        return int(np.prod(self.image_shape))


# Datasets by `config.data.dataset`; adding one is one entry here (plus its files' sums in
# `data_checksums` and mirrors in `download` if it is to be downloaded).
DATASETS: dict[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec("fashion_mnist", (28, 28), 10, {"train": 60000, "test": 10000}, 0.2860, 0.3530),
    "mnist": DatasetSpec("mnist", (28, 28), 10, {"train": 60000, "test": 10000}, 0.1307, 0.3081),
}
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_MAGIC = {0x00000801: 1, 0x00000803: 3}  # magic -> number of dimensions (uint8 data)
_HOW_TO_GET = (f"point --data_dir or ${ENV_VAR} at a directory holding the four IDX .gz files "
               f"({', '.join(f + '.gz' for f in IDX_FILES.values())}), "
               "run `apt-get install dataset-fashion-mnist` (Fashion-MNIST), "
               "or prepare the dataset with TensorFlow Datasets")


class DataError(RuntimeError):
    """A dataset file is missing, corrupt or inconsistent; the message says which and how to fix."""


class Dataset(NamedTuple):
    """One image classification dataset as uint8 arrays.

    Shapes (from the dataset's `DatasetSpec`; Fashion-MNIST and MNIST: N_train = 60000, N_test = 10000,
    H = W = 28, C = 10): train_images [N_train, H, W], train_labels [N_train], test_images [N_test, H, W],
    test_labels [N_test]; labels in 0..C-1.
    `source` is the directory read from, or "tfds:<name>". `fingerprint`:
    {'dataset', 'source', 'files': {IDX key: data_checksums.file_record},
    'paths': {IDX key: path read}} (for TFDS, records of the arrays' bytes).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    fingerprint: dict | None = None


def check_name(name: str) -> str:
    """Returns `name` if it is a known dataset, else raises ValueError."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(repr(n) for n in DATASETS)}")
    return name


def dataset_spec(name: str) -> DatasetSpec:
    """The registered `DatasetSpec` of `name`; ValueError naming the choices if unknown."""
    return DATASETS[check_name(name)]


def _idx_error(path: pathlib.Path, what: str) -> DataError:
    """A one-line DataError naming the file, what is wrong, and how to get good data."""
    return DataError(f"IDX file {path} {what}; {_HOW_TO_GET}")


def _read_file(path: pathlib.Path) -> bytes:
    """The bytes of `path` as stored; DataError on any read failure."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise _idx_error(path, f"cannot be read ({type(e).__name__}: {e})") from e


def _contents(path: pathlib.Path, blob: bytes) -> bytes:
    """The IDX contents of a file read as `blob`: gunzipped if the name ends in `.gz`."""
    if not path.name.endswith(".gz"):
        return blob
    try:
        return gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as e:
        raise _idx_error(path, f"cannot be read ({type(e).__name__}: {e})") from e


def parse_idx(path) -> np.ndarray:
    """Parses one uint8 IDX file (gzip'd if the name ends in `.gz`).

    Labels (magic 0x00000801) give uint8 [N]; images (magic 0x00000803) give
    uint8 [N, rows, cols]. The header dimensions must match the payload size
    exactly. Raises DataError naming the file on any mismatch or corruption.
    """
    path = pathlib.Path(path)
    return parse_idx_bytes(path, _contents(path, _read_file(path)))


def parse_idx_bytes(path: pathlib.Path, raw: bytes) -> np.ndarray:
    """`parse_idx` of the (uncompressed) contents `raw` of `path` (named in errors)."""
    if len(raw) < 4:
        raise _idx_error(path, f"is too short for a header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _IDX_MAGIC:
        raise _idx_error(path, f"has bad magic 0x{magic:08x}, expected 0x00000801 (uint8 labels) "
                         "or 0x00000803 (uint8 images)")
    ndim = _IDX_MAGIC[magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _idx_error(path, f"is truncated inside its header ({len(raw)} < {header} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise _idx_error(path, f"has {len(raw) - header} payload bytes but its header dims {dims} "
                         f"need {expected} (truncated or corrupt)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def candidate_dirs(directory, name: str) -> list[pathlib.Path]:
    """Directories searched inside `directory`: D/<name>, D/<name with - for _>, D."""
    d = pathlib.Path(directory)
    out = [d / name, d / name.replace("_", "-"), d]
    return list(dict.fromkeys(out))


def find_idx_files(directory, name: str) -> dict[str, pathlib.Path] | None:
    """The four IDX files of `name` under `directory` (see `candidate_dirs`), or None.

    Each of the four may be `.gz` or uncompressed; the first directory that
    holds all four wins.
    """
    for d in candidate_dirs(directory, name):
        found = {}
        for key, stem in IDX_FILES.items():
            for fname in (stem + ".gz", stem):
                if (d / fname).is_file():
                    found[key] = d / fname
                    break
        if len(found) == len(IDX_FILES):
            return found
    return None


def check_arrays(name: str, arrays: dict[str, np.ndarray], source: str, fingerprint: dict | None = None) -> Dataset:
    """Checks counts, image shapes and labels against `dataset_spec(name)` (Fashion-MNIST, MNIST:
    60000 train / 10000 test, [28, 28], labels 0..9); returns a Dataset."""
    spec = dataset_spec(name)
    for split, n in spec.split_sizes.items():
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[1:] != spec.image_shape or images.dtype != np.uint8:
            raise DataError(f"{name} {split} images from {source} have shape {images.shape} "
                            f"dtype {images.dtype}; expected uint8 [N, {', '.join(map(str, spec.image_shape))}]")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{name} {split} from {source}: {len(images)} images but labels of shape {labels.shape}")
        if len(images) != n:
            raise DataError(f"{name} {split} from {source} has {len(images)} examples; expected {n}")
        if labels.size and int(labels.max()) >= spec.num_classes:
            raise DataError(f"{name} {split} labels from {source} reach {int(labels.max())}; "
                            f"expected 0..{spec.num_classes - 1}")
    return Dataset(name=name, source=source, fingerprint=fingerprint,
                   **{k: arrays[k].astype(np.uint8) for k in IDX_FILES})


def load_from_dir(directory, name: str) -> Dataset:
    """Reads and checks the four IDX files of `name` under `directory`; DataError if absent or bad."""
    files = find_idx_files(directory, name)
    if files is None:
        tried = ", ".join(str(d) for d in candidate_dirs(directory, name))
        raise DataError(f"no complete set of {name} IDX files in {tried}; {_HOW_TO_GET}")
    arrays, records = {}, {}
    for key, path in files.items():
        blob = _read_file(path)
        raw = _contents(path, blob)
        records[key] = _checked_record(path, blob, raw, name, key)
        arrays[key] = parse_idx_bytes(path, raw)
    source = str(files["train_images"].parent)
    own = [r["file"] for r in records.values() if r["canonical"] is None]
    if own:
        logging.warning("%s: %s match no published %s checksum; used as given (recorded in config.json)",
                        source, ", ".join(own), data_checksums.NAMES[name])
    fingerprint = {"dataset": name, "source": source, "files": records,
                   "paths": {key: str(path) for key, path in files.items()}}
    return check_arrays(name, arrays, source, fingerprint)


def _checked_record(path: pathlib.Path, blob: bytes, raw: bytes, name: str, key: str) -> dict:
    """The fingerprint entry of one IDX file; DataError when it is a canonical file other than `name`'s `key`.

    Identified by the file's bytes (`.gz` or uncompressed); an unknown `.gz` also by its contents
    (the same data recompressed).
    """
    digest = data_checksums.sha256(blob)
    match = data_checksums.identify(len(blob), digest)
    what = f"is {match.describe()}" if match else ""
    if match is None and raw is not blob:
        match = data_checksums.identify(len(raw), data_checksums.sha256(raw))
        what = f"holds {match.describe()} (recompressed)" if match else ""
    if match is not None and match.dataset != name:
        raise DataError(f"{path} {what}, but the config asks for {data_checksums.NAMES[name]} (data.dataset={name})")
    if match is not None and match.key != key:
        raise DataError(f"{path} {what}, not {data_checksums.NAMES[name]}'s {path.name}; put each IDX file under "
                        "its own name")
    return data_checksums.file_record(path, blob, match, digest)


def load_from_tfds(name: str) -> Dataset:
    """Reads an already prepared local TFDS copy; never downloads.

    Uses `tfds.data_source(name, split=..., download=False, try_gcs=False)`
    (random-access ArrayRecord reader: no TensorFlow needed). Any failure,
    including a missing TFDS install, becomes DataError.
    """
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

    spec = dataset_spec(name)
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS warns about absent folders: the DataError says it
    try:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

        arrays = {}
        for split, tfds_split in (("train", "train"), ("test", "test")):
            source = tfds.data_source(name, split=tfds_split, download=False, try_gcs=False)
            records = [source[i] for i in range(len(source))]
            arrays[f"{split}_images"] = np.stack([np.asarray(r["image"]).reshape(spec.image_shape) for r in records])
            arrays[f"{split}_labels"] = np.asarray([int(r["label"]) for r in records], dtype=np.int64)
    except Exception as e:  # TFDS raises many types (KeyError, AssertionError, ...) for "not prepared".
        detail = " ".join(str(e).split())  # TFDS messages span lines; keep the error one line.
        raise DataError(f"no prepared local TFDS dataset {name!r}: {type(e).__name__}: {detail}") from e
    finally:
        absl_logging.set_verbosity(verbosity)
    for split in spec.split_sizes:
        labels = arrays[f"{split}_labels"]
        if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
            raise DataError(f"TFDS {name} {split} labels outside 0..{spec.num_classes - 1}")
        arrays[f"{split}_labels"] = labels.astype(np.uint8)
    arrays_read = {key: np.ascontiguousarray(arrays[key], dtype=np.uint8).tobytes() for key in IDX_FILES}
    entries = {key: data_checksums.file_record(f"tfds:{name}/{key}", blob) for key, blob in arrays_read.items()}
    fingerprint = {"dataset": name, "source": f"tfds:{name}", "files": entries,
                   "paths": {key: f"tfds:{name}/{key}" for key in IDX_FILES}}
    return check_arrays(name, arrays, f"tfds:{name}", fingerprint)


def load_dataset(name: str = "fashion_mnist", data_dir=None, download: bool = False,
                 base_url: str | None = None) -> Dataset:
    """Loads `name` ('fashion_mnist' or 'mnist') as uint8 arrays (SPEC.md "Data").

    With `data_dir` only that directory is used. Otherwise tries
    `$SPARK_JAX_DATA_DIR`, the Debian location, the download cache, then a
    prepared local TFDS copy. Raises DataError listing every attempt and how
    to get the data. With `download` (and `spark_jax.setting.download.enabled()`), a
    dataset no source has is first downloaded (`spark_jax.setting.download.fetch`,
    from `base_url` or the mirrors) into `data_dir/<name>`, else the cache.
    """
    check_name(name)
    if data_dir is not None:
        if download and _download_enabled() and find_idx_files(data_dir, name) is None:
            return _download_and_load(name, pathlib.Path(data_dir) / name, base_url)
        return load_from_dir(data_dir, name)
    attempts = []
    dirs = []
    if os.environ.get(ENV_VAR):
        dirs.append((f"${ENV_VAR}", os.environ[ENV_VAR]))
    if name in DEBIAN_DIRS:
        dirs.append(("Debian package", DEBIAN_DIRS[name]))
    else:
        attempts.append(f"Debian package: none exists for {name}")
    if not os.environ.get(ENV_VAR) and _cache_dir(name).is_dir():  # an earlier download (else in $ENV_VAR)
        dirs.append(("download cache", _cache_dir(name)))
    for label, d in dirs:
        try:
            return load_from_dir(d, name)
        except DataError as e:
            attempts.append(f"{label} {d}: {str(e).removesuffix('; ' + _HOW_TO_GET)}")
    if not os.environ.get(ENV_VAR):
        attempts.insert(0, f"${ENV_VAR}: not set")
    try:
        return load_from_tfds(name)
    except DataError as e:
        attempts.append(str(e))
    if download and _download_enabled():
        return _download_and_load(name, None, base_url)
    raise DataError(f"could not find dataset {name!r} (tried: {' | '.join(attempts)}); to get it: {_HOW_TO_GET}")


def _cache_dir(name: str) -> pathlib.Path:
    from spark_jax.setting import download  # pylint: disable=g-import-not-at-top

    return download.cache_dir(name)


def _download_enabled() -> bool:
    from spark_jax.setting import download  # pylint: disable=g-import-not-at-top

    return download.enabled()


def _download_and_load(name: str, dest, base_url) -> Dataset:
    """Downloads the files of `name` into `dest` (None: the cache) and reads them (spark_jax.setting.download)."""
    from spark_jax.setting import download  # pylint: disable=g-import-not-at-top

    return load_from_dir(download.fetch(name, dest, base_url), name)


def normalize_images(images_uint8: np.ndarray, name: str) -> np.ndarray:
    """uint8 [..., H, W] -> float32 [..., H, W, 1] = (x/255 - mean)/std of dataset `name` (its `DatasetSpec`)."""
    spec = dataset_spec(name)
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8:
        raise ValueError(f"normalize_images expects uint8 pixels, got {images.dtype}")
    mean, std = spec.mean, spec.std
    # A 256-entry lookup table: one gather instead of three passes over the images.
    table = (np.arange(256, dtype=np.float32) / np.float32(255.0) - np.float32(mean)) / np.float32(std)
    return table[images][..., None]
