"""benchmarks/common.py: the analytic FLOP counts and the first-rounds cut of a config."""

import numpy as np

from benchmarks.common import first_rounds, phase_flops
from experiments.configs import fmnist_ntk_dfl, fmnist_ring
from spark_jax.algorithms.schedules import stage_boundaries


def test_phase_flops_of_the_784_100_10_mlp():
    config = fmnist_ntk_dfl.get_config()
    n, t = 1194, 5
    f = phase_flops(config, 3, n, products=[10, 20, 30], num_taus=t, slots=6)
    forward = n * (784 * 100 + 100 * 10)
    np.testing.assert_allclose(f["kernel"], 3 * 2 * (forward + 0.75 * n * n * (784 + 100 + 100)))
    np.testing.assert_allclose(f["evolution"], 60 * 2 * n * n * 10)
    np.testing.assert_allclose(f["selection"], 3 * 2 * (forward + 2 * t * forward + t * n * 1000))
    np.testing.assert_allclose(f["messages"], 3 * 2 * (forward + 6 * 79510))
    assert "selection" not in phase_flops(config, 3, n, products=[1])


def test_first_rounds_keeps_the_full_runs_stages():
    config = fmnist_ring.get_config()
    cut = first_rounds(config, 5)
    assert cut.rounds == 5 and config.rounds == 40
    stages = cut.algorithm_kw.stages
    assert stage_boundaries(stages.boundaries, stages.unit, cut.rounds) == stage_boundaries(
        config.algorithm_kw.stages.boundaries, config.algorithm_kw.stages.unit, config.rounds) == (13, 27)


def test_benchmark_with_missing_data_is_one_line(tmp_path):
    """A benchmark's bad input (here: no data anywhere) is one `error:` line, exit 1, no traceback."""
    import os  # pylint: disable=g-import-not-at-top
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top

    from tests.conftest import REPO  # pylint: disable=g-import-not-at-top

    env = {k: v for k, v in os.environ.items() if k != "SPARK_JAX_DATA_DIR"}
    env.update(HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"), SPARK_JAX_NO_DOWNLOAD="1",
               JAX_PLATFORMS="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.round", "--config=tiny", "--config.algorithm=ntk_dfl",
                           f"--data_dir={empty}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert str(empty) in lines[0] and "Traceback" not in proc.stderr
