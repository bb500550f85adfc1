"""Start-up checks of a run config: one clear line per problem (ConfigError)."""

from __future__ import annotations

DATASETS = ("fashion_mnist", "mnist")
PARTITION_KINDS = ("ntk_dfl_file", "ntk_dfl", "dirichlet_hsu", "iid")
TOPOLOGY_KINDS = ("ring", "regular", "er", "torus", "complete")
MIXINGS = ("uniform", "metropolis")
MODELS = ("mlp", "cnn")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _one_of(value, name: str, options) -> None:
    _require(value in options, f"{name}={value!r} is not one of {', '.join(map(repr, options))}")


def _positive_int(value, name: str) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
             f"{name}={value!r} must be an integer >= 1")


def validate_config(config, algorithm_names) -> None:
    """Raises ConfigError for the first invalid field of `config`."""
    _positive_int(config.rounds, "rounds")
    _require(isinstance(config.seed, int) and config.seed >= 0, f"seed={config.seed!r} must be an integer >= 0")
    _one_of(config.algorithm, "algorithm", tuple(algorithm_names))
    _one_of(config.data.dataset, "data.dataset", DATASETS)
    _validate_devices(config.parallel.devices)

    pc = config.partition
    _one_of(pc.kind, "partition.kind", PARTITION_KINDS)
    _require(isinstance(pc.num_nodes, int) and pc.num_nodes >= 2, f"partition.num_nodes={pc.num_nodes!r} must be >= 2")
    _require(pc.alpha > 0, f"partition.alpha={pc.alpha!r} must be > 0 (smaller alpha = more heterogeneous)")
    _positive_int(pc.samples_per_node, "partition.samples_per_node")
    _require(pc.min_size >= 1, f"partition.min_size={pc.min_size!r} must be >= 1")

    tc = config.topology
    _one_of(tc.kind, "topology.kind", TOPOLOGY_KINDS)
    _one_of(tc.mixing, "topology.mixing", MIXINGS)

    _one_of(config.model.name, "model.name", MODELS)
    _require(all(isinstance(h, int) and h >= 1 for h in config.model.hidden) and len(config.model.hidden) >= 1,
             f"model.hidden={config.model.hidden!r} must be a non-empty tuple of positive widths")

    if config.algorithm == "dfedavg":
        dc = config.dfedavg
        _require(dc.lr > 0, f"dfedavg.lr={dc.lr!r} must be > 0")
        _positive_int(dc.batch_size, "dfedavg.batch_size")
        _positive_int(dc.local_epochs, "dfedavg.local_epochs")

    if config.algorithm in ("dfedavgm", "dpsgd", "dfedsam"):
        bc = config[config.algorithm]
        name = config.algorithm
        _require(bc.lr > 0, f"{name}.lr={bc.lr!r} must be > 0")
        _positive_int(bc.batch_size, f"{name}.batch_size")
        _positive_int(bc.local_epochs, f"{name}.local_epochs")
        if name in ("dfedavgm", "dfedsam"):
            _require(0.0 <= bc.momentum < 1.0, f"{name}.momentum={bc.momentum!r} must be in [0, 1)")
        if name == "dfedsam":
            _require(bc.rho >= 0, f"dfedsam.rho={bc.rho!r} must be >= 0")
            _require(bc.weight_decay >= 0, f"dfedsam.weight_decay={bc.weight_decay!r} must be >= 0")
            _require(0 < bc.lr_decay <= 1, f"dfedsam.lr_decay={bc.lr_decay!r} must be in (0, 1]")

    if config.algorithm == "spark":
        _validate_spark(config)

    if config.algorithm in ("ntk_dfl", "spark"):
        nc = config.ntk
        _require(nc.eta0 > 0, f"ntk.eta0={nc.eta0!r} must be > 0")
        _require(nc.decay >= 0, f"ntk.decay={nc.decay!r} must be >= 0")
        taus = tuple(nc.taus)
        _require(len(taus) >= 1 and all(isinstance(t, int) and t >= 1 for t in taus)
                 and all(b > a for a, b in zip(taus, taus[1:])),
                 f"ntk.taus={taus!r} must be positive integers in strictly ascending order")
        _one_of(nc.integrator, "ntk.integrator", ("rk4", "rk4_hermite", "euler"))
        _positive_int(nc.substeps, "ntk.substeps")
        _positive_int(nc.stride, "ntk.stride")
        _one_of(nc.kernel, "ntk.kernel", ("auto", "structured", "contraction", "ntvp"))
        _require(not (nc.kernel == "structured" and config.model.name != "mlp"),
                 f"ntk.kernel='structured' needs model.name='mlp', not {config.model.name!r}")
        _one_of(nc.jacobian_mode, "ntk.jacobian_mode", ("rev", "fwd"))
        _require(nc.sample_chunk >= 0, f"ntk.sample_chunk={nc.sample_chunk!r} must be >= 0 (0 = no chunking)")
        _positive_int(nc.node_chunk, "ntk.node_chunk")
        _one_of(nc.tau_criterion, "ntk.tau_criterion", ("network", "linearized"))

    ec = config.eval
    _require(0 <= ec.per_node_test_subset <= 10000,
             f"eval.per_node_test_subset={ec.per_node_test_subset!r} must be in [0, 10000] (0 = full test set)")
    _positive_int(ec.node_chunk, "eval.node_chunk")
    _positive_int(ec.top_m, "eval.top_m")
    _require(0 < ec.target_accuracy <= 1, f"eval.target_accuracy={ec.target_accuracy!r} must be in (0, 1]")


def _validate_devices(devices) -> None:
    import jax

    available = jax.device_count()
    _require(isinstance(devices, int) and not isinstance(devices, bool) and 0 <= devices <= available,
             f"parallel.devices={devices!r} must be an integer in [0, {available}] (0 = all {available} "
             f"{jax.devices()[0].platform} devices, 1 = no sharding)")


def _validate_spark(config) -> None:
    from spark_jax.schedules import stage_boundaries

    sc, dc, mc = config.sketch, config.distill, config.momentum
    _positive_int(sc.k, "sketch.k")
    _one_of(sc.grouping, "sketch.grouping", ("layer", "tensor", "global"))
    _one_of(sc.method, "sketch.method", ("auto", "structured", "forward", "materialize"))
    _require(not (sc.enabled and sc.method == "structured" and config.model.name != "mlp"),
             f"sketch.method='structured' needs model.name='mlp', not {config.model.name!r}")
    _positive_int(sc.direction_chunk, "sketch.direction_chunk")
    _one_of(sc.update_mode, "sketch.update_mode", ("backproject", "own_exact", "roundtrip"))
    _require(0.0 <= dc.lambda_max <= 1.0, f"distill.lambda_max={dc.lambda_max!r} must be in [0, 1]")
    _one_of(dc.teacher, "distill.teacher", ("averaged", "neighbors"))
    _require(dc.temperature > 0, f"distill.temperature={dc.temperature!r} must be > 0")
    _require(0.0 <= mc.beta < 1.0, f"momentum.beta={mc.beta!r} must be in [0, 1)")
    _one_of(mc.velocity, "momentum.velocity", ("local", "mixed"))
    _one_of(config.stages.ramp, "stages.ramp", ("linear", "cosine"))
    try:
        stage_boundaries(tuple(config.stages.boundaries), config.stages.unit, config.rounds)
    except ValueError as e:
        raise ConfigError(str(e)) from None
