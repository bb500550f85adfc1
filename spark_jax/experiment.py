"""One experiment from a config: validate, prepare, run the rounds, write files.

`run(config, workdir)` is what `experiments/run.py` calls. Every fallible
step (config checks, data, partition, graph feasibility) happens in
`prepare`, before the run directory is created, so bad input never leaves a
half-written directory behind.
"""

from __future__ import annotations

import shutil
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from spark_jax import algorithms, comm, data, metrics, parallel, partition, topology
from spark_jax.algorithms.base import RoundInputs
from spark_jax.models import make_model, num_params
from spark_jax.rng import numpy_rng, stream_key
from spark_jax.run_io import RunDir, to_jsonable
from spark_jax.validation import ConfigError, validate_config

__all__ = ["ConfigError", "Setup", "prepare", "run", "build_partition"]


class Setup(NamedTuple):
    """Everything a run needs, built and checked before anything is written."""

    config: Any
    model: Any
    algorithm: Any
    node_data: partition.NodeData  # jax arrays, leading node axis
    test_x: jax.Array  # [10000, 28, 28, 1]
    test_y: jax.Array  # [10000]
    node_test_x: jax.Array  # per-node evaluation set (full or seeded subset)
    node_test_y: jax.Array
    topology: topology.TopologyStream
    num_params: int
    label_hist: np.ndarray  # [M, C]
    data_source: str
    mesh: Any = None  # 'nodes' mesh (config.parallel.devices > 1), else None: one device


def _file_split(config) -> str:
    return "iid" if config.partition.iid else f"alpha{config.partition.alpha:g}"


def build_partition(config, labels: np.ndarray) -> partition.Partition:
    """The node partition named by `config.partition` (SPEC "Data")."""
    pc = config.partition
    rng = numpy_rng(stream_key(config.seed, "data"), 0)
    if pc.kind == "ntk_dfl_file":
        full = partition.load_ntk_dfl_partition(config.data.dataset, 300, _file_split(config), pc.file_seed,
                                                data_dir=config.data.data_dir or None, num_train=len(labels))
        if pc.num_nodes > full.num_nodes:
            raise ConfigError(f"partition.num_nodes={pc.num_nodes} but the NTK-DFL partition files have "
                              f"{full.num_nodes} nodes; use partition.kind='ntk_dfl' for more nodes")
        end = int(full.offsets[pc.num_nodes])
        return partition.Partition(full.offsets[: pc.num_nodes + 1], full.indices[:end])
    if pc.kind == "ntk_dfl":
        return partition.ntk_dfl_dirichlet(labels, pc.num_nodes, pc.samples_per_node, pc.alpha, rng)
    if pc.kind == "dirichlet_hsu":
        return partition.hsu_dirichlet(labels, pc.num_nodes, pc.alpha, rng, min_size=pc.min_size)
    if pc.kind == "iid":
        return partition.iid(labels, pc.num_nodes, rng, samples_per_node=pc.samples_per_node)
    raise ConfigError(f"unknown partition.kind {pc.kind!r}")


def make_topology(config) -> topology.TopologyStream:
    tc = config.topology
    topo_key = stream_key(config.seed, "topology")
    return topology.TopologyStream(tc.kind, config.partition.num_nodes, degree=tc.degree, p=tc.p,
                                   dynamic=tc.dynamic, mixing=tc.mixing,
                                   seed_rng_fn=lambda r: numpy_rng(topo_key, r))


def make_mesh(config):
    """The 'nodes' mesh, or None for one device.

    config.parallel.devices = 0: the most available devices that divide the
    node count (all of them when they do); N > 0: exactly N devices (error
    if the node count does not split evenly over them).
    """
    num_nodes = config.partition.num_nodes
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
    ds = data.load_dataset(config.data.dataset, config.data.data_dir or None)
    part = build_partition(config, ds.train_labels)  # e.g. more nodes than samples
    topo = make_topology(config)  # graph feasibility (e.g. odd M with odd degree)
    topo.graph(0)
    train_x = data.normalize_images(ds.train_images, ds.name)
    nd = partition.make_node_data(train_x, ds.train_labels.astype(np.int32), part)
    test_x = data.normalize_images(ds.test_images, ds.name)
    test_y = ds.test_labels.astype(np.int32)
    subset = config.eval.per_node_test_subset
    if subset:
        idx = numpy_rng(stream_key(config.seed, "eval"), 0).choice(len(test_y), subset, replace=False)
        node_x, node_y = test_x[idx], test_y[idx]
    else:
        node_x, node_y = test_x, test_y
    mc = config.model
    model = make_model(mc.name, hidden=mc.hidden, channels=mc.channels, num_classes=data.NUM_CLASSES)
    algorithm = algorithms.make_algorithm(config, model, mesh)
    d = num_params(model.init(jax.random.key(0)))
    place = jnp.asarray if mesh is None else lambda a: parallel.replicate(a, mesh)
    return Setup(config=config, model=model, algorithm=algorithm,
                 node_data=jax.tree.map(place, nd), test_x=place(test_x),
                 test_y=place(test_y), node_test_x=place(node_x),
                 node_test_y=place(node_y), topology=topo, num_params=d,
                 label_hist=partition.label_histogram(part, ds.train_labels, data.NUM_CLASSES),
                 data_source=ds.source, mesh=mesh)


