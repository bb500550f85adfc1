"""Training labels -> per-node shards of sample indices (SPEC.md "Data").

Convention: a smaller Dirichlet concentration `alpha` gives more heterogeneous
(label-skewed) nodes; alpha -> infinity approaches IID.

A `Partition` is ragged, stored CSR-style: node u owns training-set indices
`indices[offsets[u]:offsets[u+1]]`. Partitions come from

- `ntk_dfl_dirichlet`: the NTK-DFL recipe (each node draws its own class
  proportions; nodes may share samples, a node never repeats one);
- `hsu_dirichlet`: Hsu et al. 2019 (each class split over nodes; disjoint);
- `iid`: a uniform random disjoint split;
- `load_ntk_dfl_partition`: the exact NTK-DFL index files (`.npz`).

`read_partition_file` reads one `.npz` once, checks it (every failure names the
file) and returns its fingerprint entry (size, sha256) for the run's config.json.
Text and heat-map reports of a partition are in `spark_jax.setting.partition_report`.

`make_node_data` turns a partition into padded arrays plus masks, so that one
compiled program serves every node (STYLE.md "Ragged data as padding").
"""

from __future__ import annotations

import io
import os
import pathlib
import zipfile
import zlib
from typing import NamedTuple

import numpy as np

from spark_jax.setting import data, data_checksums

BUNDLED_DIR = pathlib.Path(__file__).parent / "partition_files"
_FILE_PREFIX = {"fashion_mnist": "fmnist", "mnist": "mnist"}
_MAX_REDRAWS = 1000


class Partition(NamedTuple):
    """Node shards: node u owns `indices[offsets[u]:offsets[u+1]]`.

    offsets: int64 [M+1], starts at 0, non-decreasing, ends at len(indices).
    indices: int64 [sum n_i], indices into the training set.
    """

    offsets: np.ndarray
    indices: np.ndarray

    @property
    def num_nodes(self) -> int:
        return len(self.offsets) - 1

    @property
    def counts(self) -> np.ndarray:
        """int64 [M]: samples per node."""
        return np.diff(self.offsets)

    def node_indices(self, u: int) -> np.ndarray:
        """int64 [n_u]: the training-set indices of node u."""
        if not 0 <= u < self.num_nodes:
            raise IndexError(f"node {u} out of range for a partition of {self.num_nodes} nodes")
        return self.indices[self.offsets[u]:self.offsets[u + 1]]


class PartitionFileNotFoundError(FileNotFoundError):
    """No NTK-DFL partition file at any searched location; the message lists what exists."""


def from_node_lists(node_lists) -> Partition:
    """Builds a Partition from a sequence of M index arrays (one per node)."""
    node_lists = [np.asarray(a, dtype=np.int64).reshape(-1) for a in node_lists]
    counts = np.array([len(a) for a in node_lists], dtype=np.int64)
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(counts)])
    indices = np.concatenate(node_lists) if node_lists else np.zeros(0, np.int64)
    return Partition(offsets=offsets, indices=indices.astype(np.int64))


def validate_partition(partition: Partition, num_train: int | None = None, where: str = "partition") -> Partition:
    """Checks the CSR invariants (and indices < num_train if given); ValueError naming `where`."""
    offsets, indices = np.asarray(partition.offsets), np.asarray(partition.indices)
    if offsets.ndim != 1 or indices.ndim != 1 or len(offsets) < 2:
        raise ValueError(f"{where}: offsets must be [M+1] with M >= 1 and indices 1-D; "
                         f"got shapes {offsets.shape}, {indices.shape}")
    if not (np.issubdtype(offsets.dtype, np.integer) and np.issubdtype(indices.dtype, np.integer)):
        raise ValueError(f"{where}: offsets/indices must be integers, got {offsets.dtype}/{indices.dtype}")
    if offsets[0] != 0 or offsets[-1] != len(indices) or np.any(np.diff(offsets) < 0):
        raise ValueError(f"{where}: offsets must start at 0, be non-decreasing and end at "
                         f"len(indices)={len(indices)} (got first {offsets[0]}, last {offsets[-1]})")
    if indices.size and indices.min() < 0:
        raise ValueError(f"{where}: negative index {indices.min()}")
    if num_train is not None and indices.size and indices.max() >= num_train:
        raise ValueError(f"{where}: index {indices.max()} out of range for a training set of {num_train}")
    return Partition(offsets=offsets.astype(np.int64), indices=indices.astype(np.int64))


