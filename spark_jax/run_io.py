"""A run directory: config.json, metrics.jsonl, summary.json (STYLE "Configs").

Files are written atomically (temp file + rename), so a killed run never
leaves a truncated JSON file; metrics.jsonl is appended one flushed line per
round.
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


def environment_info() -> dict:
    """Versions and devices, recorded with every run."""
    import flax
    import jaxlib
    import optax

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }


class RunDir:
    """Owns one run directory; create it only after every input is validated."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def create(self) -> None:
        if self.path.exists() and any(self.path.iterdir()):
            raise FileExistsError(f"workdir {self.path} already exists and is not empty; "
                                  "pass another --workdir or remove it")
        self.path.mkdir(parents=True, exist_ok=True)

    def write_config(self, config_dict: dict) -> None:
        write_json_atomic(self.path / "config.json", {"config": config_dict, "environment": environment_info()})

    def append_metrics(self, record: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(to_jsonable(record), sort_keys=True) + "\n")
            f.flush()

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(self.path / "summary.json", summary)


def read_metrics(path) -> list[dict]:
    """The records of a run's metrics.jsonl."""
    with open(pathlib.Path(path) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]
