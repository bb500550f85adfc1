"""A run directory: config.json, metrics.jsonl, summary.json (STYLE "Configs").

Files are written atomically (temp file + fsync + rename; the temp file is
removed on failure, and one left by a process killed with SIGKILL is removed by
the next write of the same file), so a killed run or a full disk never leaves a truncated
JSON file; metrics.jsonl is appended one fsynced line per round, cut back to
its previous end when the append fails, and rewritten atomically (`rewrite_metrics`) when a run resumes from a
checkpoint, so that it ends at the checkpoint's round.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pathlib
import platform
import re
import tempfile

import jax
import numpy as np

from spark_jax import parallel
from spark_jax.runner import run_signals
from spark_jax.runner.run_lock import LOCK_NAME, pid_alive


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


def file_mode() -> int:
    """The mode open() gives a new file under the current umask (0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def naming(path):
    """Re-raises an OSError without a file name (a failed write() or flush()) with `path` as its name."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise type(e)(e.errno, e.strerror or str(e), str(path)) from e


def _temp_file(path: pathlib.Path) -> tuple[int, str]:
    """(fd, name) of a new temp file `.NAME.tmpPID.*` beside `path`, after removing those of dead PIDs (a
    process killed by SIGKILL while writing `path` cannot remove its own)."""
    stale = re.compile(rf"\.{re.escape(path.name)}\.tmp(\d+)\.")
    for p in path.parent.glob(f".{glob.escape(path.name)}.tmp*"):
        m = stale.match(p.name)
        if m and not pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                p.unlink()
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp{os.getpid()}.")


def write_atomic(path, text: str) -> None:
    """Writes `path` all or nothing: a temp file beside it (mode as open() would give, not mkstemp's
    0600), fsynced, renamed over it; on any failure the temp file is removed and `path` is untouched."""
    path = pathlib.Path(path)
    fd, tmp = _temp_file(path)
    try:
        with naming(path), os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path):
    """A temp path beside `path` for any writer (savefig, copyfile); fsynced and renamed over `path` when
    the block succeeds, removed when it fails: `path` is always absent, the old file or the whole new one."""
    path = pathlib.Path(path)
    fd, tmp = _temp_file(path)
    os.close(fd)
    try:
        os.chmod(tmp, file_mode())
        with naming(path):
            yield pathlib.Path(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: pathlib.Path, obj) -> None:
    write_atomic(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def os_error_line(e: OSError) -> str:
    """One line for an OS error: the path and the cause ('/x/metrics.jsonl: No space left on device')."""
    if e.filename is None:
        return str(e)
    other = f" -> {e.filename2}" if e.filename2 is not None else ""
    return f"{e.filename}{other}: {e.strerror or type(e).__name__}"


class CorruptFileError(ValueError):
    """A run file that does not parse or has the wrong shape; the message names the file."""


def read_json(path, what: str) -> dict:
    """The JSON object in `path`; CorruptFileError naming the file (and line) when it is not one."""
    path = pathlib.Path(path)
    try:
        data = json.loads(path.read_bytes().decode())
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path}: not {what} (expected a JSON object, got {type(data).__name__})")
    return data


# jax.config values that change what a run computes (bits), recorded in config.json.
JAX_FLAGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_threefry_partitionable",
             "jax_default_prng_impl", "jax_numpy_rank_promotion", "jax_numpy_dtype_promotion",
             "jax_platforms", "jax_compilation_cache_dir")

# Config fields that do not change what a run computes (the speed knobs parallel.devices,
# parallel.cpu_devices and algorithm_kw.compute.product_columns at most in round-off): a run may resume, and
# a sweep may reuse a run directory, when only these differ. (product_columns' default went from 16 to 0
# on 2026-11-30; parallel.cpu_devices came that night, runs before it ran on one CPU device.)
IGNORED_IN_RESUME_CHECK = ("data.data_dir", "data.download", "data.base_url", "log.tensorboard", "progress",
                           "parallel.devices", "parallel.cpu_devices", "checkpoint_every",
                           "algorithm_kw.compute.product_columns")


def environment_info() -> dict:
    """Versions, devices and the JAX/XLA flags, recorded with every run.

    A run is bit-reproducible (and resumable bit for bit) on the same
    versions, device kind, device count and flags (README "Checkpoints").
    """
    from importlib import metadata  # pylint: disable=g-import-not-at-top

    return {
        "jax": jax.__version__,
        # The installed distributions' versions, read without importing them (orbax alone takes 0.3 s).
        "jaxlib": metadata.version("jaxlib"),
        "flax": metadata.version("flax"),
        "optax": metadata.version("optax"),
        "orbax_checkpoint": metadata.version("orbax-checkpoint"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "device_kind": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "XLA_FLAGS": parallel.recorded_xla_flags(os.environ.get("XLA_FLAGS", "")),
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


def kw_paths(algorithm: str) -> frozenset | None:
    """The flat `algorithm_kw.` paths algorithm `algorithm` takes (None if it is not registered here)."""
    from spark_jax import algorithms  # pylint: disable=g-import-not-at-top

    known = algorithm in algorithms.available()
    return frozenset(flatten({"algorithm_kw": algorithms.default_kw(algorithm)})) if known else None


def current_layout(flat: dict) -> dict:
    """A flat config in today's layout: one recorded before 2026-12-01 (sections `ntk`, `sketch`, ..., one
    per baseline) has its algorithm's values moved under `algorithm_kw.` (`config_options.OLD_NTK_PATHS`,
    `<algorithm>.key`), the sections it did not read dropped, so old runs resume and compare."""
    from spark_jax import algorithms, config_options as co  # pylint: disable=g-import-not-at-top
    if any(k.startswith(co.KW) for k in flat) or "algorithm" not in flat:
        return dict(flat)  # today's layout
    name, takes, out = flat["algorithm"], kw_paths(flat["algorithm"]) or frozenset(), {}
    for k, v in flat.items():
        section, _, key = k.partition(".")
        new = co.KW + co.OLD_NTK_PATHS.get(k, key)
        if section not in co.OLD_NTK_SECTIONS and section not in algorithms.available():
            out[k] = v
        elif new in takes and (section == name or k in co.OLD_NTK_PATHS):
            out[new] = v
    return out


def flatten_config(config_dict: dict) -> dict:
    """`flatten` of a (nested) config dict in today's layout (`current_layout`) without the fields that
    change no result."""
    flat = current_layout(flatten(to_jsonable(config_dict)))
    return {k: v for k, v in flat.items() if k not in IGNORED_IN_RESUME_CHECK}


# Fields added to the config schema after runs may have started, each with the value under which such a
# run computed what it did: a saved config without the field compares as holding that value (when the
# new config has it). (All runs before `matmul_precision` ran on CPUs, where 'float32' is what every
# product computed.) (data.download, data.base_url and log.tensorboard, added later, are also ignored in
# the resume check.)
ADDED_FIELDS = {"algorithm_kw.compute.matmul_precision": "float32", "data.download": True, "data.base_url": "",
                "log.tensorboard": False}


# The data a run read are not config fields: they are recorded beside the config, as config.json's 'data'
# (`run_data`: per file bytes and sha256), and a run from before that record resumes without the comparison.


def config_differences(old: dict, new: dict) -> list[str]:
    """Dotted fields whose values differ between two config dicts (ignored fields left out; a field of
    `ADDED_FIELDS` missing from `old` compares as its listed value)."""
    old, new = flatten_config(old), flatten_config(new)
    old = {**{k: v for k, v in ADDED_FIELDS.items() if k in new}, **old}
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


class RunDir:
    """Owns one run directory; create it only after every input is validated.

    writer=False (every process but process 0 of a multi-process run): reads
    as usual, but creates and writes nothing (`spark_jax.runner.distributed`).
    """

    def __init__(self, path, writer: bool = True):
        self.path = pathlib.Path(path)
        self.writer = writer

    def exists(self) -> bool:
        """True when the directory exists and holds anything besides its lock file (`run_lock`)."""
        return self.path.is_dir() and any(p.name != LOCK_NAME for p in self.path.iterdir())

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

    def _config_json(self) -> dict | None:
        path = self.path / "config.json"
        if not path.exists():
            return None
        data = read_json(path, "a run config")
        if not isinstance(data.get("config"), dict) or not isinstance(data.get("environment", {}), dict):
            raise CorruptFileError(f"{path}: not a run config (expected a JSON object with a 'config' object, "
                                   f"got keys {sorted(data)[:5]})")
        return data

    def read_config(self) -> dict | None:
        """The config dict of config.json, or None when there is none (CorruptFileError naming it if damaged)."""
        data = self._config_json()
        return None if data is None else data["config"]

    def read_environment(self) -> dict:
        """The environment recorded in config.json ({} when there is none)."""
        data = self._config_json()
        return {} if data is None else data.get("environment", {})

    def read_data_fingerprint(self) -> dict | None:
        """The data fingerprint recorded in config.json (`run_data`), or None for a run from before them
        (CorruptFileError naming the file when it is not a fingerprint)."""
        data = self._config_json()
        found = None if data is None else data.get("data")
        if found is None:
            return None
        entries = list(found.get("files", {}).values()) if isinstance(found, dict) and isinstance(
            found.get("files"), dict) else [None]
        if isinstance(found, dict) and found.get("partition_file") is not None:
            entries.append(found["partition_file"])
        if not all(isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get("sha256"), str)
                   and isinstance(e.get("file"), str) for e in entries):
            raise CorruptFileError(f"{self.path / 'config.json'}: 'data' is not a data fingerprint (expected "
                                   "'files' of {file, size, sha256} records)")
        return found

    def read_summary(self) -> dict | None:
        path = self.path / "summary.json"
        return read_json(path, "a run summary") if path.exists() else None

    def write_config(self, config_dict: dict, data_fingerprint: dict | None = None) -> None:
        """config.json: the resolved config, the environment and (if given) the data fingerprint."""
        if self.writer:
            record = {"config": config_dict, "environment": environment_info()}
            if data_fingerprint is not None:
                record["data"] = data_fingerprint
            write_json_atomic(self.path / "config.json", record)

    def append_metrics(self, record: dict) -> None:
        """Appends one line, all or nothing: on any failure (disk full, ...) the file is cut back."""
        if not self.writer:
            return
        line = (json.dumps(to_jsonable(record), sort_keys=True) + "\n").encode()
        path = self.path / "metrics.jsonl"
        with naming(path), run_signals.deferred():  # Ctrl-C/SIGTERM: after the line is complete
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # unbuffered: nothing to flush
            try:
                size = os.fstat(fd).st_size
                try:
                    view = memoryview(line)
                    while view:  # a short write (disk nearly full) is followed by the error
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except BaseException:
                    os.ftruncate(fd, size)
                    raise
            finally:
                os.close(fd)

    def rewrite_metrics(self, records: list[dict]) -> None:
        """Replaces metrics.jsonl by `records` atomically (resume: cut back to the checkpoint)."""
        if not self.writer:
            return
        write_atomic(self.path / "metrics.jsonl",
                     "".join(json.dumps(to_jsonable(r), sort_keys=True) + "\n" for r in records))

    def write_summary(self, summary: dict) -> None:
        if self.writer:
            write_json_atomic(self.path / "summary.json", summary)


def read_metrics(path) -> list[dict]:
    """The records of a run's metrics.jsonl."""
    with open(pathlib.Path(path) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


REQUIRED_METRICS = ("round", "test_accuracy", "bytes_cumulative")


def read_metrics_checked(path) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl, checked: CorruptFileError naming the file and line when a
    line is not a JSON object with finite REQUIRED_METRICS, or the rounds are not 1, 2, 3, ... (a
    duplicated or missing round, e.g. two processes writing one file)."""
    file = pathlib.Path(path) / "metrics.jsonl"
    records = []
    with open(file, "rb") as f:
        for number, raw in enumerate(f, 1):
            where = f"{file}: line {number}"
            try:
                record = json.loads(raw.decode())
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise CorruptFileError(f"{where}: not a JSON object ({raw[:40]!r})") from None
            if not isinstance(record, dict):
                raise CorruptFileError(f"{where}: not a JSON object ({raw[:40]!r})")
            bad = [k for k in REQUIRED_METRICS if not isinstance(record.get(k), (int, float))
                   or isinstance(record.get(k), bool) or not np.isfinite(record[k])]
            if bad:
                raise CorruptFileError(f"{where}: {', '.join(bad)} missing or not a finite number")
            if record["round"] != len(records) + 1:
                seen = "duplicated" if record["round"] <= len(records) else "unexpected"
                raise CorruptFileError(f"{where}: {seen} round {record['round']} (expected round "
                                       f"{len(records) + 1})")
            records.append(record)
    return records
