"""Models: pure `apply(params, x) -> logits` for flax modules (SPEC "Setting").

Inputs are images `[..., H, W, 1]` float32 (normalized; 28 x 28 for Fashion-MNIST and MNIST,
`data.DATASETS`); outputs logits `[..., C]`. Parameters are a plain pytree `{'Dense_0': {'kernel', 'bias'}, ...}`
(the flax `params` collection), so `vmap` over a leading node axis works.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from spark_jax.setting import data

# Kaiming-normal (fan-in, ReLU gain) as in PyTorch's kaiming_normal_: an
# untruncated normal (jax "normal") with std sqrt(2 / fan_in).
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class MLP(nn.Module):
    """(H W)-hidden...-C ReLU MLP on flattened images; default on 28 x 28 images: 784-100-10, d = 79,510."""

    hidden: Sequence[int] = (100,)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[:-3] + (-1,))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width, kernel_init=kaiming_normal, bias_init=nn.initializers.zeros)(x))
        return nn.Dense(self.num_classes, kernel_init=kaiming_normal, bias_init=nn.initializers.zeros)(x)


class CNN(nn.Module):
    """Small CNN: conv(3x3, c1)-relu-avgpool2-conv(3x3, c2)-relu-avgpool2-dense(C)."""

    channels: Sequence[int] = (8, 16)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        for c in self.channels:
            x = nn.Conv(c, (3, 3), padding="SAME", kernel_init=kaiming_normal, bias_init=nn.initializers.zeros)(x)
            x = nn.avg_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[:-3] + (-1,))
        return nn.Dense(self.num_classes, kernel_init=kaiming_normal, bias_init=nn.initializers.zeros)(x)


class Model(NamedTuple):
    """A model as a pair of pure functions.

    init(key) -> params; apply(params, x [..., H, W, 1]) -> logits [..., C]. `structured`: the
    params are a dense ReLU MLP in flax's Dense_0..Dense_L layout, so the closed-form kernel
    (`spark_jax.ntk.kernel`) and sketch (`spark_jax.ntk.sketch`) "structured" methods apply.
    """

    init: Callable[[jax.Array], dict]
    apply: Callable[[dict, jax.Array], jax.Array]
    num_classes: int
    structured: bool = False


class ModelSpec(NamedTuple):
    """A registered model: `build(hidden, channels, num_classes) -> flax module` and whether it
    has the structured fast path (see `Model.structured`)."""

    build: Callable[[tuple, tuple, int], nn.Module]
    structured: bool = False


# Models by `config.model.name`; adding a model is one entry here (and its name in
# validation.MODELS, which tests/test_validation_table.py checks).
MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(lambda hidden, channels, num_classes: MLP(hidden=hidden, num_classes=num_classes),
                     structured=True),
    "cnn": ModelSpec(lambda hidden, channels, num_classes: CNN(channels=channels, num_classes=num_classes)),
}


def model_spec(name: str) -> ModelSpec:
    """The registered `ModelSpec` of `name`; ValueError naming the choices if unknown."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose {' or '.join(repr(n) for n in MODELS)}")
    return MODELS[name]


def supports_structured(name: str) -> bool:
    """Whether model `name` has the structured kernel/sketch fast path (no model is built)."""
    return model_spec(name).structured


def make_model(name: str = "mlp", *, hidden: Sequence[int] = (100,), channels: Sequence[int] = (8, 16),
               num_classes: int = 10, input_shape: Sequence[int] = (28, 28, 1)) -> Model:
    """Builds a `Model` by name (a key of `MODELS`: 'mlp' or 'cnn')."""
    spec = model_spec(name)
    module = spec.build(tuple(hidden), tuple(channels), num_classes)
    dummy = jnp.zeros((1, *input_shape), jnp.float32)

    def init(key):
        return module.init(key, dummy)["params"]

    def apply(params, x):
        return module.apply({"params": params}, x)

    return Model(init=init, apply=apply, num_classes=num_classes, structured=spec.structured)


def model_for_run(config) -> Model:
    """The `Model` of a run config: `config.model` (name, hidden, channels) on `config.data.dataset`'s
    images and classes (`data.dataset_spec`: [H, W] grey images -> input [H, W, 1], C classes)."""
    mc, spec = config.model, data.dataset_spec(config.data.dataset)
    return make_model(mc.name, hidden=tuple(mc.hidden), channels=tuple(mc.channels), num_classes=spec.num_classes,
                      input_shape=(*spec.image_shape, 1))


def init_node_params(model: Model, key: jax.Array, num_nodes: int, per_node: bool = False):
    """Parameters for all nodes, leaves `[M, ...]`.

    Same initial weights at every node (SPEC default) unless `per_node`, in
    which case node i uses `fold_in(key, i)`.
    """
    if per_node:
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_nodes))
        return jax.vmap(model.init)(keys)
    params = model.init(key)
    return jax.tree.map(lambda p: jnp.broadcast_to(p, (num_nodes, *p.shape)), params)


def num_params(params) -> int:
    """Total number of scalars d in a (single-node) parameter pytree."""
    return int(sum(p.size for p in jax.tree.leaves(params)))
