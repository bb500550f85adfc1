"""Start-up checks of a run config: one clear line per problem (ConfigError).

Every field of `experiments/configs/base.py` is checked: its type, its range,
its options; the algorithm's keyword arguments (`config.algorithm_kw`) by the
algorithm's own check (`spark_jax.algorithms.check_config`: the option
dataclasses check themselves). Cross-field checks (graph feasibility, sizes
against the dataset, sketch k against the layer sizes) apply to the parts the
run uses; an NTK algorithm's `algorithm_kw.taus` is bounded by the evolution
work it asks of the integrator (`run_budget`). Data
files are checked where they are read (`spark_jax.setting.data`, `spark_jax.setting.partition`),
the memory a run needs once its partition is known (`spark_jax.runner.run_data`).
"""

from __future__ import annotations

from spark_jax import checks
from spark_jax.runner import run_budget
from spark_jax.setting import data

DATASETS = tuple(data.DATASETS)  # sizes and classes: data.dataset_spec(name)
NTK_DFL_FILE_NODES = 300  # nodes in the NTK-DFL partition files
PARTITION_KINDS = ("ntk_dfl_file", "ntk_dfl", "dirichlet_hsu", "iid")
TOPOLOGY_KINDS = ("ring", "regular", "er", "torus", "complete")
MIXINGS = ("uniform", "metropolis")

# A config value that cannot work; the message names the field (an OptionError: the option dataclasses
# and the config adapter raise the same).
ConfigError = checks.OptionError
_require, _is_int, _one_of, _int = checks.require, checks.is_int, checks.one_of, checks.integer
_number, _bool, _str, _int_tuple = checks.number, checks.boolean, checks.string, checks.int_tuple


def _positive_int(value, name: str) -> None:
    _int(value, name, 1)


def validate_config(config, algorithm_names) -> None:
    """Raises ConfigError for the first invalid field of `config`."""
    try:
        _validate(config, tuple(algorithm_names))
    except (AttributeError, KeyError) as e:  # a config file built without the base schema
        raise ConfigError(f"config is missing a field ({e}); start configs from experiments/configs/base.py "
                          "(base_config(ALGORITHM)), and switch algorithms with spark_jax.algorithms.with_algorithm, "
                          "which sets config.algorithm_kw to the new algorithm's keyword arguments") from None


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
    _int(config.parallel.cpu_devices, "parallel.cpu_devices", 0, why=" (0 = one per core, at most 8; 1 = the CPU as one device)")
    _validate_partition(config)
    _validate_topology(config)
    _validate_model(config.model)
    _validate_algorithm(config)
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
    from spark_jax.setting import topology  # pylint: disable=g-import-not-at-top

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
    from spark_jax.setting import models  # pylint: disable=g-import-not-at-top  # the registry, read here

    _one_of(mc.name, "model.name", tuple(models.MODELS))
    _require(isinstance(mc.hidden, (tuple, list)) and len(mc.hidden) >= 1
             and all(_is_int(h) and h >= 1 for h in mc.hidden),
             f"model.hidden={mc.hidden!r} must be a non-empty tuple of positive widths")
    _int_tuple(mc.channels, "model.channels")
    _bool(mc.per_node_init, "model.per_node_init")


def _validate_algorithm(config) -> None:
    """The algorithm's keyword arguments (`algorithms.check_config`: its registered check), then, for the
    NTK algorithms, what crosses sections: the taus against the integrator's work, the structured fast
    paths against the model, sketch k against the layer sizes."""
    from spark_jax import algorithms  # pylint: disable=g-import-not-at-top

    algorithms.check_config(config)
    kw = config.algorithm_kw
    if "evolution" in kw:  # the NTK algorithms
        problem = run_budget.evolution_problem(config)  # algorithm_kw.taus against the integrator's work
        _require(problem is None, problem or "")
        kernel = kw.compute.kernel
        _require_structured(config.model.name, f"algorithm_kw.compute.kernel={kernel!r}", kernel == "structured")
    if "sketch" in kw and kw.sketch.enabled:
        method = kw.compute.sketch_method
        _require_structured(config.model.name, f"algorithm_kw.compute.sketch_method={method!r}",
                            method == "structured")
        _check_k_against_groups(config)


def _require_structured(model_name: str, what: str, asked: bool) -> None:
    """ConfigError when `what` (a 'structured' method, `asked`) meets a model without that fast path."""
    if not asked:
        return
    from spark_jax.setting import models  # pylint: disable=g-import-not-at-top  # JAX only when asked

    able = " or ".join(f"model.name={n!r}" for n, spec in models.MODELS.items() if spec.structured)
    _require(models.supports_structured(model_name),
             f"{what} needs a model with the structured fast path ({able}), not {model_name!r}")


def _check_k_against_groups(config) -> None:
    """algorithm_kw.sketch.k may not exceed any group's d_l: that sketch would be larger than the exact Jacobian."""
    import jax  # pylint: disable=g-import-not-at-top

    from spark_jax.ntk import sketch  # pylint: disable=g-import-not-at-top
    from spark_jax.setting import models

    sc = config.algorithm_kw.sketch
    model = models.model_for_run(config)
    sizes = sketch.group_sizes(jax.eval_shape(model.init, jax.random.key(0)), sc.grouping)
    g = min(range(len(sizes)), key=lambda i: sizes[i])
    _require(sc.k <= sizes[g],
             f"algorithm_kw.sketch.k={sc.k} exceeds the {sizes[g]} parameters of sketch group {g} (grouping "
             f"{sc.grouping!r}, group sizes {list(sizes)}): its sketch J P would be larger than the exact "
             f"Jacobian; use algorithm_kw.sketch.k <= {sizes[g]}, another algorithm_kw.sketch.grouping, or "
             "algorithm_kw.sketch.enabled=False")


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
