"""NTK machinery for one node's neighbourhood (SPEC steps 3, 5, 7, 8, 9).

Every function is pure, jit-able with static shapes, and takes one node's
neighbourhood set (`x [N, 28, 28, 1]`, bool `mask [N]` with padding rows
False); callers vmap over nodes or `lax.map` over node chunks.

  jacobian   per-sample Jacobians, leaves [N, C, *leaf_shape]        (step 3)
  kernel     H = (1/C) sum_c J_c J_c^T, several implementations       (step 5)
  evolution  dF/ds = -(1/N) H (softmax(F) - Y^) and R_tau             (step 7)
  update     Delta_tau = -(eta/N) J^T R_tau, choice of tau            (steps 8, 9)
"""

from spark_jax.ntk.evolution import INTEGRATORS, Evolution, check_taus, evolve_logits
from spark_jax.ntk.jacobian import (MODES, flat_jacobian, flatten_jacobian, mask_rows, num_true,
                                    per_sample_jacobian, zero_padding)
from spark_jax.ntk.kernel import (METHODS, contraction_kernel, kernel_from_jacobian,
                                  mlp_activations_and_backprops, neighbourhood_kernel, ntvp_kernel,
                                  reference_kernel, structured_kernel)
from spark_jax.ntk.update import (CRITERIA, linearized_losses, masked_cross_entropy, network_losses,
                                  select_tau, weight_updates, weight_updates_from_jacobian)

__all__ = [
    "CRITERIA", "INTEGRATORS", "METHODS", "MODES", "Evolution", "check_taus",
    "contraction_kernel", "evolve_logits", "flat_jacobian", "flatten_jacobian",
    "kernel_from_jacobian", "linearized_losses", "mask_rows", "masked_cross_entropy",
    "mlp_activations_and_backprops", "neighbourhood_kernel", "network_losses", "ntvp_kernel", "num_true",
    "per_sample_jacobian", "reference_kernel", "select_tau", "structured_kernel", "weight_updates",
    "weight_updates_from_jacobian", "zero_padding",
]
