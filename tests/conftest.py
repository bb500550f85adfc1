"""Shared test setup: strict rank promotion, and where the real data is."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

# Bytecode caches (`__pycache__`, git-ignored) are written even where PYTHONDONTWRITEBYTECODE is set, as on
# this project's machines: otherwise every worker recompiles the test modules (pytest's assertion rewriting)
# and every CLI subprocess the library's modules (measured: collection 10.8 s -> 5.8 s per worker, a failing
# CLI command 2.8 s -> 2.5 s; ~150 subprocesses per suite).
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

jax.config.update("jax_numpy_rank_promotion", "raise")
# Float32 products in full float32 on every backend: on NVIDIA GPUs the default
# may be TF32 (10-bit mantissa), too coarse for the 1e-4 float64 comparisons
# (no effect on CPU, whose float32 products are always full precision).
jax.config.update("jax_default_matmul_precision", "float32")
# Most XLA optimizations off: the test programs are small and compiling them dominates (measured on this
# 2-core CPU: `-m "not slow"` 2 min 25 s -> 1 min 53 s). The CLI subprocesses inherit it through the
# environment. SPARK_JAX_TEST_OPTIMIZE=1 keeps them on (the GPU suite does: it tests the programs users run).
# And XLA:CPU's elemental emitters instead of its MLIR fusion emitters, which compile a round program ~3x
# slower (measured: the contract's ntk_dfl round 5.0 s -> 1.7 s, SPARK's 7.1 s -> 2.3 s; these three files
# 178 s -> 94 s). Both emitters compute the same values, but not always bit for bit the same float32 across
# programs (a batched Gaussian draw differs from the eager one in the last bit): the tests of the library's
# bitwise guarantees compile with the fusion emitters (`FUSION_EMITTERS`). Set before JAX starts its backend,
# which reads XLA_FLAGS once; the CLI subprocesses inherit it.
SUITE_XLA_FLAGS = "" if os.environ.get("SPARK_JAX_TEST_OPTIMIZE") else "--xla_cpu_use_fusion_emitters=false"
FUSION_EMITTERS = {"xla_cpu_use_fusion_emitters": True}  # jax.jit(..., compiler_options=FUSION_EMITTERS)
if not os.environ.get("SPARK_JAX_TEST_OPTIMIZE"):
    jax.config.update("jax_disable_most_optimizations", True)
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    if SUITE_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SUITE_XLA_FLAGS}".strip()

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def xla_optimized():
    """XLA's optimizations on for one test: for the few that run long programs (a real 25-round run)
    rather than compile many small ones (measured: 38 s -> 27 s, 11 s -> 4.5 s)."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)

# The suite never touches the network: downloads of missing data are off (in this process and the CLI
# subprocesses it starts) unless a test turns them on against its own 127.0.0.1 server (tests/test_download.py).
os.environ.setdefault("SPARK_JAX_NO_DOWNLOAD", "1")
# Nor do runs draw their PNGs (curves.png, label_histogram.png: matplotlib's import and first figure are ~0.9 s
# of a tiny run), except where a test checks them (SPARK_JAX_NO_PLOTS=0: tests/test_experiment.py,
# tests/test_fault_os.py); tests/test_run_summary.py and tests/test_partition.py draw them directly.
os.environ.setdefault("SPARK_JAX_NO_PLOTS", "1")

# The CLI subprocesses the suite starts (tiny runs, sweeps, the 2-process runs, the GPU suite's dry run)
# compile the same programs again and again: they share JAX's persistent compilation cache (keyed by the
# program, the jax version, the backend and its flags, so it never serves another program; executables are
# the same, so results are bit-identical): a tiny run 8.6 s -> 7.2 s (2026-12-02; with most optimizations
# off compiling is cheap, and tracing and lowering are not cached). This process and the xdist workers
# (which inherit the variables) compile in memory only: JAX writes an entry in place, without a lock
# unless filelock is installed and a size limit set (measured: no faster). For the same reason a
# subprocess a test kills or signals runs without the cache (`without_compile_cache`): a kill mid-write
# would leave a truncated entry that every later reader reports on stderr.
# The CLI subprocesses run on one CPU device (`parallel.cpu_devices` would split the CPU into one per
# core: +2 s of compilation per tiny run, ~1 min over the suite): `cpu_split_env` takes the variable
# out again where a test runs the default (tests/test_experiment.py, tests/test_checkpoint.py); the
# simulated-device tests set their own count. JAX reads the variable, and it beats XLA_FLAGS.
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "1")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".cache" / "jax-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
jax.config.update("jax_compilation_cache_dir", None)


def simulated_devices_env(devices: int) -> dict:
    """This environment with `devices` simulated CPU devices (XLA_FLAGS is read when jax is imported, so
    only a subprocess started with it sees them)."""
    return dict(cpu_split_env(os.environ),
                XLA_FLAGS=f"{SUITE_XLA_FLAGS} --xla_force_host_platform_device_count={devices}".strip(),
                JAX_PLATFORMS="cpu")


def cpu_split_env(env) -> dict:
    """`env` without the suite's JAX_NUM_CPU_DEVICES=1: a CLI run splits the CPU as users' runs do."""
    return {k: v for k, v in env.items() if k != "JAX_NUM_CPU_DEVICES"}


