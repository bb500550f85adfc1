"""Family 2 of issue 16: the wrong data are refused, the data used are recorded.

A file that is another dataset's canonical file (by size and SHA-256, `.gz`,
uncompressed or recompressed) is one `error:` line naming it, before anything
is written; a file of no published sum is the user's own data, used and
recorded. config.json records every file's size and sha256 (the four IDX
files and the partition file), and `--resume` refuses data that differ from
the record, naming the file, with every file of the run byte-identical.
Refusals run in-process (the CLI's `error:` line for DataError is the headline
case below, through the real CLI).
"""

import gzip
import json
import pathlib
import shutil

import numpy as np
import pytest

from experiments.configs import tiny
from spark_jax.runner import experiment, run_data
from spark_jax.setting import data, data_checksums
from spark_jax.setting.data import DataError
from tests.faults import assert_nothing_half_written, assert_one_line_error, run_cli, snapshot

IDX = {key: stem + ".gz" for key, stem in data.IDX_FILES.items()}
PARTITION = pathlib.Path("partitions/fmnist300/alpha0.1/seed0.npz")
ARGS = ["--config=tiny", "--config.partition.kind=ntk_dfl_file", "--config.checkpoint_every=1"]


def _config(data_dir, **over):
    c = tiny.get_config()
    c.partition.kind, c.checkpoint_every, c.data.data_dir = "ntk_dfl_file", 1, str(data_dir)
    for k, v in over.items():
        section, field = k.split("__")
        c[section][field] = v
    return c


def _root(real_data_dir, where: pathlib.Path, replace=None) -> pathlib.Path:
    """A data root: fashion_mnist/ (links to the real files, some replaced: {file name: bytes}) and the
    seed0 partition file (a copy)."""
    (where / "fashion_mnist").mkdir(parents=True)
    for name in IDX.values():
        (where / "fashion_mnist" / name).symlink_to(pathlib.Path(real_data_dir, "fashion_mnist", name))
    for name, blob in (replace or {}).items():
        target = where / "fashion_mnist" / name
        target.unlink(missing_ok=True)
        if blob is not None:
            target.write_bytes(blob)
    (where / PARTITION).parent.mkdir(parents=True)
    shutil.copy(pathlib.Path(real_data_dir, PARTITION), where / PARTITION)
    return where


def _real(real_data_dir, dataset, name) -> bytes:
    return pathlib.Path(real_data_dir, dataset, name).read_bytes()


def _own_labels(real_data_dir) -> bytes:
    """Fashion-MNIST's test labels with label 0 changed: a file of no published checksum."""
    raw = bytearray(gzip.decompress(_real(real_data_dir, "fashion_mnist", IDX["test_labels"])))
    raw[8] = (raw[8] + 1) % 10
    return gzip.compress(bytes(raw), mtime=0)


def test_canonical_checksums_are_those_of_the_real_files(real_data_dir):
    for dataset, files in data_checksums.CANONICAL.items():
        for key, canonical in files.items():
            blob = _real(real_data_dir, dataset, IDX[key])
            raw = gzip.decompress(blob)
            assert (len(blob), data_checksums.sha256(blob)) == canonical.gz, (dataset, key)
            assert (len(raw), data_checksums.sha256(raw)) == canonical.raw, (dataset, key)