def _check_no_repeats(part: Partition, where: str) -> None:
    """ValueError naming the first node that holds a training index twice (a node never repeats a sample)."""
    if part.indices.size < 2:
        return
    nodes = np.repeat(np.arange(part.num_nodes, dtype=np.int64), part.counts)
    order = np.lexsort((part.indices, nodes))  # by node, then index
    same = (nodes[order][1:] == nodes[order][:-1]) & (part.indices[order][1:] == part.indices[order][:-1])
    if same.any():
        first = int(np.argmax(same))
        node, index = int(nodes[order][first]), int(part.indices[order][first])
        count = int(same.sum())
        raise ValueError(f"{where}: node {node} holds training index {index} twice ({count} repeated "
                         f"{'entry' if count == 1 else 'entries'} in all); a node never holds a sample twice")


def check_nonempty(part: Partition, where: str) -> None:
    """ValueError naming the first node without samples (every node trains on >= 1 sample, SPEC "Data")."""
    empty = np.flatnonzero(part.counts == 0)
    if empty.size == part.num_nodes:
        raise ValueError(f"{where}: all {part.num_nodes} nodes used hold no samples")
    if empty.size:
        raise ValueError(f"{where}: node {int(empty[0])} holds no samples ({empty.size} of the "
                         f"{part.num_nodes} nodes used are empty); every node needs at least one")


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a non-empty 1-D integer array, got shape {labels.shape} {labels.dtype}")
    if labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {labels.min()}")
    return labels


def _check_common(labels, num_nodes: int, alpha: float | None = None) -> np.ndarray:
    labels = _check_labels(labels)
    if int(num_nodes) != num_nodes or num_nodes < 1:
        raise ValueError(f"num_nodes must be an integer >= 1, got {num_nodes}")
    if num_nodes > len(labels):
        raise ValueError(f"more nodes ({num_nodes}) than samples ({len(labels)})")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"alpha must be > 0 (smaller = more heterogeneous), got {alpha}")
    return labels


def ntk_dfl_dirichlet(labels, num_nodes: int, samples_per_node: int, alpha: float,
                      rng: np.random.Generator) -> Partition:
    """The NTK-DFL Dirichlet partition (data/README.md "partitions").

    For each node u: q ~ Dir(alpha * ones(C)) over the C classes present in
    `labels` [N]; the node takes int(samples_per_node * q_c) samples of class
    c from the front of that class's pool; every pool is reshuffled after each
    node. A node never holds a sample twice; two nodes may share samples. A
    node that would get 0 samples redraws q. Node indices are class-sorted,
    as in the NTK-DFL files. Returns M = num_nodes shards of <= samples_per_node.
    """
    labels = _check_common(labels, num_nodes, alpha)
    if int(samples_per_node) != samples_per_node or samples_per_node < 1:
        raise ValueError(f"samples_per_node must be an integer >= 1, got {samples_per_node}")
    classes = np.unique(labels)
    pools = [np.flatnonzero(labels == c) for c in classes]
    smallest = min(len(p) for p in pools)
    if samples_per_node > smallest:
        raise ValueError(f"samples_per_node ({samples_per_node}) exceeds the smallest class pool ({smallest}); "
                         "a node could not take its share without repeating a sample")
    for p in pools:
        rng.shuffle(p)
    node_lists = []
    for u in range(num_nodes):
        for _ in range(_MAX_REDRAWS):
            q = rng.dirichlet(np.full(len(classes), float(alpha)))
            take = (samples_per_node * q).astype(np.int64)
            if take.sum() > 0:
                break
        else:
            raise ValueError(f"node {u} drew 0 samples {_MAX_REDRAWS} times; "
                             f"raise samples_per_node ({samples_per_node}) or lower alpha ({alpha})")
        node_lists.append(np.concatenate([p[:k] for p, k in zip(pools, take)]))
        for p in pools:
            rng.shuffle(p)
    return from_node_lists(node_lists)


