"""The whole per-node chain (steps 5, 7, 8, 9) vmapped over a node axis equals a loop over nodes."""

import functools

import chex
import jax
import numpy as np
import pytest

from spark_jax import ntk
from spark_jax.setting import models
from tests.test_ntk_kernel import numpy_params

M, N, C = 3, 7, 10
TAUS = (1, 3, 6)


def _node_round(apply, params, x, mask, targets, eta):
    """One node's neighbourhood: kernel (two methods), RK4 evolution, updates, tau choice."""
    H = ntk.neighbourhood_kernel(apply, params, x, mask, method="structured")
    H_contraction = ntk.neighbourhood_kernel(apply, params, x, mask, method="contraction", chunk_size=3)
    F0 = apply(params, ntk.zero_padding(x, mask))
    evo = ntk.evolve_logits(H, F0, targets, mask, eta, TAUS, method="rk4", substeps=2)
    deltas = ntk.weight_updates(apply, params, x, mask, evo.residual_sums, eta)
    idx, losses = ntk.select_tau(apply, params, x, mask, targets, deltas)
    idx_lin, lin = ntk.select_tau(apply, params, x, mask, targets, deltas, criterion="linearized",
                                  evolved_logits=evo.logits)
    return dict(H=H, H_contraction=H_contraction, evo=evo, deltas=deltas, idx=idx, losses=losses,
                idx_lin=idx_lin, lin=lin)


@pytest.mark.device
@pytest.mark.slow
def test_vmap_over_nodes_equals_loop():
    model = models.make_model("mlp", hidden=(16,))
    nodes = [numpy_params(model, m) for m in range(M)]
    params = jax.tree.map(lambda *a: np.stack(a), *nodes)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(M, N, 28, 28, 1)).astype(np.float32)
    mask = np.arange(N)[None, :] < np.array([[N], [5], [3]])  # 0, 2, 4 padding rows
    targets = np.eye(C, dtype=np.float32)[rng.integers(0, C, (M, N))]
    eta = np.float32(0.01)

    node = functools.partial(_node_round, model.apply)
    batched = jax.jit(jax.vmap(node, in_axes=(0, 0, 0, 0, None)))(params, x, mask, targets, eta)
    single = jax.jit(node)
    for m in range(M):
        one = single(nodes[m], x[m], mask[m], targets[m], eta)
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[m], batched), one, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(one["H"], one["H_contraction"], rtol=1e-5, atol=1e-5)
    assert np.asarray(batched["losses"]).std(axis=1).min() > 1e-3