def run_device_check(module: str, devices: int, timeout: float, args=()) -> dict:
    """Runs `python -m module ARGS` on `devices` simulated CPU devices; the JSON of its last stdout line."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=simulated_devices_env(devices),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def without_compile_cache(env: dict) -> dict:
    """`env` without the shared compilation cache: for subprocesses a test kills or signals."""
    return {k: v for k, v in env.items() if k != "JAX_COMPILATION_CACHE_DIR"}


def _real_data_dir():
    """The directory holding fashion_mnist/ (and mnist/), or None.

    Looked up in SPARK_JAX_DATA_DIR, then `../shared/data` beside the checkout
    (where this project's machines keep it), then the Debian package location.
    """
    candidates = [os.environ.get("SPARK_JAX_DATA_DIR"), REPO.parent / "shared" / "data",
                  "/usr/share/datasets"]
    for c in candidates:
        if c and (pathlib.Path(c) / "fashion_mnist" / "train-images-idx3-ubyte.gz").exists():
            return str(c)
        if c and (pathlib.Path(c) / "fashion-mnist" / "train-images-idx3-ubyte.gz").exists():
            return str(c)
    return None


@pytest.fixture(scope="session")
def real_data_dir():
    """Skips (loudly, with -ra) when the real files are absent, unless CI demands them."""
    d = _real_data_dir()
    if d is None:
        if os.environ.get("SPARK_JAX_REQUIRE_DATA"):
            pytest.fail("SPARK_JAX_REQUIRE_DATA is set but no Fashion-MNIST IDX files were found; "
                        "set SPARK_JAX_DATA_DIR or `apt-get install dataset-fashion-mnist`")
        pytest.skip("real Fashion-MNIST files not found (set SPARK_JAX_DATA_DIR)")
    return d


# Longest files first: the xdist workers take one file at a time in this order (`--no-loadscope-reorder`
# in pyproject.toml keeps it; by default xdist orders files by their number of tests, which left the long
# files of few tests, the 2-process runs, the GPU suite's dry run, the real-run integrator check, for the
# end of the run while the other worker had finished). Seconds per file on one of the 2 workers of the
# full suite (2026-12-02, GEMM ~100 GFLOP/s); a hint only: unlisted files follow in their usual order.
FILE_SECONDS = {
    "test_multiprocess.py": 100, "test_checkpoint.py": 90, "test_ntk_stiff_split.py": 70, "test_device_suite.py": 70,
    "test_algorithm_contract.py": 70, "test_float64.py": 70, "test_fault_signal.py": 65, "test_fault_state.py": 65,
    "test_ntk_evolution.py": 60, "test_fault_kill.py": 55, "test_spark.py": 55, "test_sharding.py": 50,
    "test_experiment.py": 50, "test_ntk_dfl.py": 45, "test_sketch.py": 40, "test_fault_lock.py": 35,
    "test_fault_sweep_report.py": 35, "test_fault_os.py": 30, "test_ntk_round.py": 27, "test_validation_table.py": 25,
    "test_fault_data.py": 23, "test_sweep_report.py": 20, "test_dispfl.py": 20}


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))  # stable: each file's order kept


# Small NTK-round fixtures shared by the round tests (test_ntk_dfl, test_spark, test_float64, the contract
# test, sharding_checks): six nodes with unequal data and unequal degrees.
NTK_COUNTS = [5, 9, 3, 7, 6, 8]
NTK_EDGES = [(0, 1), (0, 2), (0, 3), (1, 4), (4, 5), (3, 5)]  # unequal degrees
NTK_TAUS = (1, 4, 12)


def ntk_config(integrator="euler", kernel="structured", node_chunk=4):
    """The base config as an NTK-DFL run on the six nodes (hidden 8, eta0 0.5, taus NTK_TAUS)."""
    from experiments.configs import base  # pylint: disable=g-import-not-at-top

    c = base.base_config("ntk_dfl")
    c.partition.num_nodes = len(NTK_COUNTS)
    c.model.hidden = (8,)
    c.model.per_node_init = True
    c.algorithm_kw.eta0 = 0.5
    c.algorithm_kw.taus = NTK_TAUS
    c.algorithm_kw.evolution.integrator = integrator
    c.algorithm_kw.compute.kernel = kernel
    c.algorithm_kw.compute.node_chunk = node_chunk
    return c


def random_node_data(n_max=None, garbage=0.0, seed=0, counts=NTK_COUNTS, num_classes=10, dtype="float32"):
    """Random padded 28x28x1 node data with `counts` real rows per node (padding rows hold `garbage`); x in `dtype`."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    from spark_jax.setting.partition import NodeData  # pylint: disable=g-import-not-at-top

    rng = np.random.default_rng(seed)
    m, n_max = len(counts), n_max or max(counts)
    x = np.full((m, n_max, 28, 28, 1), garbage, dtype)
    y = np.zeros((m, n_max), np.int32)
    mask = np.zeros((m, n_max), bool)
    for i, n in enumerate(counts):
        x[i, :n] = rng.normal(size=(n, 28, 28, 1)) * 0.5
        y[i, :n] = rng.integers(0, num_classes, n)
        mask[i, :n] = True
    return NodeData(x=x, y=y, mask=mask, counts=np.array(counts, np.int32))


def ntk_adjacency():
    """The six nodes' graph (NTK_EDGES) as a bool adjacency matrix."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    adj = np.zeros((len(NTK_COUNTS), len(NTK_COUNTS)), bool)
    for a, b in NTK_EDGES:
        adj[a, b] = adj[b, a] = True
    return adj


def round_inputs(graph, r=0, key=0):
    """`RoundInputs` of a padded graph for round r (the `train` key: jax.random.key(key))."""
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    from spark_jax.algorithms.base import RoundInputs  # pylint: disable=g-import-not-at-top

    return RoundInputs(jnp.asarray(graph.neighbors), jnp.asarray(graph.weights), jnp.asarray(graph.mask),
                       jnp.int32(r), jax.random.key(key))
