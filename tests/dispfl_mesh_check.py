"""DisPFL round on a 2-device 'nodes' mesh vs one device (run by tests/test_dispfl.py with
XLA_FLAGS=--xla_force_host_platform_device_count=2, which must be set before jax is imported).

6 nodes (3 per device); node 0 has node 5, on the other device, as a neighbour. Prints one line:
max |params difference|, whether the masks are equal, |train_loss difference|.
"""

import jax
import jax.numpy as jnp
import numpy as np

from spark_jax import parallel
from spark_jax.algorithms import dispfl
from tests import test_dispfl as t


def main():
    nd = t._node_data(np.random.default_rng(0))
    nd = jax.tree.map(lambda a: jnp.asarray(np.concatenate([a, a[:1]])), nd)  # node 5 = a copy of node 0's data
    nbr, smask = t._graph()
    nbr[0, 3] = 5  # node 0: {0, 1, 3, 5}
    nbr = np.concatenate([nbr, [[5, 0, 5, 5]]]).astype(np.int32)
    smask = np.concatenate([smask, [[True, True, False, False]]])
    c = t._config()
    c.partition.num_nodes = 6
    out = []
    for mesh in (None, parallel.node_mesh(2)):
        alg = dispfl.make(c, t._model(), mesh=mesh)
        state = alg.init(jax.random.key(1), nd)
        if mesh is not None:
            state = parallel.shard_nodes(state, mesh)
        state, metrics = jax.jit(alg.round)(state, nd, t._inputs(nbr, smask, 1, 3))
        out.append((jax.tree.map(np.asarray, state), float(metrics["train_loss"])))
    (a, loss_a), (b, loss_b) = out
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))
    same = all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.masks), jax.tree.leaves(b.masks)))
    print(diff, same, abs(loss_a - loss_b))


if __name__ == "__main__":
    main()
