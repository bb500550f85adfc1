"""The NTK algorithms' options: small frozen dataclasses that check themselves (no JAX).

Each groups the hyper-parameters of one part of the method and is passed by keyword to the
algorithm constructors (`spark_jax.algorithms.ntk_dfl.ntk_dfl`, `spark_jax.algorithms.spark.spark`):

  EvolutionOptions  SPEC step 7: the integrator and its tolerances (`ImexOptions` for 'imex')
  ComputeOptions    speed and memory only (node chunks, batching, kernel/sketch implementation,
                    matmul precision): results agree up to float rounding whichever is chosen
  SketchOptions     SPEC steps 3, 5, 8: the Jacobian sketch (None = exact Jacobians)
  DistillOptions    SPEC step 6: annealed distillation (None = one-hot targets)
  MomentumOptions   SPEC step 10: stage-3 Nesterov momentum (None = plain commit)

The option lists are defined here, once; the modules that implement them import them. A bad value
raises `checks.OptionError` naming the field (`integrator='rk5' is not one of ...`); the run
config's adapter (`spark_jax.config_options`) re-words it with the config path.
"""

from __future__ import annotations

import dataclasses
import math

from spark_jax import checks

INTEGRATORS = ("rk4", "rk4_hermite", "dopri5", "imex", "euler")
NODE_BATCHING = ("auto", "vectorized", "sequential")
MATMUL_PRECISIONS = ("float32", "tensorfloat32", "bfloat16", "default")
KERNELS = ("auto", "structured", "contraction", "ntvp")
JACOBIAN_MODES = ("rev", "fwd")
TAU_CRITERIA = ("network", "linearized")
SKETCH_GROUPINGS = ("layer", "tensor", "global")
SKETCH_METHODS = ("auto", "structured", "forward", "materialize")
SHARE_MODES = ("auto", "on", "off")
UPDATE_MODES = ("backproject", "own_exact", "roundtrip")
TEACHERS = ("averaged", "neighbors")
VELOCITIES = ("local", "mixed")
RAMPS = ("linear", "cosine")
MAX_SPLIT_MODES = 64

# The NTK algorithms' schedule defaults (SPEC): eta_r = eta0 * exp(-decay * r); the candidate step counts
# tau (ascending); the first rounds of stages 2 and 3 as fractions of the run.
DEFAULT_ETA0 = 0.01
DEFAULT_DECAY = 0.07
DEFAULT_TAUS = (100, 200, 400, 600, 800)
DEFAULT_STAGES = (1.0 / 3.0, 2.0 / 3.0)


@dataclasses.dataclass(frozen=True)
class ImexOptions:
    """The 'imex' integrator (`spark_jax.ntk.stiff_split`): max-norm tolerances, largest step in grid
    intervals, top modes of H treated implicitly (0 = explicit KenCarp4), subspace iterations."""

    rtol: float = 3e-5  # the loosest keeping 1e-4 against float64 on every real neighbourhood tested
    atol: float = 3e-5
    max_stride: int = 200
    split_modes: int = 8
    split_iterations: int = 3

    def __post_init__(self):
        checks.number(self.rtol, "rtol", 0.0, 1.0, lo_open=True, why=" (relative tolerance, 'imex')")
        checks.number(self.atol, "atol", 0.0, lo_open=True, why=" (absolute tolerance, 'imex')")
        checks.integer(self.max_stride, "max_stride")
        checks.integer(self.split_modes, "split_modes", 0, MAX_SPLIT_MODES,
                       why=" (modes of H treated implicitly; each costs Newton work, and it must not exceed "
                           "the neighbourhood's rows)")
        checks.integer(self.split_iterations, "split_iterations", 0, why=" (subspace iterations)")


