"""The node axis over 8 simulated CPU devices equals one device (rounds and the runner).

XLA_FLAGS must be set before jax is imported, so the multi-device parts run
in subprocesses (`tests/sharding_checks.py`, `experiments.run`) with
XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.configs import tiny
from spark_jax import parallel
from spark_jax.algorithms import available
from spark_jax.runner.validation import ConfigError, validate_config
from tests.conftest import REPO, run_device_check, simulated_devices_env

DEVICES = 8
ENV = simulated_devices_env(DEVICES)


@pytest.fixture(scope="module")
def checks():
    return run_device_check("tests.sharding_checks", devices=DEVICES, timeout=300)


@pytest.mark.slow
def test_the_graph_has_cross_shard_neighbours_and_unequal_degrees(checks):
    assert checks["devices"] == DEVICES and checks["mesh_shape"] == {"nodes": DEVICES}
    assert len(checks["degrees"]) > 1  # unequal degrees (2 nodes per device: most neighbours are remote)
    assert checks["distinct_graphs"] == 3  # re-drawn every round


@pytest.mark.parametrize("algorithm", ["ntk_dfl", "spark"])
@pytest.mark.slow
def test_sharded_rounds_equal_one_device(checks, algorithm):
    got = checks[algorithm]
    assert max(got["state_diff"]) < 1e-5, got["state_diff"]
    assert max(got["metrics_diff"]) < 1e-5, got["metrics_diff"]


@pytest.mark.parametrize("algorithm", ["ntk_dfl", "spark"])
@pytest.mark.slow
def test_state_node_axis_is_sharded_over_all_devices(checks, algorithm):
    got = checks[algorithm]
    assert got["specs"] == [["nodes"]]  # axis 0 split over "nodes", the others whole
    assert got["num_devices"] == [DEVICES]
    assert got["shard_rows"] == [16 // DEVICES]  # each device holds its own 2 nodes


@pytest.mark.parametrize("algorithm", ["ntk_dfl", "spark"])
@pytest.mark.slow
def test_no_recompilation_over_rounds_with_redrawn_graphs(checks, algorithm):
    assert checks[algorithm]["cache_size"] == 1


@pytest.mark.slow
def test_node_count_not_divisible_by_device_count(checks):
    message = checks["error"]
    assert message is not None
    assert "12 nodes" in message and "8 devices" in message and "8 or 16 nodes" in message
    with pytest.raises(ValueError, match=r"30 nodes .* 8 devices.*24 or 32 nodes .* or 6 devices"):
        parallel.check_divisible(30, 8)


def test_node_map_without_mesh_is_lax_map():
    xs = np.arange(10.0, dtype=np.float32)
    got = parallel.node_map(lambda x, c: x * c, xs, batch_size=3, shared=(2.0,))
    np.testing.assert_array_equal(np.asarray(got), 2 * xs)
    assert parallel.constrain_nodes(xs, None) is xs


def test_config_checks_device_count():
    c = tiny.get_config()
    validate_config(c, available())  # 0 = all devices
    c.parallel.devices = -1
    with pytest.raises(ConfigError, match="parallel.devices=-1"):
        validate_config(c, available())
    c.parallel.devices = jax.device_count() + 1
    with pytest.raises(ConfigError, match=f"parallel.devices={jax.device_count() + 1}"):
        validate_config(c, available())
    with pytest.raises(ValueError, match="requested but"):
        parallel.node_mesh(jax.device_count() + 1)


def _run(real_data_dir, workdir, devices):
    env = dict(ENV, SPARK_JAX_DATA_DIR=real_data_dir)
    proc = subprocess.run([sys.executable, "-m", "experiments.run", "--config=tiny", f"--workdir={workdir}",
                           f"--config.parallel.devices={devices}"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_runner_on_8_devices_equals_one_device(real_data_dir, tmp_path):
    """tiny: 8 nodes (one per device), DFedAvg, 2 rounds."""
    one = _run(real_data_dir, tmp_path / "one", 1)
    eight = _run(real_data_dir, tmp_path / "eight", DEVICES)
    assert [r["round"] for r in eight] == [1, 2]
    for a, b in zip(one, eight):
        for key in ("test_accuracy", "node_accuracy_mean", "node_accuracy_min"):
            assert abs(a[key] - b[key]) <= 1e-4, (key, a[key], b[key])
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-4
        assert a["bytes_round"] == b["bytes_round"]


def test_multi_host_placement_path_on_one_process():
    """`_from_host` (used when jax.process_count() > 1) places arrays and PRNG keys like device_put."""
    mesh = parallel.node_mesh(1)
    key = jax.random.fold_in(jax.random.key(0), 3)
    placed = parallel._from_host(key, parallel.replicated_sharding(mesh))
    np.testing.assert_array_equal(jax.random.key_data(placed), jax.random.key_data(key))
    x = np.arange(12.0, dtype=np.float32).reshape(4, 3)
    placed = parallel._from_host(x, parallel.node_sharding(mesh))
    np.testing.assert_array_equal(np.asarray(placed), x)
    assert placed.sharding == parallel.node_sharding(mesh)
