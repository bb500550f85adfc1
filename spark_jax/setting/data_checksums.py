"""Which dataset a file is: the canonical files' sizes and SHA-256 sums (issue 16, "wrong data").

Per dataset and IDX file, (bytes, sha256) of the published `.gz` file and of
its uncompressed contents. Computed from the canonical files (shared/data,
whose README gives their provenance) and cross-checked against published
lists: the `.gz` SHA-256 sums are those TensorFlow Datasets and other loaders
pin for fashion-mnist.s3-website.eu-central-1.amazonaws.com and
storage.googleapis.com/cvdf-datasets/mnist; their MD5 sums are the published
ones (`PUBLISHED_MD5`: Zalando's README, torchvision, yann.lecun.com).

A run records a fingerprint of the files it read (`file_record`, one per
file: name, bytes, sha256, and which canonical file it is, if any) in its
config.json, and `--resume` refuses other data (`fingerprint_difference`).
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import NamedTuple

NAMES = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST"}  # how messages name the datasets


class Canonical(NamedTuple):
    """One canonical file: (bytes, sha256) of the `.gz` and of its uncompressed contents."""

    gz: tuple[int, str]
    raw: tuple[int, str]


CANONICAL: dict[str, dict[str, Canonical]] = {
    "fashion_mnist": {
        "train_images": Canonical((26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
                                  (47040016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888")),
        "train_labels": Canonical((29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
                                  (60008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9")),
        "test_images": Canonical((4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
                                 (7840016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b")),
        "test_labels": Canonical((5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
                                 (10008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34")),
    },
    "mnist": {
        "train_images": Canonical((9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
                                  (47040016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db")),
        "train_labels": Canonical((28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
                                  (60008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5")),
        "test_images": Canonical((1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
                                 (7840016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7")),
        "test_labels": Canonical((4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
                                 (10008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2")),
    },
}
# The published md5s of the `.gz` files (Zalando's README, torchvision), checked against the files by
# tests/test_download.py.
PUBLISHED_MD5 = {
    "fashion_mnist": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                      "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                      "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                      "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    "mnist": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
              "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
              "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
}
# File names of the IDX keys (as spark_jax.setting.data.IDX_FILES; repeated so that this module imports nothing).
FILE_NAMES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
              "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


class Match(NamedTuple):
    """A canonical file: dataset ('fashion_mnist' | 'mnist'), IDX key ('train_images', ...), form ('gz' | 'raw')."""

    dataset: str
    key: str
    form: str

    def describe(self) -> str:
        """'MNIST's train-images-idx3-ubyte.gz' (or the uncompressed name for form 'raw')."""
        return f"{NAMES[self.dataset]}'s {FILE_NAMES[self.key]}{'.gz' if self.form == 'gz' else ''}"


_INDEX = {(size, sha): Match(ds, key, form) for ds, files in CANONICAL.items() for key, c in files.items()
          for form, (size, sha) in (("gz", c.gz), ("raw", c.raw))}


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """sha256 of a file read in `chunk`-byte blocks (a download checked in place, never held whole)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def identify(size: int, digest: str) -> Match | None:
    """The canonical file of this size and SHA-256, or None (a file of the user's own)."""
    return _INDEX.get((int(size), digest))


def file_record(path, blob: bytes, match: Match | None = None, digest: str | None = None) -> dict:
    """{'file', 'size', 'sha256', 'canonical'} of one file read as `blob` (the fingerprint's entry).

    `canonical` is e.g. "MNIST's train-images-idx3-ubyte.gz", or None for a file of no published sum;
    `digest`: sha256(blob) when the caller has it already (a file is hashed once).
    """
    digest = digest or sha256(blob)
    match = match or identify(len(blob), digest)
    return {"file": pathlib.Path(path).name, "size": len(blob), "sha256": digest,
            "canonical": match.describe() if match else None}


def fingerprint_difference(recorded: dict, current: dict) -> str | None:
    """The first file whose data differ between two data fingerprints, as one clause; None if they agree.

    Data agree when the bytes do, or when both are the same canonical file (`.gz` or uncompressed: the
    same arrays); files of no published checksum must agree byte for byte.

    A fingerprint is {'source': str, 'files': {key: file_record}, 'partition_file': file_record | None}
    (paths aside: moved data are the same data). Keys are compared in sorted order, the partition last.
    """
    old = {**recorded.get("files", {}), "partition_file": recorded.get("partition_file")}
    new = {**current.get("files", {}), "partition_file": current.get("partition_file")}
    for key in sorted(old.keys() | new.keys(), key=lambda k: (k == "partition_file", k)):
        a, b = old.get(key), new.get(key)
        if _same(a, b):
            continue
        where = current.get("paths", {}).get(key) or (b or {}).get("file") or key
        if a is None:
            return f"{where} was not part of the run's data (config.json records no {key})"
        if b is None:
            return f"the run's {a['file']} ({key}) is not part of the data now read from {current.get('source')}"
        return (f"{where} differs from the {a['file']} the run started with ({b['size']} bytes, sha256 "
                f"{b['sha256'][:12]}; config.json records {a['size']} bytes, sha256 {a['sha256'][:12]})")
    return None


def _same(a: dict | None, b: dict | None) -> bool:
    """The same bytes, or the same canonical file in another form (.gz, uncompressed, recompressed)."""
    if a is None or b is None:
        return a is b
    if a.get("size") == b.get("size") and a.get("sha256") == b.get("sha256"):
        return True
    content = [r.get("canonical") for r in (a, b)]
    return all(isinstance(c, str) for c in content) and len({c.removesuffix(".gz") for c in content}) == 1