@dataclasses.dataclass(frozen=True)
class EvolutionOptions:
    """SPEC step 7 [choice]: how dF/ds = -(1/N) H (softmax(F) - Y^) is integrated.

    integrator: 'imex' (default: exact stiff split, adaptive) | 'dopri5' (adaptive explicit; rtol, atol
      RMS, max_stride) | 'rk4' (`substeps` per grid interval) | 'rk4_hermite' (`stride`, `warmup`) |
      'euler' (gradient descent on the linearised model: a different method).
    """

    integrator: str = "imex"
    substeps: int = 2
    stride: int = 4
    warmup: int = 50
    rtol: float = 1e-6
    atol: float = 1e-6
    max_stride: int = 32
    imex: ImexOptions = ImexOptions()

    def __post_init__(self):
        checks.one_of(self.integrator, "integrator", INTEGRATORS)
        checks.integer(self.substeps, "substeps")
        checks.integer(self.stride, "stride")
        checks.integer(self.warmup, "warmup", 0, why=" (grid intervals at stride 1, 'rk4_hermite')")
        checks.number(self.rtol, "rtol", 0.0, 1.0, lo_open=True, why=" (relative tolerance, 'dopri5')")
        checks.number(self.atol, "atol", 0.0, lo_open=True, why=" (absolute tolerance, 'dopri5')")
        checks.integer(self.max_stride, "max_stride")
        checks.require(isinstance(self.imex, ImexOptions), f"imex={self.imex!r} must be an ImexOptions")

    def evolve_kwargs(self, columns: int) -> dict:
        """The keyword arguments of `spark_jax.ntk.evolve_logits` (`columns`: `ComputeOptions.product_columns`)."""
        out = dict(method=self.integrator, substeps=self.substeps, stride=self.stride, warmup=self.warmup,
                   rtol=self.rtol, atol=self.atol, max_stride=self.max_stride, columns=columns)
        if self.integrator == "imex":
            im = self.imex
            out.update(rtol=im.rtol, atol=im.atol, max_stride=im.max_stride, split_modes=im.split_modes,
                       split_iterations=im.split_iterations)
        return out


@dataclasses.dataclass(frozen=True)
class ComputeOptions:
    """How a round is computed (speed and memory; the maths is the same whichever is chosen).

    node_chunk: nodes processed at once (bounds memory); node_batching: 'auto' | 'vectorized' |
    'sequential' (`parallel.with_node_batching`); product_columns: pad the classes of a kernel product
    to this many (0 = never; slower on XLA:CPU since the evolution runs class-major); kernel: 'auto' (structured for models with the fast path) | 'structured' |
    'contraction' | 'ntvp'; jacobian_mode: 'rev' | 'fwd' (contraction kernel); sample_chunk: samples
    per Jacobian chunk (0 = all); matmul_precision: float32 products ('float32' | 'tensorfloat32' |
    'bfloat16' | 'default'); sketch_method: 'auto' | 'structured' | 'forward' | 'materialize';
    direction_chunk: sketch directions per forward-mode chunk; share_first_layer: 'auto' | 'on' |
    'off' with its bound share_bytes (`spark_jax.ntk.sketch_share`).
    """

    node_chunk: int = 8
    node_batching: str = "auto"
    product_columns: int = 0
    kernel: str = "auto"
    jacobian_mode: str = "rev"
    sample_chunk: int = 0
    matmul_precision: str = "float32"
    sketch_method: str = "auto"
    direction_chunk: int = 128
    share_first_layer: str = "auto"
    share_bytes: float = 5e9

    def __post_init__(self):
        checks.integer(self.node_chunk, "node_chunk")
        checks.one_of(self.node_batching, "node_batching", NODE_BATCHING)
        checks.integer(self.product_columns, "product_columns", 0, why=" (0 = no padding)")
        checks.one_of(self.kernel, "kernel", KERNELS)
        checks.one_of(self.jacobian_mode, "jacobian_mode", JACOBIAN_MODES)
        checks.integer(self.sample_chunk, "sample_chunk", 0, why=" (0 = no chunking)")
        checks.one_of(self.matmul_precision, "matmul_precision", MATMUL_PRECISIONS)
        checks.one_of(self.sketch_method, "sketch_method", SKETCH_METHODS)
        checks.integer(self.direction_chunk, "direction_chunk")
        checks.one_of(self.share_first_layer, "share_first_layer", SHARE_MODES)
        checks.number(self.share_bytes, "share_bytes", 0.0, lo_open=True,
                      why=" (bytes the shared first layer may hold)")


