"""Family 8 of issue 16: partition files and absurd sizes, refused before anything is allocated or written.

A bad NTK-DFL partition file (truncated, not a zip, a flipped byte, an object
array, a missing or float array, a repeated index within a node, selected
nodes without samples) is one line naming the file; `algorithm_kw.taus` beyond the
integrator's work bound and a node count beyond the available memory are one
line naming the field, with the estimate; an XLA out-of-memory in a round is
one line naming the round and the size. The run directory never appears.
Cases run in-process (the CLI's `error:` line for ValueError is checked once,
for a truncated file, through the real CLI).
"""

import io
import pathlib

import jax
import numpy as np
import pytest

from experiments.configs import tiny
from spark_jax import algorithms
from spark_jax.runner import experiment, run_budget, run_data, validation
from spark_jax.runner.validation import ConfigError
from tests.faults import assert_one_line_error, run_cli

PARTITION = pathlib.Path("partitions/fmnist300/alpha0.1/seed0.npz")
IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
       "t10k-labels-idx1-ubyte.gz")
WHERE = "{p} (the first 8 of its 300 nodes, partition.num_nodes=8)"


def _config(data_dir=None, **over):
    c = tiny.get_config()
    c.partition.kind = "ntk_dfl_file"
    if data_dir is not None:
        c.data.data_dir = str(data_dir)
    if "algorithm" in over:
        algorithms.with_algorithm(c, over.pop("algorithm"))
    for k, v in over.items():  # 'a__b__c' sets config.a.b.c
        *parents, field = k.split("__")
        node = c
        for part in parents:
            node = node[part]
        node[field] = v
    return c


def _root(real_data_dir, tmp_path, write) -> pathlib.Path:
    """A data root: links to the real Fashion-MNIST files and a partition file made by `write(path)`."""
    root = tmp_path / "data"
    (root / "fashion_mnist").mkdir(parents=True)
    for name in IDX:
        (root / "fashion_mnist" / name).symlink_to(pathlib.Path(real_data_dir, "fashion_mnist", name))
    (root / PARTITION).parent.mkdir(parents=True)
    write(root / PARTITION, pathlib.Path(real_data_dir, PARTITION).read_bytes())
    return root


def _bytes(make):
    return lambda path, real: path.write_bytes(make(real))


