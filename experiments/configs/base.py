"""The full config schema with defaults; named configs start from here.

Not a runnable config on its own (no `get_config`): every field a run reads
is declared here, so overrides of unknown keys fail and types are checked. The
baselines' own sections (`dfedavg`, ..., `dispfl`) are declared in their algorithm
files and come in through the registry (`spark_jax.algorithms.config_sections`).
"""

import ml_collections

from spark_jax import algorithms


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "base"
    c.seed = 0
    c.rounds = 40
    c.algorithm = "dfedavg"

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

    # The baselines' own sections (`config.dfedavg`, `config.dispfl`, ...): each algorithm file declares
    # its defaults (`CONFIG` in spark_jax/algorithms/dfedavg.py, local_baselines.py, dispfl.py) and
    # registers them with the algorithm (`spark_jax.algorithms.register`).
    for name, section in algorithms.config_sections().items():
        c[name] = ml_collections.ConfigDict(section)

    c.ntk = ml_collections.ConfigDict()
    c.ntk.eta0 = 0.01  # eta_r = eta0 * exp(-decay * r)
    c.ntk.decay = 0.07
    c.ntk.taus = (100, 200, 400, 600, 800)  # candidate step counts, ascending
    # SPEC step 7 [choice]: the fastest integrator that agrees with float64 to 1e-4 on real neighbourhoods.
    # 'imex' (default): the exact split H = U diag(Lambda) U^T + rest, top `split_modes` modes implicit,
    # KenCarp4 IMEX, adaptive (2-5x fewer kernel products than 'dopri5') | 'dopri5' (adaptive explicit) |
    # 'rk4' (`substeps` per grid interval) | 'rk4_hermite' (unstable on stiff neighbourhoods, BUILD.md) |
    # 'euler' = gradient descent on the linearised model: a different method, only when chosen explicitly.
    c.ntk.integrator = "imex"
    c.ntk.substeps = 2  # RK4 steps per grid interval ('rk4'): 1 misses float64 by 4e-4 on stiff real neighbourhoods
    c.ntk.stride = 4  # grid intervals per RK4 step, cubic Hermite in between ('rk4_hermite')
    c.ntk.warmup = 50  # first grid intervals at stride 1: the stiff transient ('rk4_hermite')
    c.ntk.rtol = 1e-6  # error tolerance atol + rtol * |F| per logit, RMS norm ('dopri5')
    c.ntk.atol = 1e-6
    c.ntk.max_stride = 32  # largest step in grid intervals ('dopri5')
    c.ntk.imex = ml_collections.ConfigDict()  # 'imex' (spark_jax/ntk/stiff_split.py)
    # Max-norm tolerances: 3e-5 is the loosest that keeps 1e-4 against float64 on every real neighbourhood
    # tested (5e-5 misses at a late round; BUILD.md "Accuracy of the integrators").
    c.ntk.imex.rtol = 3e-5
    c.ntk.imex.atol = 3e-5
    c.ntk.imex.max_stride = 200  # largest step in grid intervals
    c.ntk.imex.split_modes = 8  # top modes of H treated implicitly (0 = explicit KenCarp4)
    c.ntk.imex.split_iterations = 3  # subspace iterations of their eigen-solve
    # How a node chunk runs the kernel and evolution phases: 'auto' (sequential on CPU, vectorized on
    # GPU/TPU) | 'vectorized' (one batched program) | 'sequential' (node by node: plain GEMMs, each
    # node its own adaptive steps). Values are the same; only speed differs.
    c.ntk.node_batching = "auto"
    c.ntk.product_columns = 0  # pad the classes of a kernel product to this many (speed only; 0 = never: BUILD.md)
    c.ntk.kernel = "auto"  # 'auto' (structured for MLPs) | 'structured' | 'contraction' | 'ntvp'
    c.ntk.jacobian_mode = "rev"  # 'rev' | 'fwd' (contraction kernel)
    c.ntk.sample_chunk = 0  # samples per Jacobian chunk (0 = all at once)
    c.ntk.node_chunk = 8  # nodes processed at once (bounds memory)
    c.ntk.tau_criterion = "network"  # 'network' | 'linearized' (SPEC step 9)
    # Float32 products of the NTK rounds: 'float32' (full, every backend) | 'tensorfloat32' | 'bfloat16' |
    # 'default' (the backend's: TF32 on recent NVIDIA GPUs, too coarse for the 1e-4 evolution; BUILD.md "GPU").
    c.ntk.matmul_precision = "float32"

    # SPARK (SPEC steps 3, 6, 8, 10 and "The three stages"); used by algorithm 'spark'.
    c.sketch = ml_collections.ConfigDict()
    c.sketch.enabled = True  # False = exact Jacobians (NTK-DFL messages)
    c.sketch.k = 512  # sketch columns per group
    c.sketch.grouping = "layer"  # 'layer' (module weight + bias) | 'tensor' | 'global'
    c.sketch.redraw = True  # new P every round (key folds in r); False = one P for the run
    c.sketch.method = "auto"  # 'auto' | 'structured' (dense layers) | 'forward' (JVPs) | 'materialize' (J then J P)
    c.sketch.direction_chunk = 128  # sketch directions per forward-mode chunk
    # 'structured' only: compute the first layer's data side [1; x] P_0 once per sample per round (not
    # once in each of the degree + 1 neighbourhoods holding it), in blocks of P's columns so that one
    # block of products for all samples plus every node's kernel (counted x2) stays <= share_bytes
    # (spark_jax/ntk/sketch_share.py). 'auto' = when blocks of >= 32 columns fit | 'on' (as wide as fit) | 'off'.
    c.sketch.share_first_layer = "auto"
    c.sketch.share_bytes = 5e9  # 300 nodes: 8 blocks of 64 columns; measured peak 4.9 GiB
    c.sketch.update_mode = "backproject"  # 'backproject' | 'own_exact' | 'roundtrip' (SPEC step 8)

    c.distill = ml_collections.ConfigDict()
    c.distill.lambda_max = 0.5  # stage-3 weight of the soft labels (SPEC step 6)
    c.distill.teacher = "averaged"  # 'averaged' (F0, free) | 'neighbors' (each neighbour's own model)
    c.distill.temperature = 1.0

    c.momentum = ml_collections.ConfigDict()
    c.momentum.beta = 0.9  # stage-3 Nesterov momentum (SPEC step 10)
    c.momentum.velocity = "local"  # 'local' | 'mixed' (mixed with W_r like the weights)

    c.stages = ml_collections.ConfigDict()
    c.stages.boundaries = (1.0 / 3.0, 2.0 / 3.0)  # stage 2 and 3 starts
    c.stages.unit = "fraction"  # 'fraction' of config.rounds | 'round' (0-based round numbers)
    c.stages.ramp = "linear"  # lambda ramp in stage 2: 'linear' | 'cosine'

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
    c = base_config()
    c.name = name + (f":{arg}" if arg else "")
    c.algorithm = "spark"
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