def round_inputs(graph: topology.Graph, round_index: int, train_key: jax.Array) -> RoundInputs:
    return RoundInputs(neighbors=jnp.asarray(graph.neighbors), weights=jnp.asarray(graph.weights),
                       mask=jnp.asarray(graph.mask), round_index=jnp.int32(round_index),
                       key=jax.random.fold_in(train_key, round_index))


def _progress(config, total):
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=config.name, unit="round")


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


def run(config, workdir) -> dict:
    """Runs `config.rounds` rounds and writes the run directory; returns the summary."""
    setup = prepare(config)
    run_dir = RunDir(workdir)
    run_dir.create()
    try:
        run_dir.write_config(config.to_dict())
        (run_dir.path / "partition.txt").write_text(partition.histogram_summary(setup.label_hist) + "\n")
        partition.plot_label_heatmap(setup.label_hist, run_dir.path / "label_histogram.png")
        return _run_rounds(setup, run_dir)
    except BaseException:
        # Nothing half-written: a run that failed before its first round leaves no directory.
        if not (run_dir.path / "metrics.jsonl").exists():
            shutil.rmtree(run_dir.path, ignore_errors=True)
        raise


def _run_rounds(setup: Setup, run_dir: RunDir) -> dict:
    cfg = setup.config
    alg = setup.algorithm
    state = alg.init(stream_key(cfg.seed, "init"), setup.node_data)
    # With a mesh: state node axis split over the devices, per-round graph arrays replicated.
    place_inputs = (lambda x: x) if setup.mesh is None else lambda x: parallel.replicate(x, setup.mesh)
    if setup.mesh is not None:
        state = parallel.shard_nodes(state, setup.mesh)
    round_fn = jax.jit(alg.round, donate_argnums=0)
    evaluate = metrics.make_evaluate(setup.model.apply, cfg.eval.node_chunk)
    train_key = stream_key(cfg.seed, "train")
    bar = _progress(cfg, cfg.rounds)
    start = time.perf_counter()
    cumulative, history, totals = 0, [], {}
    counts = jax.device_get(setup.node_data.counts)
    for r in range(cfg.rounds):
        t0 = time.perf_counter()
        graph = setup.topology.graph(r)
        state, alg_metrics = round_fn(state, setup.node_data, place_inputs(round_inputs(graph, r, train_key)))
        ev = evaluate(state.params, setup.test_x, setup.test_y, setup.node_test_x, setup.node_test_y)
        ev, alg_metrics = jax.device_get((ev, alg_metrics))
        weights_sent = comm.weight_bytes(graph.neighbors, graph.mask, setup.num_params)
        messages = alg.message_bytes(graph.neighbors, graph.mask, counts) if alg.message_bytes else {}
        sent = weights_sent + messages.get("message_bytes", 0)
        cumulative += sent
        for key in ("jacobian_bytes", "exact_jacobian_bytes"):
            totals[key] = totals.get(key, 0) + messages.get(key, 0)
        record = {"round": r + 1, **ev, **alg_metrics, **messages, "weight_bytes": weights_sent,
                  "bytes_round": sent, "bytes_cumulative": cumulative,
                  "round_time": time.perf_counter() - t0, "wall_time": time.perf_counter() - start}
        run_dir.append_metrics(record)
        history.append(to_jsonable(record))
        if bar is not None:
            bar.set_postfix(acc=f"{record['test_accuracy']:.4f}", loss=f"{record.get('train_loss', float('nan')):.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    accs = [h["test_accuracy"] for h in history]
    hit = metrics.rounds_to_target(accs, cfg.eval.target_accuracy)
    summary = {
        "config_name": cfg.name, "algorithm": alg.name, "rounds": cfg.rounds, "num_nodes": cfg.partition.num_nodes,
        "num_params": setup.num_params, "data_source": setup.data_source,
        "final_test_accuracy": accs[-1], "best_test_accuracy": max(accs),
        "final_node_accuracy_mean": history[-1]["node_accuracy_mean"],
        "target_accuracy": cfg.eval.target_accuracy, "rounds_to_target": hit,
        "bytes_to_target": history[hit - 1]["bytes_cumulative"] if hit else None,
        "bytes_total": cumulative, "jacobian_bytes_total": totals.get("jacobian_bytes", 0),
        "jacobian_traffic_reduction": (1.0 - totals["jacobian_bytes"] / totals["exact_jacobian_bytes"]
                                       if totals.get("exact_jacobian_bytes") else None),
        "wall_time": time.perf_counter() - start,
        "final_models": to_jsonable(final_models(setup, state.params if setup.mesh is None
                                                 else parallel.replicate(state.params, setup.mesh))),
    }
    run_dir.write_summary(summary)
    return summary
