"""Building a run from its config: mesh, data, partition, graphs, model and algorithm, all checked before
anything is written (`prepare` -> `Setup`); the per-round inputs and the final models of a run.

`spark_jax.runner.experiment` runs the rounds of what this builds.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from spark_jax import algorithms, parallel
from spark_jax.algorithms.base import RoundInputs
from spark_jax.rng import numpy_rng, stream_key
from spark_jax.runner import distributed, run_data
from spark_jax.runner.validation import ConfigError, validate_config
from spark_jax.setting import data, metrics, partition, topology
from spark_jax.setting.models import model_for_run, num_params


class Setup(NamedTuple):
    """Everything a run needs, built and checked before anything is written."""

    config: Any
    model: Any
    algorithm: Any
    node_data: partition.NodeData  # jax arrays, leading node axis
    test_x: jax.Array  # [N_test, H, W, 1] (Fashion-MNIST: [10000, 28, 28, 1])
    test_y: jax.Array  # [N_test]
    node_test_x: jax.Array  # per-node evaluation set (full or seeded subset)
    node_test_y: jax.Array
    topology: topology.TopologyStream
    num_params: int
    label_hist: np.ndarray  # [M, C]
    data_source: str
    mesh: Any = None  # 'nodes' mesh (config.parallel.devices > 1), else None: one device
    data_fingerprint: dict | None = None  # per file bytes + sha256 (`run_data`), recorded in config.json


def make_mesh(config):
    """The 'nodes' mesh, or None for one device.

    config.parallel.devices = 0: the most available devices that divide the
    node count (all of them when they do); N > 0: exactly N devices (error
    if the node count does not split evenly over them). Several processes
    (`spark_jax.runner.distributed`): always every process's devices, so the node
    count must be divisible by the global device count.
    """
    num_nodes = config.partition.num_nodes
    if jax.process_count() > 1:
        total = jax.device_count()
        if config.parallel.devices not in (0, total):
            raise ConfigError(f"parallel.devices={config.parallel.devices}: a run over {jax.process_count()} "
                              f"processes uses all their {total} devices (parallel.devices=0 or {total})")
        try:
            parallel.check_divisible(num_nodes, total)
        except ValueError as e:
            raise ConfigError(f"{e} ({jax.process_count()} processes x {jax.local_device_count()})") from None
        return parallel.node_mesh(total)
    if config.parallel.devices:
        devices = config.parallel.devices
        try:
            parallel.check_divisible(num_nodes, devices)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    else:
        devices = max(d for d in range(1, jax.device_count() + 1) if num_nodes % d == 0)
    return None if devices == 1 else parallel.node_mesh(devices)


def prepare(config) -> Setup:
    """Validates the config and builds data, partition, graphs, model, algorithm.

    With a mesh (several devices) the node data and test sets are replicated on
    every device: any node's neighbourhood may live on any shard, and a
    replicated copy placed once costs no per-round all-gather. The node axis
    of the state is split over the devices in `_run_rounds`.
    """
    validate_config(config, algorithms.available())
    mesh = make_mesh(config)
    loaded = distributed.run_everywhere("data", lambda: run_data.load(config), run_data.digest)
    ds, part, topo = loaded.dataset, loaded.partition, loaded.topology
    # Only the samples the nodes hold are normalized (a tiny run holds 320 of 60,000), in partition order.
    used = partition.Partition(part.offsets, np.arange(len(part.indices)))
    nd = partition.make_node_data(data.normalize_images(ds.train_images[part.indices], ds.name),
                                  ds.train_labels[part.indices].astype(np.int32), used)
    test_x = data.normalize_images(ds.test_images, ds.name)
    test_y = ds.test_labels.astype(np.int32)
    subset = config.eval.per_node_test_subset
    if subset:
        idx = numpy_rng(stream_key(config.seed, "eval"), 0).choice(len(test_y), subset, replace=False)
        node_x, node_y = test_x[idx], test_y[idx]
    else:
        node_x, node_y = test_x, test_y
    model = model_for_run(config)  # config.data.dataset is the dataset `ds` loaded
    algorithm = algorithms.make_algorithm(config, model, mesh)
    d = num_params(jax.eval_shape(model.init, jax.random.key(0)))  # shapes only: no eager init ops
    place = jnp.asarray if mesh is None else lambda a: parallel.replicate(a, mesh)
    return Setup(config=config, model=model, algorithm=algorithm,
                 node_data=jax.tree.map(place, nd), test_x=place(test_x),
                 test_y=place(test_y), node_test_x=place(node_x),
                 node_test_y=place(node_y), topology=topo, num_params=d,
                 label_hist=partition.label_histogram(part, ds.train_labels, model.num_classes),
                 data_source=ds.source, mesh=mesh, data_fingerprint=loaded.fingerprint)


def round_inputs(graph: topology.Graph, round_index: int, train_key: jax.Array) -> RoundInputs:
    return RoundInputs(neighbors=jnp.asarray(graph.neighbors), weights=jnp.asarray(graph.weights),
                       mask=jnp.asarray(graph.mask), round_index=jnp.int32(round_index),
                       key=jax.random.fold_in(train_key, round_index))


def final_models(setup: Setup, node_params) -> dict:
    """Aggregated and NTK-DFL top-m final models on a seeded 50:50 val/test split."""
    cfg = setup.config
    n = setup.test_y.shape[0]
    perm = numpy_rng(stream_key(cfg.seed, "eval"), 1).permutation(n)
    val, test = perm[: n // 2], perm[n // 2:]
    m = min(cfg.eval.top_m, cfg.partition.num_nodes)
    top_params, best = metrics.top_m_model(setup.model.apply, node_params, setup.test_x[val],
                                           setup.test_y[val], m, cfg.eval.node_chunk)
    acc = lambda p: metrics.accuracy(setup.model.apply, p, setup.test_x[test], setup.test_y[test])
    return {"top_m": m, "top_m_nodes": best, "top_m_test_half_accuracy": acc(top_params),
            "aggregated_test_half_accuracy": acc(metrics.mean_params(node_params))}
