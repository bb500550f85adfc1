"""benchmarks/common.py: the analytic FLOP counts and the first-rounds cut of a config."""

import numpy as np

from benchmarks.common import first_rounds, phase_flops
from experiments.configs import fmnist_ntk_dfl, fmnist_ring
from spark_jax.schedules import stage_boundaries


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
    assert stage_boundaries(cut.stages.boundaries, cut.stages.unit, cut.rounds) == stage_boundaries(
        config.stages.boundaries, config.stages.unit, config.rounds) == (13, 27)