def _flip(real: bytes) -> bytes:
    out = bytearray(real)
    out[len(out) // 2] ^= 0xFF
    return bytes(out)


def _arrays(counts=None, **arrays):
    """A 300-node file: node u holds `counts[u]` indices (default 1 each); `arrays` replace or add members."""
    counts = np.ones(300, np.int64) if counts is None else np.asarray(counts, np.int64)
    members = {"offsets": np.r_[0, np.cumsum(counts)], "indices": np.arange(counts.sum(), dtype=np.int64) * 7}
    members.update(arrays)
    return lambda path, real: np.savez(path, **members)


def _repeat_in_node_2(path, real):
    with np.load(io.BytesIO(real)) as f:
        offsets, indices = f["offsets"], f["indices"].copy()
    indices[offsets[2] + 1] = indices[offsets[2]]
    np.savez(path, offsets=offsets, indices=indices)


ONE_EMPTY = np.ones(300, np.int64)
ONE_EMPTY[3] = 0
FIRST_EMPTY = np.r_[np.zeros(8, np.int64), np.ones(292, np.int64)]

BAD_FILES = [
    ("truncated", _bytes(lambda r: r[: len(r) // 2]),
     "{p}: not a readable .npz partition file (BadZipFile: File is not a zip file; truncated or corrupt)"),
    ("empty", _bytes(lambda r: b""),
     "{p}: not a readable .npz partition file (no zip header in its 0 bytes; truncated or corrupt)"),
    ("not-a-zip", _bytes(lambda r: b"offsets,indices\n"),
     "{p}: not a readable .npz partition file (no zip header in its 16 bytes; truncated or corrupt)"),
    ("flipped-byte", _bytes(_flip),
     "{p}: not a readable .npz partition file (BadZipFile: Bad CRC-32 for file 'indices.npy'; truncated or corrupt)"),
    ("object-array", _arrays(offsets=np.array([0, 1], dtype=object)),
     "{p}: array 'offsets' is an object (pickled) array; expected int64 arrays 'offsets' and 'indices'"),
    ("missing-array", lambda path, real: np.savez(path, offsets=np.arange(301), index=np.arange(300)),
     "{p}: expected arrays 'offsets' and 'indices', found ['index', 'offsets']"),
    ("float-indices", _arrays(indices=np.arange(300.0)), "{p}: offsets/indices must be integers, got int64/float64"),
    ("index-out-of-range", _arrays(indices=np.arange(300) + 59_800),
     "{p}: index 60099 out of range for a training set of 60000"),
    ("repeated-index", _repeat_in_node_2,
     "{p}: node 2 holds training index {dup} twice (1 repeated entry in all); a node never holds a sample twice"),
    ("wrong-node-count", _arrays(np.ones(200)), "{p}: holds 200 nodes, expected 300"),
    ("selected-nodes-all-empty", _arrays(FIRST_EMPTY), WHERE + ": all 8 nodes used hold no samples"),
    ("one-selected-node-empty", _arrays(ONE_EMPTY),
     WHERE + ": node 3 holds no samples (1 of the 8 nodes used are empty); every node needs at least one"),
]


@pytest.mark.parametrize("write,message", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_partition_file_is_one_line_naming_it(write, message, real_data_dir, tmp_path):
    root = _root(real_data_dir, tmp_path, write)
    with np.load(pathlib.Path(real_data_dir, PARTITION)) as f:
        dup = int(f["indices"][f["offsets"][2]])
    with pytest.raises(ValueError) as err:
        experiment.run(_config(root), tmp_path / "run")
    assert str(err.value) == message.format(p=root / PARTITION, dup=dup)
    assert not (tmp_path / "run").exists()


def test_empty_node_outside_the_selection_is_fine(real_data_dir, tmp_path):
    counts = np.ones(300, np.int64)
    counts[100] = 0
    root = _root(real_data_dir, tmp_path, _arrays(counts))
    part, record, path = run_data.build_partition_recorded(_config(root), np.zeros(60000, np.uint8))
    assert part.num_nodes == 8 and path == str(root / PARTITION) and record["file"] == "seed0.npz"


def test_truncated_file_through_the_cli(real_data_dir, tmp_path):
    root = _root(real_data_dir, tmp_path, _bytes(lambda r: r[: len(r) // 2]))
    proc = run_cli("run", ["--config=tiny", "--config.partition.kind=ntk_dfl_file", f"--data_dir={root}",
                           f"--workdir={tmp_path / 'run'}"], real_data_dir)
    assert_one_line_error(proc, f"error: {root / PARTITION}: not a readable .npz partition file (BadZipFile: ")
    assert not (tmp_path / "run").exists()


# NTK-DFL's keyword arguments ('a__b' = algorithm_kw.a.b) -> the message.
TAUS = [
    ({"taus": (10**7,)}, "algorithm_kw.taus=(10000000,) needs about 500,000 kernel products per neighbourhood and "
     "round with algorithm_kw.evolution.integrator='imex' (tau_max 10,000,000 grid intervals, 6 products per step of "
     "<= 200 intervals), more than 10,000: ~4 min per node and round at ~1,200 rows, ~60 min for 8 nodes x 2 rounds; "
     "with this integrator tau_max may be at most 200,000 (the SPEC's candidates end at 800)"),
    ({"taus": (200_001,)}, "algorithm_kw.taus=(200001,) needs about 10,000 kernel products"),
    ({"evolution__integrator": "rk4", "taus": (100, 2000)}, "algorithm_kw.taus=(100, 2000) needs about 16,040 kernel "
     "products per neighbourhood and round with algorithm_kw.evolution.integrator='rk4' (tau_max 2,000 grid intervals, "
     "4 x 2 sub-steps per grid interval), more than 10,000: ~7 s per node and round at ~1,200 rows, ~115 s for 8 nodes "
     "x 2 rounds; with this integrator tau_max may be at most 1,246"),
    ({"evolution__integrator": "rk4", "evolution__substeps": 100}, "algorithm_kw.taus=(100, 200, 400, 600, 800) needs "
     "about 320,016 kernel products per neighbourhood and round with algorithm_kw.evolution.integrator='rk4' (tau_max "
     "800 grid intervals, 4 x 100 sub-steps"),
    ({"evolution__integrator": "euler", "taus": (10**6,)}, "algorithm_kw.taus=(1000000,) needs about 1,020,000 kernel "
     "products"),
    ({"evolution__integrator": "dopri5", "taus": (10**5,)}, "algorithm_kw.taus=(100000,) needs about 20,750 kernel "
     "products per neighbourhood and round with algorithm_kw.evolution.integrator='dopri5' (tau_max 100,000 grid "
     "intervals, 6 products per step of <= 32 intervals)"),
    ({"evolution__integrator": "rk4_hermite", "taus": (20_000,)}, "algorithm_kw.taus=(20000,) needs about 20,400 "
     "kernel"),
]


@pytest.mark.parametrize("over,message", TAUS, ids=[f"{i}" for i in range(len(TAUS))])
def test_taus_beyond_the_integrators_work_are_refused(over, message):
    config = _config(algorithm="ntk_dfl", **{f"algorithm_kw__{k}": v for k, v in over.items()})
    with pytest.raises(ConfigError) as err:
        experiment.run(config, "/nonexistent/never-created")
    assert str(err.value).startswith(message), str(err.value)


def test_taus_at_the_bound_and_the_specs_defaults_pass():
    for taus, integrator in (((100, 200_000), "imex"), ((100, 200, 400, 600, 800), "rk4"), ((1, 48_192), "dopri5")):
        config = _config(algorithm="ntk_dfl")
        config.algorithm_kw.taus, config.algorithm_kw.evolution.integrator = taus, integrator
        validation.validate_config(config, algorithms.available())


GIB = 2**30
SIZES = [
    ({"partition__kind": "iid", "partition__num_nodes": 50_000, "partition__samples_per_node": 1}, 16,
     "partition.num_nodes=50000: the run needs at least 67.0 GiB (50000 x 50000 mixing matrix and neighbour sort "
     "37.3 GiB, node data 50000 x 1 images 0.1 GiB, 50000 x 79,510 parameters x 2 29.6 GiB) but 16.0 GiB are "
     "available; use fewer nodes"),
    ({"algorithm": "ntk_dfl", "topology__kind": "complete", "partition__kind": "ntk_dfl", "partition__num_nodes": 300,
      "partition__samples_per_node": 200}, 8,
     # The NTK-DFL recipe gives nodes of at most 199 samples here: 300 slots x 199 = 59,700 kernel rows.
     "partition.num_nodes=300: the run needs at least 13.6 GiB (node data 300 x 199 images 0.2 GiB, 300 x 79,510 "
     "parameters x 2 0.2 GiB, a 59,700-row neighbourhood kernel 13.3 GiB) but 8.0 GiB are available; use fewer nodes "
     "or a smaller neighbourhood"),
]


@pytest.mark.parametrize("over,available,message", SIZES, ids=["50000-nodes-x-1-sample", "ntk-complete-graph"])
def test_runs_beyond_the_memory_are_refused_before_allocating(over, available, message, real_data_dir, tmp_path,
                                                              monkeypatch):
    monkeypatch.setattr(run_budget, "available_memory", lambda: available * GIB)
    config = _config(real_data_dir, **over)
    with pytest.raises(ConfigError) as err:
        experiment.run(config, tmp_path / "run")
    assert str(err.value) == message
    assert not (tmp_path / "run").exists()


def test_device_memory_is_checked_without_the_host_topology():
    config = _config()
    config.partition.num_nodes = 1000
    line = run_budget.memory_problem(config, 200, 79_510, 3, available=64 * GIB, device_available=GIB // 2)
    assert line == ("partition.num_nodes=1000: the run needs at least 1.2 GiB on the device (node data 1000 x 200 "
                    "images 0.6 GiB, 1000 x 79,510 parameters x 2 0.6 GiB) but 0.5 GiB are available; use fewer nodes")
    assert run_budget.memory_problem(config, 200, 79_510, 3, available=64 * GIB, device_available=None) is None


def test_xla_out_of_memory_in_a_round_is_one_line(real_data_dir, tmp_path, monkeypatch):
    make = algorithms.make_algorithm

    def exhausted(*args, **kwargs):
        alg = make(*args, **kwargs)

        def round_fn(state, node_data, inputs):
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 205954466600 bytes.")

        return alg._replace(round=round_fn)

    monkeypatch.setattr(algorithms, "make_algorithm", exhausted)
    config = _config(real_data_dir, partition__kind="ntk_dfl")
    with pytest.raises(run_budget.OutOfMemoryError) as err:
        experiment.run(config, tmp_path / "run")
    assert str(err.value) == ("round 1: out of memory allocating 191.8 GiB (partition.num_nodes=8, topology.kind="
                              "'ring'); use fewer nodes, a smaller neighbourhood or a smaller eval.node_chunk; "
                              "no round completed")  # tiny runs DFedAvg: no algorithm_kw.compute.node_chunk
    assert not (tmp_path / "run").exists()
