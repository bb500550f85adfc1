"""The class-traced neighbourhood NTK (SPEC step 5).

    H = (1/C) sum_c J[:, c, :] J[:, c, :]^T            [N, N]

over node i's stacked neighbourhood set (exact mode: the true Jacobian J at
w̄_i; sketch mode: the projected J~ = J P, via `kernel_from_jacobian`). Rows
and columns of padding are zero, and the real block does not depend on what
the padding rows hold.

Implementations behind `neighbourhood_kernel(..., method=)` (STYLE: several
implementations, each tested against the plain one):
  * "reference": jax.jacrev of the whole batch, then an einsum. O(N^2) backward
    passes; the obvious version, kept as a reference.
  * "contraction": any model; per-sample Jacobian (chunked over samples), then
    one GEMM per parameter leaf. Holds this node's `[N, C, d]` Jacobian.
  * "structured": dense ReLU MLPs (`models.MLP` layout) only; never forms J.
    For a dense layer l with inputs A_l [N, fan_in] and backprop vectors
    D_{l,c} = d f_c / d z_l [N, fan_out], the layer's Jacobian rows are
    A_l ⊗ D_{l,c} (kernel) and D_{l,c} (bias), so
        H = (1/C) sum_l (A_l A_l^T + 1) ⊙ B_l,   B_l = sum_c D_{l,c} D_{l,c}^T.
    B_l needs no [N, C * fan_out] GEMM for the last two layers: the output
    layer's D_{L-1,c} = e_c, so B_{L-1} = C; the last hidden layer's
    D_{L-2,c} = g ⊙ W_{L-1}[:, c] (g = ReLU'(z_{L-2}) [N, h]), so
    B_{L-2} = G diag(s) G^T with s_h = sum_c W_{L-1}[h, c]^2: N^2 h instead
    of N^2 C h multiply-adds (the 784-100-10 MLP's kernel costs N^2 (784 + 2 h)
    instead of N^2 (784 + h + C h + C^2)), and only the blocks on and below
    the diagonal of the symmetric H are computed (3/4 of that). Earlier layers
    backpropagate D_{l,c} explicitly (`mlp_backprop_factors`).
  * "ntvp": any model; NTK-vector products J (J^T v) with sample-local
    cotangents v = e_j ⊗ e_c: a column of H costs C Jacobian-vector products
    over the batch and never more than `chunk_size` Jacobian rows are held.

H's dtype is the compute dtype of the parameters and inputs (`spark_jax.dtypes.compute_dtype`):
float32, or float64 when the parameters (or samples, or Jacobian) are float64.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from spark_jax.dtypes import compute_dtype
from spark_jax.ntk.jacobian import Apply, mask_rows, per_sample_jacobian, zero_padding

METHODS = ("contraction", "structured", "ntvp", "reference")

# The kernel feeds an ODE over hundreds of steps; keep full float32 (or float64) products
# even on accelerators whose default matmul precision is lower (TF32).
_HIGHEST = jax.lax.Precision.HIGHEST


def _mask_kernel(h: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return h
    both = mask[:, None] & mask[None, :]
    return jnp.where(both, h, jnp.zeros((), h.dtype))


def kernel_from_jacobian(jac_tree, mask: jax.Array | None = None) -> jax.Array:
    """SPEC step 5 from a given Jacobian: H = (1/C) sum_leaves sum_c J_c J_c^T.

    Args:
      jac_tree: pytree (or single array) with leaves `[N, C, ...]`: the exact
        Jacobian, or a sketch J~_l = J_l P_l with leaves `[N, C, k]`.
      mask: optional bool `[N]`.

    Returns:
      H `[N, N]` in the Jacobian's compute dtype (float32 or float64), padding rows/columns zero.
    """
    leaves = jax.tree.leaves(mask_rows(jac_tree, mask))
    n, c = leaves[0].shape[:2]
    dtype = compute_dtype(leaves)
    h = jnp.zeros((n, n), dtype)
    for a in leaves:
        # sum over (c, p) of J[i, c, p] J[j, c, p] is one GEMM on [N, C * p].
        a2 = a.reshape(n, -1).astype(dtype)
        h = h + jnp.matmul(a2, a2.T, precision=_HIGHEST)
    return _mask_kernel(h / c, mask)


def reference_kernel(apply: Apply, params, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """SPEC step 5, the obvious way: jacrev of f(X) `[N, C]`, then an einsum. Slow; tests only."""
    x = zero_padding(x, mask)
    jac = jax.jacrev(lambda p: apply(p, x))(params)  # leaves [N, C, *leaf_shape]
    n, c = x.shape[0], jax.tree.leaves(jac)[0].shape[1]
    flat = jnp.concatenate([a.reshape(n, c, -1) for a in jax.tree.leaves(jac)], axis=-1)
    h = jnp.einsum("icp,jcp->ij", flat, flat, precision=_HIGHEST) / c
    return _mask_kernel(h, mask)


def mlp_layer_names(params) -> list:
    """'Dense_0', 'Dense_1', ... of a `models.MLP` pytree, in layer order."""
    return sorted(params, key=lambda s: (len(s), s))


def _mlp_layers(params):
    """[(kernel [fan_in, fan_out], bias [fan_out]), ...] of a `models.MLP` pytree, validated."""
    if not isinstance(params, Mapping) or not params:
        raise ValueError("structured kernel needs MLP params {'Dense_0': {'kernel', 'bias'}, ...}")
    names = mlp_layer_names(params)
    if any(re.fullmatch(r"Dense_\d+", k) is None for k in names) or names != [
            f"Dense_{l}" for l in range(len(names))]:
        raise ValueError(f"structured kernel supports dense ReLU MLPs (`models.MLP`) only; got "
                         f"parameter modules {sorted(params)} — use method='contraction'")
    layers = []
    for name in names:
        layer = params[name]
        if set(layer) != {"kernel", "bias"} or layer["kernel"].ndim != 2 or (
                layer["bias"].shape != layer["kernel"].shape[1:]):
            raise ValueError(f"structured kernel: {name} is not a Dense layer (kernel [in, out], bias [out])")
        if layers and layers[-1][0].shape[1] != layer["kernel"].shape[0]:
            raise ValueError(f"structured kernel: {name} fan-in does not match the previous layer")
        layers.append((layer["kernel"], layer["bias"]))
    return layers


def mlp_activations_and_backprops(params, x: jax.Array):
    """Per dense layer l: inputs A_l `[N, fan_in_l]` and D_l = d f / d z_l `[N, C, fan_out_l]`.

    Forward pass of `models.MLP` (flatten, Dense, ReLU, ..., Dense) written on
    the params; D_l by jax autodiff w.r.t. a zero perturbation of the
    pre-activations z_l (so ReLU'(0) = 0 exactly as in `jax.nn.relu`).
    """
    layers = _mlp_layers(params)
    a0 = x.reshape(x.shape[0], -1)
    if a0.shape[1] != layers[0][0].shape[0]:
        raise ValueError(f"structured kernel: inputs have {a0.shape[1]} features, Dense_0 expects "
                         f"{layers[0][0].shape[0]}")

    def forward(eps, a):  # one sample: a [fan_in_0], eps[l] [fan_out_l]
        inputs = []
        for l, (w, b) in enumerate(layers):
            inputs.append(a)
            z = jnp.matmul(a, w, precision=_HIGHEST) + b + eps[l]
            a = jax.nn.relu(z) if l < len(layers) - 1 else z
        return a, inputs

    eps0 = [jnp.zeros_like(b) for _, b in layers]
    backprops, inputs = jax.vmap(jax.jacrev(forward, has_aux=True), in_axes=(None, 0))(eps0, a0)
    return inputs, backprops


class MLPForward(NamedTuple):
    """One forward pass of a dense ReLU MLP (`models.MLP`) with L dense layers, on N samples.

    inputs: per layer l, A_l `[N, fan_in_l]` (A_0 = flattened x, A_l = ReLU(z_{l-1})).
    gates: per hidden layer l < L-1, ReLU'(z_l) `[N, fan_out_l]` float (1 where z > 0;
      ReLU'(0) = 0 as in `jax.nn.relu`).
    logits: f(x) `[N, C]` = z_{L-1}.
    """

    inputs: list
    gates: list
    logits: jax.Array


def mlp_forward(params, x: jax.Array) -> MLPForward:
    """The forward pass of `models.MLP` written on its params, keeping what steps 5 and 8 reuse.

    x: `[N, ...]` samples (flattened to `[N, fan_in_0]`). Same operations as
    `models.MLP.__call__` (x @ kernel + bias, ReLU), so `logits` equals `apply`.
    """
    layers = _mlp_layers(params)
    a = x.reshape(x.shape[0], -1)
    if a.shape[1] != layers[0][0].shape[0]:
        raise ValueError(f"structured kernel: inputs have {a.shape[1]} features, Dense_0 expects "
                         f"{layers[0][0].shape[0]}")
    inputs, gates = [], []
    for l, (w, b) in enumerate(layers):
        inputs.append(a)
        z = jnp.matmul(a, w, precision=_HIGHEST) + b[None, :]
        if l < len(layers) - 1:
            gates.append((z > 0).astype(z.dtype))
            a = jax.nn.relu(z)
        else:
            a = z
    return MLPForward(inputs, gates, a)


def mlp_backprop_factors(params, fwd: MLPForward) -> list:
    """Per dense layer l: F_l `[N, k_l]` with F_l F_l^T = B_l / C, B_l = sum_c D_{l,c} D_{l,c}^T; None (B / C = 1)
    for the output layer.

    D_{l,c} = d f_c / d z_l; closed forms (module docstring): the last hidden
    layer's F = G diag(sqrt(s)) `[N, h]`, s_h = sum_c W_{L-1}[h, c]^2 / C;
    earlier layers backpropagate D_l = G_l ⊙ (D_{l+1} W_{l+1}^T)
    `[N, C, fan_out_l]` and take F_l = D_l / sqrt(C) as `[N, C * fan_out_l]`.
    """
    layers = _mlp_layers(params)
    n_layers, c = len(layers), layers[-1][0].shape[1]
    dtype = compute_dtype(params, fwd.logits)
    factors = [None] * n_layers
    if n_layers > 1:
        w_out = layers[-1][0].astype(dtype)
        g = fwd.gates[-1].astype(dtype)  # [N, h]
        factors[-2] = g * jnp.sqrt(jnp.sum(w_out * w_out, axis=1) / c)[None, :]
    if n_layers > 2:
        d = g[:, None, :] * w_out.T[None]  # D_{L-2} [N, C, h]
        for l in range(n_layers - 3, -1, -1):
            d = fwd.gates[l][:, None, :] * jnp.matmul(d, layers[l + 1][0].T, precision=_HIGHEST)
            factors[l] = d.reshape(d.shape[0], -1) / jnp.sqrt(jnp.asarray(c, dtype))  # sums over c in the GEMM
    return factors


def structured_kernel(params, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """SPEC step 5 for a dense ReLU MLP without forming J (see module docstring). H `[N, N]`.

    H = sum_l (A_l A_l^T + 1) ⊙ F_l F_l^T from one `mlp_forward` and
    `mlp_backprop_factors` (the output layer's term is A A^T + 1). H is
    symmetric, so it is built from the row halves a = [:N/2], b = [N/2:] as
    H_aa, H_ba, H_bb (H_ab = H_ba^T): 3/4 of the GEMM work.
    """
    x = zero_padding(x, mask)
    fwd = mlp_forward(params, x)
    dtype = compute_dtype(params, fwd.logits)
    terms = [(a.astype(dtype), f) for a, f in zip(fwd.inputs, mlp_backprop_factors(params, fwd))]

    def block(rows, cols):
        h = None
        for a, f in terms:
            term = jnp.matmul(a[rows], a[cols].T, precision=_HIGHEST) + 1.0  # +1: the bias
            if f is not None:
                term = term * jnp.matmul(f[rows], f[cols].T, precision=_HIGHEST)
            h = term if h is None else h + term
        return h

    n = x.shape[0]
    top, bottom = slice(0, n // 2), slice(n // 2, n)
    h_ba = block(bottom, top)
    h = jnp.concatenate([jnp.concatenate([block(top, top), h_ba.T], axis=1),
                         jnp.concatenate([h_ba, block(bottom, bottom)], axis=1)], axis=0)
    return _mask_kernel(h, mask)


def ntvp_kernel(apply: Apply, params, x: jax.Array, mask: jax.Array | None = None,
                chunk_size: int | None = None) -> jax.Array:
    """SPEC step 5 by NTK-vector products; columns of H in chunks of `chunk_size`. H `[N, N]`.

    Memory ~ chunk_size * C * N activations (None: all N columns at once).
    """
    x = zero_padding(x, mask)
    n = x.shape[0]
    batch = lambda p: apply(p, x)  # [N, C]

    def column(xj):  # H[:, j]
        rows = jax.jacrev(lambda p: apply(p, xj[None])[0])(params)  # J_j^T e_c, leaves [C, ...]
        prods = jax.vmap(lambda t: jax.jvp(batch, (params,), (t,))[1])(rows)  # [C, N, C]
        return jnp.trace(prods, axis1=0, axis2=2) / prods.shape[0]  # [N]

    if chunk_size is None or chunk_size >= n:
        cols = jax.vmap(column)(x)  # cols[j, i] = H[i, j]; N * C tangents at once
    else:
        cols = jax.lax.map(column, x, batch_size=chunk_size)
    h = 0.5 * (cols + cols.T)  # symmetric up to rounding; symmetrize
    return _mask_kernel(h.astype(compute_dtype(h)), mask)


def contraction_kernel(apply: Apply, params, x: jax.Array, mask: jax.Array | None = None,
                       chunk_size: int | None = None, mode: str = "rev") -> jax.Array:
    """SPEC step 5 generically: per-sample Jacobian in sample chunks, then contract. H `[N, N]`."""
    jac = per_sample_jacobian(apply, params, x, chunk_size, mode=mode, mask=mask)
    return kernel_from_jacobian(jac, mask)


def neighbourhood_kernel(apply: Apply, params, x: jax.Array, mask: jax.Array | None = None, *,
                         method: str = "contraction", chunk_size: int | None = None,
                         jacobian_mode: str = "rev") -> jax.Array:
    """SPEC step 5: H = (1/C) sum_c J_c J_c^T on node i's neighbourhood set.

    Args:
      apply: `apply(params, x [B, 28, 28, 1]) -> logits [B, C]`.
      params: one model's pytree (w̄_i).
      x: `[N, 28, 28, 1]` stacked neighbourhood samples.
      mask: bool `[N]`, False on padding rows (None = all real).
      method: one of `METHODS` ("structured" needs `models.MLP` params).
      chunk_size: samples per vectorized chunk (contraction Jacobian, ntvp columns).
      jacobian_mode: "rev" or "fwd" for the contraction's Jacobian.

    Returns:
      H `[N, N]` (float32, or float64 for float64 params / samples) with zero padding rows and columns.
    """
    if method == "contraction":
        return contraction_kernel(apply, params, x, mask, chunk_size, jacobian_mode)
    if method == "structured":
        return structured_kernel(params, x, mask)
    if method == "ntvp":
        return ntvp_kernel(apply, params, x, mask, chunk_size)
    if method == "reference":
        return reference_kernel(apply, params, x, mask)
    raise ValueError(f"unknown kernel method {method!r}; choose one of {METHODS}")