def hsu_dirichlet(labels, num_nodes: int, alpha: float, rng: np.random.Generator,
                  min_size: int = 10, max_tries: int = _MAX_REDRAWS) -> Partition:
    """Hsu et al. 2019 label-skew split: a disjoint cover of all N samples.

    Every class c is shuffled and split over the M nodes in proportions
    p ~ Dir(alpha * ones(M)) (cumulative cut points, floored). The whole draw
    is repeated until every node has >= min_size samples (ValueError after
    `max_tries` draws: lower min_size or raise alpha).
    """
    labels = _check_common(labels, num_nodes, alpha)
    if min_size < 0 or min_size * num_nodes > len(labels):
        raise ValueError(f"min_size ({min_size}) x num_nodes ({num_nodes}) must be in 0..{len(labels)} samples")
    pools = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(max_tries):
        parts = [[] for _ in range(num_nodes)]
        for pool in pools:
            pool = rng.permutation(pool)
            p = rng.dirichlet(np.full(num_nodes, float(alpha)))
            cuts = (np.cumsum(p) * len(pool)).astype(np.int64)[:-1]
            for u, chunk in enumerate(np.split(pool, cuts)):
                parts[u].append(chunk)
        node_lists = [np.sort(np.concatenate(c)) for c in parts]
        if min(len(a) for a in node_lists) >= min_size:
            return from_node_lists(node_lists)
    raise ValueError(f"no draw in {max_tries} gave every one of {num_nodes} nodes >= {min_size} samples "
                     f"at alpha={alpha}; lower min_size or raise alpha")


def iid(labels, num_nodes: int, rng: np.random.Generator, samples_per_node: int | None = None) -> Partition:
    """A uniform random disjoint split of the N = len(labels) samples.

    samples_per_node None: all N samples, node sizes differ by at most 1.
    Otherwise each node gets exactly samples_per_node (M * samples_per_node <= N).
    """
    labels = _check_common(labels, num_nodes)
    perm = rng.permutation(len(labels)).astype(np.int64)
    if samples_per_node is None:
        return from_node_lists(np.array_split(perm, num_nodes))
    if int(samples_per_node) != samples_per_node or samples_per_node < 1:
        raise ValueError(f"samples_per_node must be an integer >= 1 or None, got {samples_per_node}")
    if num_nodes * samples_per_node > len(labels):
        raise ValueError(f"{num_nodes} nodes x {samples_per_node} samples exceed the {len(labels)} samples "
                         "of a disjoint IID split")
    return from_node_lists(perm[:num_nodes * samples_per_node].reshape(num_nodes, samples_per_node))


def _search_roots(data_dir) -> list[pathlib.Path]:
    """Partition roots in search order: data_dir, else $SPARK_JAX_DATA_DIR; then the bundled copy."""
    roots = []
    if data_dir is not None:
        roots.append(pathlib.Path(data_dir) / "partitions")
    elif os.environ.get(data.ENV_VAR):
        roots.append(pathlib.Path(os.environ[data.ENV_VAR]) / "partitions")
    roots.append(BUNDLED_DIR)
    return roots


def _available(roots, set_name: str) -> str:
    """'split: seeds' listing of the files that do exist for `set_name` under `roots`."""
    found = {}
    for root in roots:
        for f in sorted((root / set_name).glob("*/seed*.npz")):
            found.setdefault(f.parent.name, set()).add(f.stem)
    if not found:
        return "none"
    return ", ".join(f"{split} ({' '.join(sorted(s))})" for split, s in sorted(found.items()))


def ntk_dfl_partition_path(dataset: str, num_nodes: int, split: str, seed: int, data_dir=None) -> pathlib.Path:
    """The first existing `partitions/<fmnist|mnist><nodes>/<split>/seed<s>.npz`.

    Searched under `data_dir` (if given, else `$SPARK_JAX_DATA_DIR`), then the
    copy bundled in the package. PartitionFileNotFoundError lists the paths
    tried and the splits/seeds that exist.
    """
    data.check_name(dataset)
    set_name = f"{_FILE_PREFIX[dataset]}{int(num_nodes)}"
    rel = pathlib.Path(set_name) / str(split) / f"seed{int(seed)}.npz"
    roots = _search_roots(data_dir)
    for root in roots:
        if (root / rel).is_file():
            return root / rel
    tried = ", ".join(str(root / rel) for root in roots)
    raise PartitionFileNotFoundError(f"no NTK-DFL partition file; tried {tried}; "
                                     f"available for {set_name}: {_available(roots, set_name)}")


