"""A run directory: config.json, metrics.jsonl, summary.json (STYLE "Configs").

Files are written atomically (temp file + rename), so a killed run never
leaves a truncated JSON file; metrics.jsonl is appended one flushed line per
round, and rewritten atomically (`rewrite_metrics`) when a run resumes from a
checkpoint, so that it ends at the checkpoint's round.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import tempfile

import jax
import numpy as np


def to_jsonable(x):
    """Converts numpy/jax scalars and arrays (nested in dicts/lists) to JSON types."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
        a = np.asarray(x)
        return a.item() if a.ndim == 0 else a.tolist()
    return x


def write_json_atomic(path: pathlib.Path, obj) -> None:
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(to_jsonable(obj), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


# jax.config values that change what a run computes (bits), recorded in config.json.
JAX_FLAGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_threefry_partitionable",
             "jax_default_prng_impl", "jax_numpy_rank_promotion", "jax_numpy_dtype_promotion",
             "jax_platforms", "jax_compilation_cache_dir")

# Config fields that do not change what a run computes: a run may resume, and a
# sweep may reuse a run directory, when only these differ.
IGNORED_IN_RESUME_CHECK = ("data.data_dir", "progress", "parallel.devices", "checkpoint_every")


def environment_info() -> dict:
    """Versions, devices and the JAX/XLA flags, recorded with every run.

    A run is bit-reproducible (and resumable bit for bit) on the same
    versions, device kind, device count and flags (README "Checkpoints").
    """
    import flax
    import jaxlib
    import optax
    import orbax.checkpoint as ocp

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax_checkpoint": ocp.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "device_kind": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "jax_flags": {name: _jax_flag(name) for name in JAX_FLAGS},
    }


def _jax_flag(name: str):
    try:
        return to_jsonable(getattr(jax.config, name))
    except AttributeError:
        return None


def flatten(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': [1, 2]}} -> {'a.b': (1, 2)} (lists become tuples, so values are hashable and a
    config read back from JSON compares equal to the ConfigDict it was written from)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, (list, tuple)) else v
    return out


def flatten_config(config_dict: dict) -> dict:
    """`flatten` of a (nested) config dict without the fields that change no result."""
    flat = flatten(to_jsonable(config_dict))
    return {k: v for k, v in flat.items() if k not in IGNORED_IN_RESUME_CHECK}


def config_differences(old: dict, new: dict) -> list[str]:
    """Dotted fields whose values differ between two config dicts (ignored fields left out)."""
    old, new = flatten_config(old), flatten_config(new)
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


class RunDir:
    """Owns one run directory; create it only after every input is validated.

    writer=False (every process but process 0 of a multi-process run): reads
    as usual, but creates and writes nothing (`spark_jax.distributed`).
    """

    def __init__(self, path, writer: bool = True):
        self.path = pathlib.Path(path)
        self.writer = writer

    def exists(self) -> bool:
        """True when the directory exists and is not empty."""
        return self.path.is_dir() and any(self.path.iterdir())

    def create(self) -> None:
        if not self.writer:  # process 0 creates it (the others may already see it made)
            return
        self.check_new()
        self.path.mkdir(parents=True, exist_ok=True)

    def check_new(self) -> None:
        """FileExistsError when the directory exists and is not empty."""
        if self.exists():
            raise FileExistsError(f"workdir {self.path} already exists and is not empty; pass --resume to "
                                  "continue its run from the last checkpoint, another --workdir, or remove it")

    def read_config(self) -> dict | None:
        """The config dict of config.json, or None when there is none."""
        path = self.path / "config.json"
        return json.loads(path.read_text())["config"] if path.exists() else None

    def read_environment(self) -> dict:
        """The environment recorded in config.json ({} when there is none)."""
        path = self.path / "config.json"
        return json.loads(path.read_text()).get("environment", {}) if path.exists() else {}

    def read_summary(self) -> dict | None:
        path = self.path / "summary.json"
        return json.loads(path.read_text()) if path.exists() else None

    def write_config(self, config_dict: dict) -> None:
        if self.writer:
            write_json_atomic(self.path / "config.json", {"config": config_dict, "environment": environment_info()})

    def append_metrics(self, record: dict) -> None:
        if not self.writer:
            return
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(to_jsonable(record), sort_keys=True) + "\n")
            f.flush()

    def rewrite_metrics(self, records: list[dict]) -> None:
        """Replaces metrics.jsonl by `records` atomically (resume: cut back to the checkpoint)."""
        if not self.writer:
            return
        path = self.path / "metrics.jsonl"
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".metrics.jsonl.")
        with os.fdopen(fd, "w") as f:
            f.writelines(json.dumps(to_jsonable(r), sort_keys=True) + "\n" for r in records)
        os.replace(tmp, path)

    def write_summary(self, summary: dict) -> None:
        if self.writer:
            write_json_atomic(self.path / "summary.json", summary)


def read_metrics(path) -> list[dict]:
    """The records of a run's metrics.jsonl."""
    with open(pathlib.Path(path) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]
