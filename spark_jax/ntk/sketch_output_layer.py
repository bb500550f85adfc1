"""The output layer's part of SPARK's sketched kernel in closed form (SPEC step 5, sketch mode, "structured").

The last dense layer of a `models.MLP` computes z_c = ã · W̃[:, c] with ã = [1; a] `[F]` (F = fan_in + 1,
the bias first), so d z_c / d W̃[j, c'] = ã_j δ_{c c'}: its backprop is the identity. Row n of a group's sketch
is then J~_c[n] = ã_n^T P_c, P_c `[F, k]` the rows of P_g that belong to class c (bias c and kernel column c;
`P_g.reshape(F, C, k)[:, c]`, the layout in `spark_jax.ntk.sketch`). Summed over the classes,

  (1/C) sum_c J~_c J~_c^T = Ã M Ã^T,   M = (1/C) sum_c P_c P_c^T   `[F, F]`,

exactly (not an approximation): an `[N, F] x [F, F] x [F, N]` product instead of a Gram over the group's
C k sketch columns. For the MLP 784-100-10 at k = 512 that is 2 N^2 F = 2 N^2 101 FLOPs per neighbourhood
against 2 N^2 5,120 x 2/3 for the Gram, half of the sketched kernel's work. M depends on P only (the same at
every node); a group of the last layer's leaves only ("layer" or "tensor" grouping) qualifies, a group that
mixes layers ("global") does not, since its sketch sums every layer's part before the Gram.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from spark_jax.dtypes import compute_dtype
from spark_jax.ntk import sketched_ntk
from spark_jax.ntk.kernel import mlp_forward
from spark_jax.ntk.sketch import _check_projections, _dense_layer_index, _layout  # the sketch layout, shared

_HIGHEST = jax.lax.Precision.HIGHEST


def output_layer_groups(params, grouping: str) -> tuple[int, ...]:
    """Indices of the groups whose leaves all belong to the last dense layer of `models.MLP` params (static);
    () for a grouping that mixes layers ("global" with hidden layers)."""
    layer_of = _dense_layer_index(params)
    last = len(layer_of) - 1
    return tuple(g for g, group in enumerate(_layout(params, grouping))
                 if all(layer_of[leaf.path[0]] == last for leaf in group))


def output_layer_gram(params, P: Sequence[jax.Array], grouping: str) -> jax.Array:
    """M = (1/C) sum_{g in output_layer_groups} sum_c P_{g,c} P_{g,c}^T `[F, F]`, F = fan_in + 1 of the last layer.

    Row/column 0 is the bias, 1 + i the kernel's input i (the augmented input ã = [1; a]); a group holding
    only the bias or only the kernel fills its part (the rest stays zero).
    """
    layout = _layout(params, grouping)
    _check_projections(P, layout)
    layer_of = _dense_layer_index(params)
    fan_in, c = params[max(layer_of, key=layer_of.get)]["kernel"].shape  # the last dense layer's
    dtype = compute_dtype(*P)
    m = jnp.zeros((fan_in + 1, fan_in + 1), dtype)
    for g in output_layer_groups(params, grouping):
        k = P[g].shape[1]
        parts = {leaf.path[1]: P[g][leaf.offset:leaf.offset + leaf.size].reshape(-1, c, k) for leaf in layout[g]}
        rows = jnp.concatenate([parts.get("bias", jnp.zeros((1, c, k), dtype)),
                                parts.get("kernel", jnp.zeros((fan_in, c, k), dtype))]).astype(dtype)  # [F, C, k]
        m = m + jnp.einsum("ick,jck->ij", rows, rows, precision=_HIGHEST) / c
    return m


def output_layer_kernel(params, x: jax.Array, mask: jax.Array | None, gram: jax.Array) -> jax.Array:
    """The output-layer groups' part of H~ (SPEC step 5): Ã M Ã^T `[N, N]`, Ã = [1; a_{L-1}] `[N, F]`.

    params: one model's `models.MLP` params (w̄_i); x: `[N, ...]` samples; mask: bool `[N]` (None = all real;
    padding rows and columns are zero); gram: `output_layer_gram(...)` M `[F, F]`. Exactly symmetric.
    """
    a = mlp_forward(params, x).inputs[-1]
    dtype = compute_dtype(a, gram)
    aug = jnp.concatenate([jnp.ones((a.shape[0], 1), dtype), a.astype(dtype)], axis=1)
    if mask is not None:
        aug = jnp.where(mask[:, None], aug, jnp.zeros((), dtype))
    h = jnp.matmul(jnp.matmul(aug, gram.astype(dtype), precision=_HIGHEST), aug.T, precision=_HIGHEST)
    return (h + h.T) / 2


def closed_form_groups(params, grouping: str, method: str) -> tuple[int, ...]:
    """The groups whose kernel part `closed_form_kernel` gives (static): the output layer's, for the
    "structured" sketch method (a `models.MLP`); none for the other methods."""
    return output_layer_groups(params, grouping) if method == "structured" else ()


def gram_groups(params, grouping: str, method: str) -> tuple[int, ...]:
    """The other groups (static): their kernel part is the Gram of their sketches."""
    closed = closed_form_groups(params, grouping, method)
    return tuple(g for g in range(len(_layout(params, grouping))) if g not in closed)


def closed_form_kernel(params, x: jax.Array, mask: jax.Array | None, P: Sequence[jax.Array], grouping: str,
                       method: str) -> jax.Array:
    """The `closed_form_groups` part of H~ `[N, N]` (zeros when there are none)."""
    if not closed_form_groups(params, grouping, method):
        return jnp.zeros((x.shape[0],) * 2, compute_dtype(params, x, *P))
    # M is recomputed for each neighbourhood (it depends on P only): 1.0 ms of the 3.4 ms this takes at
    # N = 1,194, k = 512, ~0.3 s of a 300-node round; passing it in would add an argument to every node step.
    return output_layer_kernel(params, x, mask, output_layer_gram(params, P, grouping))


def kernel_from_sketches(params, x: jax.Array, mask: jax.Array | None, sketches: Sequence[jax.Array],
                         P: Sequence[jax.Array], grouping: str, method: str) -> jax.Array:
    """SPEC step 5 (sketch mode) from every group's sketch J~_g `[N, C, k]`: H~ `[N, N]`, the
    `closed_form_groups` part from `closed_form_kernel`, the rest `sketched_ntk.sketched_kernel`."""
    closed = closed_form_groups(params, grouping, method)
    rest = tuple(s for g, s in enumerate(sketches) if g not in closed)
    if not closed:
        return sketched_ntk.sketched_kernel(rest, mask)
    h = closed_form_kernel(params, x, mask, P, grouping, method)
    return h + sketched_ntk.sketched_kernel(rest, mask) if rest else h
