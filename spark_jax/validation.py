"""Start-up checks of a run config: one clear line per problem (ConfigError).

Every field of `experiments/configs/base.py` is checked, in every section
(also sections the chosen algorithm does not read, so a typo in a sweep or a
config file fails at once): its type, its range, its options. Cross-field
checks (graph feasibility, sizes against the dataset, sketch k against the
layer sizes, stage boundaries) apply to the parts the run uses; `ntk.taus` is
bounded by the evolution work it asks of the integrator (`run_budget`). Data
files are checked where they are read (`spark_jax.data`, `spark_jax.partition`),
the memory a run needs once its partition is known (`spark_jax.run_data`).
"""

from __future__ import annotations

import math

from spark_jax import data, run_budget

DATASETS = tuple(data.DATASETS)  # sizes and classes: data.dataset_spec(name)
NTK_DFL_FILE_NODES = 300  # nodes in the NTK-DFL partition files
PARTITION_KINDS = ("ntk_dfl_file", "ntk_dfl", "dirichlet_hsu", "iid")
TOPOLOGY_KINDS = ("ring", "regular", "er", "torus", "complete")
MIXINGS = ("uniform", "metropolis")
MODELS = ("mlp", "cnn")
# Options of spark_jax.ntk.INTEGRATORS, spark_jax.parallel.NODE_BATCHING and
# spark_jax.sketch_share.SHARE_MODES, kept here so this module
# needs no JAX (tests/test_validation_table.py checks they agree).
INTEGRATORS = ("rk4", "rk4_hermite", "dopri5", "imex", "euler")
NODE_BATCHING = ("auto", "vectorized", "sequential")
MATMUL_PRECISIONS = ("float32", "tensorfloat32", "bfloat16", "default")  # spark_jax.algorithms.base
SHARE_MODES = ("auto", "on", "off")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _one_of(value, name: str, options) -> None:
    _require(value in options, f"{name}={value!r} is not one of {', '.join(map(repr, options))}")


def _int(value, name: str, lo: int = 1, hi: int | None = None, why: str = "") -> None:
    """An int in [lo, hi] (bools are not ints here)."""
    ok = _is_int(value) and value >= lo and (hi is None or value <= hi)
    rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
    _require(ok, f"{name}={value!r} must be an integer {rng}{why}")


def _positive_int(value, name: str) -> None:
    _int(value, name, 1)