def read_partition_file(path, num_nodes: int | None = None, num_train: int | None = None
                        ) -> tuple[Partition, dict]:
    """(partition, fingerprint entry) of one `.npz` partition file, read once and checked.

    The file must hold int arrays `offsets` [M+1] and `indices` (no pickles);
    M must be `num_nodes` if given. Every failure (a truncated or non-zip file,
    an object array, a missing array, broken CSR invariants, a repeated index)
    is a ValueError naming the file.
    """
    path = pathlib.Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
    if blob[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip archive (.npz) starts with one of these
        raise ValueError(f"{path}: not a readable .npz partition file (no zip header in its {len(blob)} bytes; "
                         "truncated or corrupt)")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as f:
            if "offsets" not in f or "indices" not in f:
                raise ValueError(f"{path}: expected arrays 'offsets' and 'indices', found {sorted(f.files)}")
            arrays = {name: _read_member(f, name, path) for name in ("offsets", "indices")}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise ValueError(f"{path}: not a readable .npz partition file ({type(e).__name__}: {e}; "
                         "truncated or corrupt)") from None
    part = validate_partition(Partition(**arrays), num_train, str(path))
    _check_no_repeats(part, str(path))
    if num_nodes is not None and part.num_nodes != num_nodes:
        raise ValueError(f"{path}: holds {part.num_nodes} nodes, expected {num_nodes}")
    return part, data_checksums.file_record(path, blob)


def _read_member(f, name: str, path: pathlib.Path) -> np.ndarray:
    """Array `name` of an open .npz; ValueError naming the file for an object (pickled) or unreadable array."""
    try:
        return f[name]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ValueError(f"{path}: array {name!r} is an object (pickled) array; expected int64 arrays "
                             "'offsets' and 'indices'") from None
        raise ValueError(f"{path}: array {name!r} cannot be read ({e}; truncated or corrupt)") from None


def load_ntk_dfl_partition(dataset: str = "fashion_mnist", num_nodes: int = 300, split: str = "alpha0.1",
                           seed: int = 0, data_dir=None, num_train: int | None = None) -> Partition:
    """Loads and validates one exact NTK-DFL partition (int64 `offsets`, `indices` in a .npz)."""
    path = ntk_dfl_partition_path(dataset, num_nodes, split, seed, data_dir)
    return read_partition_file(path, num_nodes, num_train)[0]


def label_histogram(partition: Partition, labels, num_classes: int) -> np.ndarray:
    """int64 [M, C]: hist[u, c] = number of samples of class c held by node u.

    C = num_classes (`data.dataset_spec(name).num_classes`; 10 for Fashion-MNIST and MNIST).
    """
    labels = _check_labels(labels)
    part = validate_partition(partition, len(labels))
    node_labels = labels[part.indices].astype(np.int64)
    if node_labels.size and node_labels.max() >= num_classes:
        raise ValueError(f"label {node_labels.max()} >= num_classes ({num_classes})")
    node_ids = np.repeat(np.arange(part.num_nodes, dtype=np.int64), part.counts)
    flat = np.bincount(node_ids * num_classes + node_labels, minlength=part.num_nodes * num_classes)
    return flat.reshape(part.num_nodes, num_classes).astype(np.int64)


class NodeData(NamedTuple):
    """Per-node training data padded to n_max (STYLE.md "Ragged data as padding plus masks").

    x: float32 [M, n_max, ...] (e.g. [M, n_max, 28, 28, 1]), zero on padding.
    y: int32 [M, n_max], 0 on padding.
    mask: bool [M, n_max], True on real samples.
    counts: int32 [M].
    """

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    counts: np.ndarray


def make_node_data(images, labels, partition: Partition, n_max: int | None = None) -> NodeData:
    """Gathers each node's samples into padded arrays.

    images: float [N, ...] already normalized (`data.normalize_images`);
    labels: int [N]. n_max defaults to the largest node; a smaller n_max is
    an error (it would drop samples).
    """
    images, labels = np.asarray(images), _check_labels(labels)
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be float (normalize with data.normalize_images first), got {images.dtype}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    part = validate_partition(partition, len(labels))
    counts = part.counts
    largest = int(counts.max())
    n_max = largest if n_max is None else int(n_max)
    if n_max < largest:
        raise ValueError(f"n_max ({n_max}) is smaller than the largest node ({largest} samples)")
    slot = np.arange(n_max, dtype=np.int64)
    mask = slot[None, :] < counts[:, None]
    gather = np.where(mask, part.offsets[:-1, None] + slot[None, :], 0)
    idx = np.where(mask, part.indices[np.minimum(gather, max(len(part.indices) - 1, 0))], 0)
    trailing = (1,) * (images.ndim - 1)
    x = np.where(mask.reshape(mask.shape + trailing), images[idx], 0).astype(np.float32)
    y = np.where(mask, labels[idx], 0).astype(np.int32)
    return NodeData(x=x, y=y, mask=mask, counts=counts.astype(np.int32))