def test_each_file_is_hashed_once_per_load_and_nothing_is_cached(real_data_dir, monkeypatch):
    calls = []
    real_sha = data_checksums.sha256
    monkeypatch.setattr(data_checksums, "sha256", lambda blob: calls.append(len(blob)) or real_sha(blob))
    loaded = run_data.load(_config(real_data_dir))
    assert sorted(calls) == sorted([*(s for s, _ in (c.gz for c in data_checksums.CANONICAL["fashion_mnist"]
                                                      .values())), (pathlib.Path(real_data_dir) / PARTITION)
                                    .stat().st_size])  # the 4 IDX files and the partition file, once each
    fp = loaded.fingerprint
    assert fp["files"]["train_images"] == {
        "file": "train-images-idx3-ubyte.gz", "size": 26421880, "canonical": "Fashion-MNIST's train-images-idx3-ubyte.gz",
        "sha256": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"}
    assert fp["partition_file"]["file"] == "seed0.npz" and fp["partition_path"] == str(
        pathlib.Path(real_data_dir) / PARTITION)
    data.load_dataset("fashion_mnist", real_data_dir)
    assert len(calls) == 9  # a second load hashes again


def test_own_data_is_used_and_recorded(real_data_dir, tmp_path):
    root = _root(real_data_dir, tmp_path / "own", {IDX["test_labels"]: _own_labels(real_data_dir)})
    ds = data.load_dataset("fashion_mnist", root)
    files = ds.fingerprint["files"]
    assert files["test_labels"]["canonical"] is None and files["test_labels"]["file"] == "t10k-labels-idx1-ubyte.gz"
    assert files["train_labels"]["canonical"] == "Fashion-MNIST's train-labels-idx1-ubyte.gz"
    assert ds.test_labels[0] == (9 + 1) % 10


# (case, data root built in tmp_path from the real files -> (data_dir, dataset), expected message)
def _mnist_dir(real, tmp):
    return pathlib.Path(real, "mnist"), "fashion_mnist"


def _fashion_for_mnist(real, tmp):
    return pathlib.Path(real, "fashion_mnist"), "mnist"


def _one_mnist_file(real, tmp):
    return _root(real, tmp / "r", {IDX["test_labels"]: _real(real, "mnist", IDX["test_labels"])}), "fashion_mnist"


def _raw_mnist_file(real, tmp):
    raw = gzip.decompress(_real(real, "mnist", IDX["train_labels"]))
    return _root(real, tmp / "r", {IDX["train_labels"]: None, "train-labels-idx1-ubyte": raw}), "fashion_mnist"


def _recompressed_mnist(real, tmp):
    blob = gzip.compress(gzip.decompress(_real(real, "mnist", IDX["test_labels"])), compresslevel=9, mtime=0)
    return _root(real, tmp / "r", {IDX["test_labels"]: blob}), "fashion_mnist"


def _swapped_names(real, tmp):
    return _root(real, tmp / "r", {IDX["train_labels"]: _real(real, "fashion_mnist", IDX["test_labels"])}), \
        "fashion_mnist"


WRONG_DATA = [
    ("mnist-dir-for-fashion", _mnist_dir, "{d}/train-images-idx3-ubyte.gz is MNIST's train-images-idx3-ubyte.gz, "
     "but the config asks for Fashion-MNIST (data.dataset=fashion_mnist)"),
    ("fashion-dir-for-mnist", _fashion_for_mnist, "{d}/train-images-idx3-ubyte.gz is Fashion-MNIST's "
     "train-images-idx3-ubyte.gz, but the config asks for MNIST (data.dataset=mnist)"),
    ("one-mnist-file", _one_mnist_file, "{d}/fashion_mnist/t10k-labels-idx1-ubyte.gz is MNIST's "
     "t10k-labels-idx1-ubyte.gz, but the config asks for Fashion-MNIST (data.dataset=fashion_mnist)"),
    ("uncompressed-mnist-file", _raw_mnist_file, "{d}/fashion_mnist/train-labels-idx1-ubyte is MNIST's "
     "train-labels-idx1-ubyte, but the config asks for Fashion-MNIST (data.dataset=fashion_mnist)"),
    ("recompressed-mnist-file", _recompressed_mnist, "{d}/fashion_mnist/t10k-labels-idx1-ubyte.gz holds MNIST's "
     "t10k-labels-idx1-ubyte (recompressed), but the config asks for Fashion-MNIST (data.dataset=fashion_mnist)"),
    ("test-labels-as-train-labels", _swapped_names, "{d}/fashion_mnist/train-labels-idx1-ubyte.gz is "
     "Fashion-MNIST's t10k-labels-idx1-ubyte.gz, not Fashion-MNIST's train-labels-idx1-ubyte.gz; put each IDX "
     "file under its own name"),
]


@pytest.mark.parametrize("make,message", [c[1:] for c in WRONG_DATA], ids=[c[0] for c in WRONG_DATA])
def test_wrong_data_is_refused_before_anything_is_written(make, message, real_data_dir, tmp_path):
    data_dir, dataset = make(real_data_dir, tmp_path)
    config = _config(data_dir, data__dataset=dataset, partition__kind="ntk_dfl")
    with pytest.raises(DataError) as err:
        experiment.run(config, tmp_path / "run")
    assert str(err.value) == message.format(d=data_dir)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def started(real_data_dir, tmp_path_factory):
    """(data root, run directory) of a run on linked copies of the real data, left resumable."""
    tmp = tmp_path_factory.mktemp("data")
    root = _root(real_data_dir, tmp / "root")
    workdir = tmp / "run"
    experiment.run(_config(root), workdir)
    (workdir / "summary.json").unlink()  # as if killed before its summary: --resume has work to do
    recorded = json.loads((workdir / "config.json").read_text())["data"]
    assert recorded["files"]["test_labels"]["sha256"] == data_checksums.CANONICAL["fashion_mnist"]["test_labels"].gz[1]
    assert recorded["partition_file"]["size"] == (root / PARTITION).stat().st_size
    return root, workdir


def _resumable(started, tmp_path) -> pathlib.Path:
    workdir = tmp_path / "run"
    shutil.copytree(started[1], workdir)
    return workdir


@pytest.mark.slow
def test_resume_with_mnist_is_one_line_and_keeps_every_file(started, real_data_dir, tmp_path):
    """The headline case through the real CLI: `--resume --data_dir=<MNIST>` in the middle of a run."""
    workdir = _resumable(started, tmp_path)
    before = snapshot(workdir)
    mnist = pathlib.Path(real_data_dir, "mnist")
    proc = run_cli("run", [*ARGS, f"--workdir={workdir}", f"--data_dir={mnist}", "--resume"], real_data_dir)
    assert_one_line_error(proc, f"error: {mnist}/train-images-idx3-ubyte.gz is MNIST's train-images-idx3-ubyte.gz, "
                                "but the config asks for Fashion-MNIST (data.dataset=fashion_mnist)")
    assert snapshot(workdir) == before and not (workdir / ".lock").exists()
    assert_nothing_half_written(workdir)


def _differs(path, was, now_size, now_sha, old_size, old_sha):
    return (f"{path} differs from the {was} the run started with ({now_size} bytes, sha256 {now_sha[:12]}; "
            f"config.json records {old_size} bytes, sha256 {old_sha[:12]})")


def _reversed_node_0(path: pathlib.Path) -> bytes:
    with np.load(path) as f:
        offsets, indices = f["offsets"], f["indices"].copy()
    indices[: offsets[1]] = indices[: offsets[1]][::-1]
    out = path.with_suffix(".tmp.npz")
    np.savez(out, offsets=offsets, indices=indices)
    return out.read_bytes()


def _resume_case(name, real, tmp):
    """(data root, path named, file it replaces) of each resume with other data."""
    if name == "own-labels":
        root = _root(real, tmp / "r", {IDX["test_labels"]: _own_labels(real)})
        return root, root / "fashion_mnist" / IDX["test_labels"], IDX["test_labels"]
    root = _root(real, tmp / "r")
    (root / PARTITION).write_bytes(_reversed_node_0(root / PARTITION))
    return root, root / PARTITION, "seed0.npz"


@pytest.mark.parametrize("case", ["own-labels", "partition-file"])
def test_resume_with_other_data_names_the_file(case, started, real_data_dir, tmp_path):
    workdir = _resumable(started, tmp_path)
    before = snapshot(workdir)
    root, path, was = _resume_case(case, real_data_dir, tmp_path)
    recorded = json.loads(before["config.json"])["data"]
    old = recorded["partition_file"] if was == "seed0.npz" else recorded["files"]["test_labels"]
    blob = path.read_bytes()
    with pytest.raises(DataError) as err:
        experiment.run(_config(root), workdir, resume=True)
    assert str(err.value) == (f"cannot resume {workdir}: "
                              + _differs(path, was, len(blob), data_checksums.sha256(blob), old["size"], old["sha256"])
                              + "; resume with the data the run started with or pass another --workdir")
    assert snapshot(workdir) == before and not (workdir / ".lock").exists()
    assert_nothing_half_written(workdir)


def test_resume_with_the_same_data_moved_and_a_run_from_before_fingerprints(started, real_data_dir, tmp_path):
    """Paths are not compared (moved data are the same data); a config.json without 'data' resumes unchecked."""
    workdir = _resumable(started, tmp_path)
    moved = _root(real_data_dir, tmp_path / "moved")
    summary = experiment.run(_config(moved), workdir, resume=True)
    assert summary["run_status"] == "resumed"
    old = tmp_path / "old"
    shutil.copytree(started[1], old)
    record = json.loads((old / "config.json").read_text())
    del record["data"]
    (old / "config.json").write_text(json.dumps(record))
    other = _root(real_data_dir, tmp_path / "other", {IDX["test_labels"]: _own_labels(real_data_dir)})
    assert experiment.run(_config(other), old, resume=True)["run_status"] == "resumed"


def test_resume_with_a_canonical_file_uncompressed_is_the_same_data(started, real_data_dir, tmp_path):
    """The canonical test labels uncompressed hold the same arrays: the resume goes on (a file of no published
    checksum must agree byte for byte: test_resume_with_other_data_names_the_file)."""
    workdir = _resumable(started, tmp_path)
    gz_labels = _real(real_data_dir, "fashion_mnist", IDX["test_labels"])
    root = _root(real_data_dir, tmp_path / "r",
                 {IDX["test_labels"]: None, "t10k-labels-idx1-ubyte": gzip.decompress(gz_labels)})
    assert experiment.run(_config(root), workdir, resume=True)["run_status"] == "resumed"
    assert json.loads((workdir / "config.json").read_text())["data"]["files"]["test_labels"]["canonical"] == (
        "Fashion-MNIST's t10k-labels-idx1-ubyte.gz")  # the record of the run's start is kept


@pytest.mark.parametrize("damaged", [3, {"files": 3}, {"files": {"test_labels": {"size": "5148"}}},
                                     {"files": {}, "partition_file": []}])
def test_a_damaged_data_record_is_one_line_naming_config_json(damaged, started, tmp_path):
    workdir = _resumable(started, tmp_path)
    record = json.loads((workdir / "config.json").read_text())
    record["data"] = damaged
    (workdir / "config.json").write_text(json.dumps(record))
    before = snapshot(workdir)
    with pytest.raises(ValueError) as err:
        experiment.run(_config(started[0]), workdir, resume=True)
    assert str(err.value) == (f"{workdir}/config.json: 'data' is not a data fingerprint (expected 'files' of "
                              "{file, size, sha256} records)")
    assert snapshot(workdir) == before and not (workdir / ".lock").exists()
