"""DFedAvgM, D-PSGD and DFedSAM: local training on each node's own data, then mixing.

SPEC "Baselines" (same data, graphs, mixing and evaluation as DFedAvg):
- 'dfedavgm': local SGD with heavy-ball momentum 0.9 (`optax.sgd(lr, momentum)`:
  b <- g + mu b, w <- w - lr b), lr 0.01, batch 50, 20 local epochs.
- 'dpsgd': plain SGD, lr 0.1, batch 10, one local epoch.
- 'dfedsam': SAM (rho 0.01) on momentum SGD (momentum 0.99, weight decay 5e-4,
  PyTorch-style coupled decay: g <- g_sam + wd w, b <- g + mu b, w <- w - lr_r b),
  lr_r = 0.01 * 0.95^r, batch 32, 5 local epochs. SAM step on a batch:
  g = grad L(w); e = rho g / ||g|| (global norm over the pytree; e = 0 when
  ||g|| = 0); g_sam = grad L(w + e) on the same batch.

All three reuse DFedAvg's `local_sgd` (masked, shuffled mini-batches over each
node's real rows; vmapped over nodes with `parallel.node_map(batch_size=0)`),
then `mix`. The momentum buffer restarts at zero every round: the weights it
was built on are replaced by the mixed model, and DFedAvgM (Sun et al., 2022)
starts each round's local heavy-ball iterations from y^{-1} = y^0 = x (no
carried velocity); DFedSAM's reference code likewise builds a fresh local
optimizer per round. Keeping no velocity also keeps the state (and the bytes
exchanged) identical to DFedAvg's. The round index r is a traced input, so the
decaying DFedSAM lr compiles once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from spark_jax import checks
from spark_jax.algorithms import schedules
from spark_jax.algorithms.base import Algorithm
from spark_jax.algorithms.dfedavg import check_local_training, make_local_training
from spark_jax.setting.models import Model

# Their default keyword arguments (`config.algorithm_kw` of a run with the algorithm).
CONFIG_DFEDAVGM = dict(lr=0.01, momentum=0.9, batch_size=50, local_epochs=20)  # momentum: heavy ball
CONFIG_DPSGD = dict(lr=0.1, batch_size=10, local_epochs=1)
CONFIG_DFEDSAM = dict(lr=0.01,  # lr_r = lr * lr_decay^r
                      lr_decay=0.95, momentum=0.99, weight_decay=5e-4,
                      rho=0.01,  # SAM radius
                      batch_size=32, local_epochs=5)


def sam_value_and_grad(rho: float):
    """(f, p) -> (f(p), grad f(p + rho g / ||g||)) with g = grad f(p); e = 0 if ||g|| = 0."""

    def value_and_grad(f, p):
        loss, g = jax.value_and_grad(f)(p)
        norm = optax.tree.norm(g)
        scale = jnp.where(norm > 0, rho / jnp.where(norm > 0, norm, 1.0), 0.0)
        perturbed = jax.tree.map(lambda w, gi: w + scale.astype(gi.dtype) * gi, p, g)
        return loss, jax.grad(f)(perturbed)

    return value_and_grad


def dfedsam_optimizer(lr, momentum: float, weight_decay: float) -> optax.GradientTransformation:
    """Coupled weight decay then heavy-ball momentum SGD (PyTorch `SGD(weight_decay=...)`)."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum))


def make_dfedavgm(config, model: Model, mesh=None) -> Algorithm:
    """DFedAvgM from `config.algorithm_kw` (lr, momentum, batch_size, local_epochs)."""
    cfg = config.algorithm_kw
    return make_local_training("dfedavgm", config, model, mesh,
                               lambda r, dtype: optax.sgd(cfg.lr, momentum=cfg.momentum))


def make_dpsgd(config, model: Model, mesh=None) -> Algorithm:
    """D-PSGD from `config.algorithm_kw` (lr, batch_size, local_epochs)."""
    cfg = config.algorithm_kw
    return make_local_training("dpsgd", config, model, mesh, lambda r, dtype: optax.sgd(cfg.lr))


def make_dfedsam(config, model: Model, mesh=None) -> Algorithm:
    """DFedSAM from `config.algorithm_kw` (lr, lr_decay, momentum, weight_decay, rho, batch_size,
    local_epochs)."""
    cfg = config.algorithm_kw

    def make_optimizer(r, dtype):  # lr_r in the params' dtype (float32, or float64)
        lr = schedules.geometric(cfg.lr, cfg.lr_decay, r, dtype)
        return dfedsam_optimizer(lr, cfg.momentum, cfg.weight_decay)

    return make_local_training("dfedsam", config, model, mesh, make_optimizer, value_and_grad=sam_value_and_grad(cfg.rho))


def check_dfedsam(config) -> None:
    """`config.algorithm_kw`: the local training options and the SAM radius rho >= 0."""
    check_local_training(config)
    checks.number(config.algorithm_kw.rho, "algorithm_kw.rho", 0.0)
