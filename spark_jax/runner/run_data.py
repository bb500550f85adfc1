"""The data a run uses: dataset, partition and graphs, checked and fingerprinted (SPEC "Data"; issue 16).

`load(config)` is the host side of `experiment.prepare`: it reads the dataset
(its files hashed once into a fingerprint, a file of the other dataset refused,
`spark_jax.setting.data`), builds the partition named by `config.partition` (a
partition file read once, checked and hashed, its selected nodes non-empty),
checks that the run fits in memory before anything of the size of the node
count is allocated (`run_budget`), then draws the first graph (feasibility).

A run records the fingerprint in config.json; `check_same_data` refuses a
`--resume` whose files differ from those recorded, naming the file.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
from absl import logging

from spark_jax.runner import distributed, run_budget
from spark_jax.setting import data, data_checksums, partition, topology
from spark_jax.setting.models import model_for_run, num_params
from spark_jax.rng import numpy_rng, stream_key
from spark_jax.runner.run_io import RunDir
from spark_jax.runner.validation import ConfigError


class Loaded(NamedTuple):
    """The host-side inputs of a run.

    dataset: uint8 arrays and their fingerprint; partition: the M = config.partition.num_nodes shards;
    topology: the graph stream (round 0 drawn, so feasible); fingerprint: what config.json records,
    {'dataset', 'source', 'files', 'paths', 'partition_file', 'partition_path'}.
    """

    dataset: data.Dataset
    partition: partition.Partition
    topology: topology.TopologyStream
    fingerprint: dict


def _file_split(config) -> str:
    return "iid" if config.partition.iid else f"alpha{config.partition.alpha:g}"


def build_partition(config, labels: np.ndarray) -> partition.Partition:
    """The node partition named by `config.partition` (SPEC "Data")."""
    return build_partition_recorded(config, labels)[0]


def build_partition_recorded(config, labels: np.ndarray) -> tuple[partition.Partition, dict | None, str | None]:
    """(partition, fingerprint entry of the partition file or None, its path or None).

    'ntk_dfl_file': the first config.partition.num_nodes nodes of the file, each of which must hold
    samples (ValueError naming the file otherwise).
    """
    pc = config.partition
    rng = numpy_rng(stream_key(config.seed, "data"), 0)
    if pc.kind == "ntk_dfl_file":
        path = partition.ntk_dfl_partition_path(config.data.dataset, 300, _file_split(config), pc.file_seed,
                                                data_dir=config.data.data_dir or None)
        full, record = partition.read_partition_file(path, 300, num_train=len(labels))
        if pc.num_nodes > full.num_nodes:
            raise ConfigError(f"partition.num_nodes={pc.num_nodes} but the NTK-DFL partition files have "
                              f"{full.num_nodes} nodes; use partition.kind='ntk_dfl' for more nodes")
        end = int(full.offsets[pc.num_nodes])
        part = partition.Partition(full.offsets[: pc.num_nodes + 1], full.indices[:end])
        used = "all its" if pc.num_nodes == full.num_nodes else f"the first {pc.num_nodes} of its"
        partition.check_nonempty(part, f"{path} ({used} {full.num_nodes} nodes, partition.num_nodes={pc.num_nodes})")
        return part, record, str(path)
    if pc.kind == "ntk_dfl":
        return partition.ntk_dfl_dirichlet(labels, pc.num_nodes, pc.samples_per_node, pc.alpha, rng), None, None
    if pc.kind == "dirichlet_hsu":
        return partition.hsu_dirichlet(labels, pc.num_nodes, pc.alpha, rng, min_size=pc.min_size), None, None
    if pc.kind == "iid":
        return partition.iid(labels, pc.num_nodes, rng, samples_per_node=pc.samples_per_node), None, None
    raise ConfigError(f"unknown partition.kind {pc.kind!r}")


def make_topology(config) -> topology.TopologyStream:
    tc = config.topology
    topo_key = stream_key(config.seed, "topology")
    return topology.TopologyStream(tc.kind, config.partition.num_nodes, degree=tc.degree, p=tc.p,
                                   dynamic=tc.dynamic, mixing=tc.mixing,
                                   seed_rng_fn=lambda r: numpy_rng(topo_key, r))


def load(config) -> Loaded:
    """Dataset, partition, memory check, topology (round 0 drawn); every failure one line, nothing allocated
    at the node count's scale before the memory check."""
    ds = data.load_dataset(config.data.dataset, config.data.data_dir or None, download=config.data.download,
                           base_url=config.data.base_url or None)
    part, record, path = build_partition_recorded(config, ds.train_labels)  # e.g. more nodes than samples
    check_memory(config, int(part.counts.max()))
    topo = make_topology(config)  # graph feasibility (e.g. odd M with odd degree)
    topo.graph(0)
    fingerprint = {**(ds.fingerprint or {"dataset": ds.name, "source": ds.source, "files": {}, "paths": {}}),
                   "partition_file": record, "partition_path": path}
    if path is not None:
        fingerprint["paths"] = {**fingerprint["paths"], "partition_file": path}
    return Loaded(ds, part, topo, fingerprint)


def check_memory(config, n_max: int) -> None:
    """ConfigError naming partition.num_nodes when the run cannot fit in the memory available (`run_budget`)."""
    model = model_for_run(config)
    d = num_params(jax.eval_shape(model.init, jax.random.key(0)))
    tc, m = config.topology, config.partition.num_nodes
    slots = topology.num_slots_for(tc.kind, m, degree=tc.degree, p=tc.p)
    problem = run_budget.memory_problem(config, n_max, d, slots, run_budget.available_memory(), _device_free())
    if problem:
        raise ConfigError(problem)


def _device_free() -> int | None:
    """Free bytes of the first accelerator (None on CPU or when the backend does not say)."""
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        return None
    try:
        stats = device.memory_stats() or {}
    except Exception:  # pylint: disable=broad-except  # backends without memory_stats
        return None
    if "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def digest(loaded: Loaded) -> bytes:
    """What every process of a multi-process run must have loaded alike: images, labels, partition, graph."""
    ds, part, topo = loaded.dataset, loaded.partition, loaded.topology
    return distributed.digest_arrays(ds.train_images, ds.train_labels, ds.test_images, ds.test_labels,
                                     part.offsets, part.indices, topo.graph(0).neighbors)


def check_same_data(run_dir: RunDir, fingerprint: dict) -> None:
    """Raises data.DataError when a resumed run's data differ from those its config.json records.

    A run directory from before data fingerprints (none recorded) resumes with a warning.
    """
    recorded = run_dir.read_data_fingerprint()
    if recorded is None:
        logging.warning("%s/config.json records no data fingerprint (a run from before fingerprints); the data "
                        "are not compared", run_dir.path)
        return
    difference = data_checksums.fingerprint_difference(recorded, fingerprint)
    if difference:
        raise data.DataError(f"cannot resume {run_dir.path}: {difference}; resume with the data the run started "
                             "with or pass another --workdir")
