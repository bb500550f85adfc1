"""The full config schema with defaults; named configs start from here.

Not a runnable config on its own (no `get_config`): every field a run reads
is declared here, so overrides of unknown keys fail and types are checked. The
algorithm's keyword arguments (`config.algorithm_kw`) are its registered
defaults (`spark_jax.algorithms.default_kw`), declared beside its code.
"""

import ml_collections

from spark_jax import algorithms


def base_config(algorithm: str = "dfedavg") -> ml_collections.ConfigDict:
    """The schema with `algorithm` and its default keyword arguments (`config.algorithm_kw`)."""
    c = ml_collections.ConfigDict()
    c.name = "base"
    c.seed = 0
    c.rounds = 40

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "fashion_mnist"  # 'fashion_mnist' | 'mnist'
    c.data.data_dir = ""  # '' = $SPARK_JAX_DATA_DIR, then the Debian path, the download cache, TFDS
    # Download the IDX files (checksummed) when no source has them (spark_jax/setting/download.py); also off with
    # $SPARK_JAX_NO_DOWNLOAD=1 or $SPARK_JAX_REQUIRE_DATA (CI). Never touches the network when they are present.
    c.data.download = True
    c.data.base_url = ""  # '' = $SPARK_JAX_DATA_URL, else the public mirrors (spark_jax.setting.download.MIRRORS)

    c.partition = ml_collections.ConfigDict()
    # 'ntk_dfl_file': the exact NTK-DFL partition files (first num_nodes nodes);
    # 'ntk_dfl': the NTK-DFL per-node Dirichlet recipe, drawn from the data stream;
    # 'dirichlet_hsu': per-class Dirichlet split (Hsu et al. 2019); 'iid'.
    c.partition.kind = "ntk_dfl_file"
    c.partition.num_nodes = 300
    c.partition.alpha = 0.1  # Dirichlet concentration; smaller = more heterogeneous
    c.partition.iid = False  # with 'ntk_dfl_file': use the iid split instead of alpha
    c.partition.file_seed = 0  # which NTK-DFL partition file (seed0..seed4)
    c.partition.samples_per_node = 200  # 'ntk_dfl' and 'iid' recipes
    c.partition.min_size = 10  # 'dirichlet_hsu'

    c.topology = ml_collections.ConfigDict()
    c.topology.kind = "ring"  # 'ring' | 'regular' | 'er' | 'torus' | 'complete'
    c.topology.degree = 5  # 'regular'
    c.topology.p = 0.05  # 'er'
    c.topology.dynamic = True  # re-drawn every round (NTK-DFL default)
    c.topology.mixing = "uniform"  # 'uniform' (NTK-DFL) | 'metropolis'

    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"  # 'mlp' | 'cnn'
    c.model.hidden = (100,)
    c.model.channels = (8, 16)
    c.model.per_node_init = False  # SPEC default: the same initial w at every node

    # The algorithm's keyword arguments (big_vision's name + kwargs; `spark_jax.config_options`): its
    # registered defaults (`spark_jax.algorithms.register`), e.g. for 'spark' (`config_options.SPARK_KW`):
    #   eta0 = 0.01, decay = 0.07          eta_r = eta0 * exp(-decay * r)
    #   taus = (100, 200, 400, 600, 800)   candidate step counts, ascending; tau_criterion = 'network' (SPEC step 9)
    #   evolution.integrator = 'imex'      SPEC step 7 [choice]: the fastest integrator that agrees with float64
    #     to 1e-4 on real neighbourhoods: the exact split H = U diag(Lambda) U^T + rest, top imex.split_modes = 8
    #     modes implicit, KenCarp4 IMEX, adaptive, max-norm imex.rtol = imex.atol = 3e-5 (5e-5 misses at a late
    #     round; BUILD.md "Accuracy of the integrators") | 'dopri5' (rtol, atol RMS, max_stride) | 'rk4'
    #     (substeps per grid interval) | 'rk4_hermite' (stride, warmup) | 'euler' = gradient descent on the
    #     linearised model: a different method, only when chosen explicitly
    #   compute.*                          speed and memory only: node_chunk = 8 nodes at once, node_batching =
    #     'auto' (sequential on CPU, vectorized on GPU/TPU), kernel = 'auto', matmul_precision = 'float32'
    #     (TF32 is too coarse for the 1e-4 evolution; BUILD.md "GPU"), sketch_method = 'auto', share_first_layer
    #     = 'auto' (the first layer's data side once per sample per round, within share_bytes = 5e9), ...
    #   sketch.{enabled = True, k = 512 per group, grouping = 'layer', redraw = True, update_mode = 'backproject'}
    #   distill.{lambda_max = 0.5, teacher = 'averaged', temperature = 1.0, ramp = 'linear'}   (SPEC step 6)
    #   momentum.{beta = 0.9, velocity = 'local'}                                              (SPEC step 10)
    #   stages.{boundaries = (1/3, 2/3), unit = 'fraction' | 'round'}                          (stage 2, 3 starts)
    # Every field and its meaning: the option dataclasses in spark_jax/options.py. `--config.algorithm=NAME`
    # switches both (spark <-> ntk_dfl keep the keyword arguments they share).
    c.algorithm = algorithm
    c.algorithm_kw = ml_collections.ConfigDict(algorithms.default_kw(algorithm))

    c.eval = ml_collections.ConfigDict()
    c.eval.per_node_test_subset = 0  # 0 = full test set; else a fixed seeded subset
    c.eval.node_chunk = 32  # nodes evaluated at once (bounds memory)
    c.eval.target_accuracy = 0.85  # rounds/bytes to this aggregated test accuracy
    c.eval.top_m = 10  # NTK-DFL top-m final model

    c.parallel = ml_collections.ConfigDict()
    c.parallel.devices = 0  # node-axis devices: 0 = the most that divide the node count, 1 = none (BUILD.md)
    c.parallel.cpu_devices = 0  # XLA devices the CPU is split into: 0 = one per core (at most 8), 1 = one (BUILD.md)

    c.log = ml_collections.ConfigDict()
    c.log.tensorboard = False  # also write TensorBoard event files to <workdir>/tensorboard (metrics.jsonl stays the record)

    c.progress = True
    # Save the full state every this many rounds, and after the last (0 = never);
    # `--resume` continues from the last one (README "Checkpoints and resume").
    c.checkpoint_every = 5
    return c