@dataclasses.dataclass(frozen=True)
class SketchOptions:
    """SPEC step 3 [choice]: per group l, J_l P_l with P_l [d_l, k] Gaussian / sqrt(k), from the
    `sketch` stream; grouping 'layer' | 'tensor' | 'global'; redraw: new P every round; update_mode
    (step 8): 'backproject' | 'own_exact' | 'roundtrip'."""

    k: int = 512
    grouping: str = "layer"
    redraw: bool = True
    update_mode: str = "backproject"

    def __post_init__(self):
        checks.integer(self.k, "k")
        checks.one_of(self.grouping, "grouping", SKETCH_GROUPINGS)
        checks.boolean(self.redraw, "redraw")
        checks.one_of(self.update_mode, "update_mode", UPDATE_MODES)


@dataclasses.dataclass(frozen=True)
class DistillOptions:
    """SPEC step 6: Y^ = (1 - lambda_r) Y + lambda_r softmax(F_T / temperature); lambda_r ramps from 0
    to lambda_max over stage 2 ('linear' | 'cosine') and holds in stage 3; teacher 'averaged' (F0 of
    w̄_i, free) | 'neighbors' (each neighbour's own pre-mixing model)."""

    lambda_max: float = 0.5
    teacher: str = "averaged"
    temperature: float = 1.0
    ramp: str = "linear"

    def __post_init__(self):
        checks.number(self.lambda_max, "lambda_max", 0.0, 1.0)
        checks.one_of(self.teacher, "teacher", TEACHERS)
        checks.number(self.temperature, "temperature", 0.0, lo_open=True)
        checks.one_of(self.ramp, "ramp", RAMPS)


@dataclasses.dataclass(frozen=True)
class MomentumOptions:
    """SPEC step 10: from stage 3, v <- beta v + Delta, w <- w̄ + Delta + beta v (`optax.trace`,
    nesterov); velocity 'local' (each node's own) | 'mixed' (mixed with W_r like the weights)."""

    beta: float = 0.9
    velocity: str = "local"

    def __post_init__(self):
        checks.number(self.beta, "beta", 0.0, 1.0, hi_open=True)
        checks.one_of(self.velocity, "velocity", VELOCITIES)


@dataclasses.dataclass(frozen=True)
class LocalTrainingOptions:
    """The local-training baselines (SPEC "Baselines"): SGD on each node's own data for `local_epochs`
    epochs of `batch_size`, learning rate lr (times lr_decay^r), heavy-ball momentum, coupled weight decay."""

    lr: float
    batch_size: int
    local_epochs: int
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_decay: float = 1.0

    def __post_init__(self):
        checks.number(self.lr, "lr", 0.0, lo_open=True)
        checks.integer(self.batch_size, "batch_size")
        checks.integer(self.local_epochs, "local_epochs")
        checks.number(self.momentum, "momentum", 0.0, 1.0, hi_open=True)
        checks.number(self.weight_decay, "weight_decay", 0.0)
        checks.number(self.lr_decay, "lr_decay", 0.0, 1.0, lo_open=True)


def stage_boundaries(boundaries, unit: str, rounds: int) -> tuple[int, int]:
    """(b2, b3): first rounds of stages 2 and 3, from fractions of `rounds` or round numbers.

    Fractions are rounded to the nearest round (1/3 and 2/3 of 30 rounds ->
    10 and 20). Raises ValueError unless 0 <= b2 <= b3.
    """
    if len(boundaries) != 2:
        raise ValueError(f"stages.boundaries must have two entries (stage 2 and 3 starts), got {boundaries!r}")
    if unit == "fraction":
        if not all(0.0 <= b <= 1.0 for b in boundaries):
            raise ValueError(f"stages.boundaries={tuple(boundaries)!r} must be fractions in [0, 1] with unit 'fraction'")
        b2, b3 = (int(math.floor(b * rounds + 0.5)) for b in boundaries)
    elif unit == "round":
        b2, b3 = (int(b) for b in boundaries)
        if any(b != float(x) for b, x in zip((b2, b3), boundaries)):
            raise ValueError(f"stages.boundaries={tuple(boundaries)!r} must be whole rounds with unit 'round'")
    else:
        raise ValueError(f"stages.unit={unit!r} is not one of 'fraction', 'round'")
    if not 0 <= b2 <= b3:
        raise ValueError(f"stages.boundaries={tuple(boundaries)!r} must be ordered: 0 <= stage-2 start <= stage-3 start")
    return b2, b3