def _number(value, name: str, lo: float, hi: float = math.inf, *, lo_open: bool = False,
            hi_open: bool = False, why: str = "") -> None:
    """A finite int or float in the interval given (open or closed at each end)."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi))
    if hi == math.inf:
        rng = f"> {lo:g}" if lo_open else f">= {lo:g}"
    else:
        rng = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    _require(ok, f"{name}={value!r} must be a finite number {rng}{why}")


def _bool(value, name: str) -> None:
    _require(isinstance(value, bool), f"{name}={value!r} must be True or False")


def _str(value, name: str) -> None:
    _require(isinstance(value, str), f"{name}={value!r} must be a string")


def _int_tuple(value, name: str) -> None:
    _require(isinstance(value, (tuple, list)) and len(value) >= 1 and all(_is_int(v) and v >= 1 for v in value),
             f"{name}={value!r} must be a non-empty tuple of integers >= 1")


def validate_config(config, algorithm_names) -> None:
    """Raises ConfigError for the first invalid field of `config`."""
    try:
        _validate(config, tuple(algorithm_names))
    except (AttributeError, KeyError) as e:  # a config file built without the base schema
        raise ConfigError(f"config is missing a field ({e}); start configs from experiments/configs/base.py") from None


def _validate(config, algorithm_names) -> None:
    _require(isinstance(config.name, str) and config.name != "", f"name={config.name!r} must be a non-empty string")
    _int(config.seed, "seed", 0, 2**32 - 1)
    _positive_int(config.rounds, "rounds")
    _one_of(config.algorithm, "algorithm", algorithm_names)
    _bool(config.progress, "progress")
    _int(config.checkpoint_every, "checkpoint_every", 0, why=" (0 = no checkpoints)")
    _one_of(config.data.dataset, "data.dataset", DATASETS)
    _str(config.data.data_dir, "data.data_dir")
    _bool(config.data.download, "data.download")
    _str(config.data.base_url, "data.base_url")
    _require(config.data.base_url == "" or config.data.base_url.startswith(("http://", "https://")),
             f"data.base_url={config.data.base_url!r} must be '' (the public mirrors) or an http(s):// URL")
    _bool(config.log.tensorboard, "log.tensorboard")
    _validate_devices(config.parallel.devices)
    _validate_partition(config)
    _validate_topology(config)
    _validate_model(config.model)
    _validate_baselines(config)
    _validate_ntk(config)
    _validate_spark_fields(config)
    _validate_eval(config.eval, data.dataset_spec(config.data.dataset).split_sizes["test"])


def _validate_partition(config) -> None:
    pc = config.partition
    _one_of(pc.kind, "partition.kind", PARTITION_KINDS)
    _int(pc.num_nodes, "partition.num_nodes", 2)
    _number(pc.alpha, "partition.alpha", 0.0, lo_open=True, why=" (smaller alpha = more heterogeneous)")
    _bool(pc.iid, "partition.iid")
    _int(pc.file_seed, "partition.file_seed", 0, why=" (the NTK-DFL files are seed0..seed4)")
    _positive_int(pc.samples_per_node, "partition.samples_per_node")
    _positive_int(pc.min_size, "partition.min_size")
    if pc.kind == "ntk_dfl_file":
        _require(pc.num_nodes <= NTK_DFL_FILE_NODES,
                 f"partition.num_nodes={pc.num_nodes} but the NTK-DFL partition files have {NTK_DFL_FILE_NODES} "
                 "nodes; use partition.kind='ntk_dfl' for more nodes")
    per_node = {"ntk_dfl": pc.samples_per_node, "iid": pc.samples_per_node, "dirichlet_hsu": pc.min_size}
    if pc.kind in per_node:
        what = "min_size" if pc.kind == "dirichlet_hsu" else "samples_per_node"
        need = pc.num_nodes * per_node[pc.kind]
        num_train = data.dataset_spec(config.data.dataset).split_sizes["train"]
        _require(need <= num_train, f"partition.num_nodes * partition.{what} = {need} exceeds the {num_train} "
                                    f"training samples of {config.data.dataset}")


def _validate_topology(config) -> None:
    from spark_jax import topology  # pylint: disable=g-import-not-at-top

    tc = config.topology
    _one_of(tc.kind, "topology.kind", TOPOLOGY_KINDS)
    _positive_int(tc.degree, "topology.degree")
    _number(tc.p, "topology.p", 0.0, 1.0, lo_open=True)
    _bool(tc.dynamic, "topology.dynamic")
    _one_of(tc.mixing, "topology.mixing", MIXINGS)
    try:
        topology.validate_topology(tc.kind, config.partition.num_nodes, degree=tc.degree, p=tc.p)
    except ValueError as e:
        raise ConfigError(f"topology: {e}") from None


def _validate_model(mc) -> None:
    _one_of(mc.name, "model.name", MODELS)
    _require(isinstance(mc.hidden, (tuple, list)) and len(mc.hidden) >= 1
             and all(_is_int(h) and h >= 1 for h in mc.hidden),
             f"model.hidden={mc.hidden!r} must be a non-empty tuple of positive widths")
    _int_tuple(mc.channels, "model.channels")
    _bool(mc.per_node_init, "model.per_node_init")


def _validate_baselines(config) -> None:
    """dfedavg, dfedavgm, dpsgd, dfedsam, dispfl: every section, whichever algorithm runs."""
    for name in ("dfedavg", "dfedavgm", "dpsgd", "dfedsam", "dispfl"):
        bc = config[name]
        _number(bc.lr, f"{name}.lr", 0.0, lo_open=True)
        _positive_int(bc.batch_size, f"{name}.batch_size")
        _positive_int(bc.local_epochs, f"{name}.local_epochs")
        if name in ("dfedavgm", "dfedsam", "dispfl"):
            _number(bc.momentum, f"{name}.momentum", 0.0, 1.0, hi_open=True)
        if name in ("dfedsam", "dispfl"):
            _number(bc.weight_decay, f"{name}.weight_decay", 0.0)
            _number(bc.lr_decay, f"{name}.lr_decay", 0.0, 1.0, lo_open=True)
    _number(config.dfedsam.rho, "dfedsam.rho", 0.0)
    dp = config.dispfl
    _number(dp.grad_clip, "dispfl.grad_clip", 0.0, why=" (0 = no clipping)")
    _number(dp.dense_ratio, "dispfl.dense_ratio", 0.0, 1.0, lo_open=True, why=" (overall mask density)")
    _number(dp.anneal_factor, "dispfl.anneal_factor", 0.0, 1.0, why=" (the drop fraction of round 0)")


def _validate_ntk(config) -> None:
    nc = config.ntk
    _number(nc.eta0, "ntk.eta0", 0.0, lo_open=True)
    _number(nc.decay, "ntk.decay", 0.0)
    taus = nc.taus
    _require(isinstance(taus, (tuple, list)) and len(taus) >= 1 and all(_is_int(t) and t >= 1 for t in taus)
             and all(b > a for a, b in zip(taus, taus[1:])),
             f"ntk.taus={tuple(taus) if isinstance(taus, list) else taus!r} must be positive integers in "
             "strictly ascending order")
    _one_of(nc.integrator, "ntk.integrator", INTEGRATORS)
    _positive_int(nc.substeps, "ntk.substeps")
    _positive_int(nc.stride, "ntk.stride")
    if "warmup" in nc:
        _int(nc.warmup, "ntk.warmup", 0, why=" (grid intervals at stride 1, 'rk4_hermite')")
    for block, name in ((nc, "ntk"), (nc.imex, "ntk.imex")):
        what = "'imex'" if block is nc.imex else "'dopri5'"
        _number(block.rtol, f"{name}.rtol", 0.0, 1.0, lo_open=True, why=f" (relative tolerance, {what})")
        _number(block.atol, f"{name}.atol", 0.0, lo_open=True, why=f" (absolute tolerance, {what})")
        _positive_int(block.max_stride, f"{name}.max_stride")
    _int(nc.imex.split_modes, "ntk.imex.split_modes", 0, 64,
         why=" (modes of H treated implicitly; each costs Newton work, and it must not exceed the "
             "neighbourhood's rows)")
    _int(nc.imex.split_iterations, "ntk.imex.split_iterations", 0, why=" (subspace iterations)")
    _one_of(nc.node_batching, "ntk.node_batching", NODE_BATCHING)
    _int(nc.product_columns, "ntk.product_columns", 0, why=" (0 = no padding)")
    _one_of(nc.kernel, "ntk.kernel", ("auto", "structured", "contraction", "ntvp"))
    _one_of(nc.jacobian_mode, "ntk.jacobian_mode", ("rev", "fwd"))
    _int(nc.sample_chunk, "ntk.sample_chunk", 0, why=" (0 = no chunking)")
    _positive_int(nc.node_chunk, "ntk.node_chunk")
    _one_of(nc.tau_criterion, "ntk.tau_criterion", ("network", "linearized"))
    _one_of(nc.matmul_precision, "ntk.matmul_precision", MATMUL_PRECISIONS)
    problem = run_budget.evolution_problem(config)  # ntk.taus against the integrator's work (all configs)
    _require(problem is None, problem or "")
    if config.algorithm in ("ntk_dfl", "spark"):
        _require_structured(config.model.name, f"ntk.kernel={nc.kernel!r}", nc.kernel == "structured")


def _validate_spark_fields(config) -> None:
    """sketch, distill, momentum, stages: ranges always, consistency when SPARK runs."""
    from spark_jax.schedules import stage_boundaries  # pylint: disable=g-import-not-at-top

    sc, dc, mc = config.sketch, config.distill, config.momentum
    _bool(sc.enabled, "sketch.enabled")
    _positive_int(sc.k, "sketch.k")
    _one_of(sc.grouping, "sketch.grouping", ("layer", "tensor", "global"))
    _bool(sc.redraw, "sketch.redraw")
    _one_of(sc.method, "sketch.method", ("auto", "structured", "forward", "materialize"))
    _positive_int(sc.direction_chunk, "sketch.direction_chunk")
    _one_of(sc.share_first_layer, "sketch.share_first_layer", SHARE_MODES)
    _number(sc.share_bytes, "sketch.share_bytes", 0.0, lo_open=True, why=" (bytes the shared first layer may hold)")
    _one_of(sc.update_mode, "sketch.update_mode", ("backproject", "own_exact", "roundtrip"))
    _number(dc.lambda_max, "distill.lambda_max", 0.0, 1.0)
    _one_of(dc.teacher, "distill.teacher", ("averaged", "neighbors"))
    _number(dc.temperature, "distill.temperature", 0.0, lo_open=True)
    _number(mc.beta, "momentum.beta", 0.0, 1.0, hi_open=True)
    _one_of(mc.velocity, "momentum.velocity", ("local", "mixed"))
    st = config.stages
    _require(isinstance(st.boundaries, (tuple, list)) and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in st.boundaries),
        f"stages.boundaries={st.boundaries!r} must be a pair of numbers")
    _one_of(st.unit, "stages.unit", ("fraction", "round"))
    _one_of(st.ramp, "stages.ramp", ("linear", "cosine"))
    try:
        stage_boundaries(tuple(st.boundaries), st.unit, config.rounds)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.algorithm == "spark" and sc.enabled:
        _require_structured(config.model.name, f"sketch.method={sc.method!r}", sc.method == "structured")
        _check_k_against_groups(config)


def _require_structured(model_name: str, what: str, asked: bool) -> None:
    """ConfigError when `what` (a 'structured' method, `asked`) meets a model without that fast path."""
    if not asked:
        return
    from spark_jax import models  # pylint: disable=g-import-not-at-top  # JAX only when asked

    able = " or ".join(f"model.name={n!r}" for n, spec in models.MODELS.items() if spec.structured)
    _require(models.supports_structured(model_name),
             f"{what} needs a model with the structured fast path ({able}), not {model_name!r}")


def _check_k_against_groups(config) -> None:
    """sketch.k may not exceed any group's d_l: that sketch would be larger than the exact Jacobian."""
    import jax  # pylint: disable=g-import-not-at-top

    from spark_jax import models, sketch  # pylint: disable=g-import-not-at-top

    sc = config.sketch
    model = models.model_for_run(config)
    sizes = sketch.group_sizes(jax.eval_shape(model.init, jax.random.key(0)), sc.grouping)
    g = min(range(len(sizes)), key=lambda i: sizes[i])
    _require(sc.k <= sizes[g],
             f"sketch.k={sc.k} exceeds the {sizes[g]} parameters of sketch group {g} (grouping "
             f"{sc.grouping!r}, group sizes {list(sizes)}): its sketch J P would be larger than the exact "
             f"Jacobian; use sketch.k <= {sizes[g]}, another sketch.grouping, or sketch.enabled=False")


def _validate_eval(ec, num_test: int) -> None:
    _int(ec.per_node_test_subset, "eval.per_node_test_subset", 0, num_test, why=" (0 = full test set)")
    _positive_int(ec.node_chunk, "eval.node_chunk")
    _number(ec.target_accuracy, "eval.target_accuracy", 0.0, 1.0, lo_open=True)
    _positive_int(ec.top_m, "eval.top_m")


def _validate_devices(devices) -> None:
    import jax  # pylint: disable=g-import-not-at-top

    available = jax.device_count()
    _require(_is_int(devices) and 0 <= devices <= available,
             f"parallel.devices={devices!r} must be an integer in [0, {available}] (0 = all {available} "
             f"{jax.devices()[0].platform} devices, 1 = no sharding)")