def spark_config(name: str, arg: str, *, dataset: str = "fashion_mnist", topology: str = "ring",
                 degree: int = 5, p: float = 5 / 299, p_small: float = 5 / 29) -> ml_collections.ConfigDict:
    """SPARK defaults (SPEC) on the NTK-DFL partition <dataset>300/alpha0.1/seed0, 300 nodes.

    arg '' = paper scale; 'small' = the CPU-sized variant: the first 30 nodes of
    the same partition file, 15 rounds, per-node accuracy on a
    1,000-image test subset (stages at rounds 5 and 10).
    """
    c = base_config("spark")
    c.name = name + (f":{arg}" if arg else "")
    c.data.dataset = dataset
    c.partition.kind = "ntk_dfl_file"
    c.partition.alpha = 0.1
    c.partition.num_nodes = 300
    c.topology.kind = topology
    c.topology.degree = degree
    c.topology.p = p
    c.topology.dynamic = True
    c.rounds = 40
    if dataset == "mnist":
        c.eval.target_accuracy = 0.95
    apply_variant(c, name, arg, num_nodes=30, rounds=15)
    if arg in ("small", "cpu", "study"):
        c.topology.p = p_small
    return c


def apply_variant(c: ml_collections.ConfigDict, name: str, arg: str, *, num_nodes: int, rounds: int) -> None:
    """Variants: '' = unchanged (paper scale);
    ':small' = CPU-sized: `num_nodes` nodes, `rounds` rounds (the default integrator and
      first-layer sharing), a 1,000-image per-node test subset;
    ':study' = the CPU study of the SPARK readings (docs/RESULTS.md): `num_nodes` nodes,
      20 rounds (stages of 7, 6 and 7 rounds), a 1,000-image per-node test subset;
    ':cpu' = the method-comparison size for a 2-core CPU (`compare_fmnist` in about
      an hour for 3 seeds): 20 nodes of 60 samples from the NTK-DFL per-node
      Dirichlet recipe (alpha as set), 10 rounds, 1,000-image per-node subset.
    Anything else is an error."""
    if arg in ("small", "cpu", "study"):
        c.partition.num_nodes = num_nodes
        c.rounds = 20 if arg == "study" else rounds
        c.eval.per_node_test_subset = 1000
    if arg == "cpu":
        c.partition.kind = "ntk_dfl"
        c.partition.num_nodes = 20
        c.partition.samples_per_node = 60
        c.rounds = 10
    elif arg and arg not in ("small", "study"):
        raise ValueError(f"{name}: unknown argument {arg!r}; known: 'small', 'study', 'cpu'")
