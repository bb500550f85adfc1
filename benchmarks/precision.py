"""Float32 GEMM rate and error at each matmul precision (what TF32 / bf16 would buy and cost).

  python -m benchmarks.precision [--n=8192] [--out=precision.json]

For 'float32' (full), 'tensorfloat32', 'bfloat16' and the backend's default:
the FLOP/s of an [n, n] x [n, n] float32 product (`common.matmul_throughput`)
and the largest relative error of a [512, 512] product against float64
NumPy. On CPU all four are full float32 (equal rates, ~1e-7 errors); on
NVIDIA GPUs 'default' may be TF32 (~1e-3 errors), which is why the NTK rounds
set `algorithm_kw.compute.matmul_precision='float32'` (BUILD.md "GPU").
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks.common import matmul_throughput

_N = flags.DEFINE_integer("n", 8192, "GEMM size for the rates.")
_OUT = flags.DEFINE_string("out", None, "Also write the JSON here.")

PRECISIONS = ("float32", "tensorfloat32", "bfloat16", None)


def relative_error(precision, n: int = 512) -> float:
    """max |A B - (A B)_float64| / max |(A B)_float64| for float32 normal A, B [n, n]."""
    a = np.asarray(jax.random.normal(jax.random.key(1), (n, n), jnp.float32))
    b = np.asarray(jax.random.normal(jax.random.key(2), (n, n), jnp.float32))
    got = np.asarray(jax.jit(lambda x, y: jnp.matmul(x, y, precision=precision))(a, b), np.float64)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def main(argv):
    del argv
    out = {"device": jax.devices()[0].device_kind, "platform": jax.default_backend(), "n": _N.value,
           "gflops": {}, "relative_error": {}}
    for p in PRECISIONS:
        name = p or "default"
        out["gflops"][name] = matmul_throughput(_N.value, repeats=5, precision=p) / 1e9
        out["relative_error"][name] = relative_error(p)
    text = json.dumps(out, indent=2)
    print(text)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
