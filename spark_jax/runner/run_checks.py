"""Checks before a run touches its directory: the config, the workdir, a resumed run's config.

Used by `spark_jax.runner.experiment.run` (on every process of a multi-process run,
through `distributed.run_everywhere`).
"""

from __future__ import annotations

from absl import logging

from spark_jax import algorithms
from spark_jax.runner.run_io import RunDir, config_differences, environment_info, flatten, flatten_config, to_jsonable
from spark_jax.runner.validation import ConfigError, validate_config


def check_resumable(config, run_dir: RunDir) -> None:
    """Raises unless `run_dir` holds a run of `config` (fields that change no result aside).

    Differences in the recorded environment (versions, device kind, XLA flags)
    only warn: the run continues, but may not be bit-identical to an
    uninterrupted one.
    """
    saved = run_dir.read_config()
    if saved is None:
        raise FileExistsError(f"cannot resume: workdir {run_dir.path} is not empty but has no config.json "
                              "(not a run directory); pass another --workdir or remove it")
    diff = config_differences(saved, config.to_dict())
    if diff:
        old, new = flatten_config(saved), flatten_config(config.to_dict())
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:3])
        raise ConfigError(f"cannot resume {run_dir.path}: the config differs from its config.json in "
                          f"{len(diff)} field(s) ({shown}{'; ...' if len(diff) > 3 else ''}); resume with the "
                          "same config or pass another --workdir")
    run_dir.read_data_fingerprint()  # a damaged data record is named now, before any data are loaded
    env = run_dir.read_environment()
    now = environment_info()
    changed = [k for k in ("jax", "jaxlib", "device_kind", "devices", "XLA_FLAGS", "jax_flags")
               if k in env and env[k] != now[k]]
    if changed:
        logging.warning("resuming %s in another environment (%s differ): the rest of the run may not be "
                        "bit-identical to an uninterrupted one", run_dir.path, ", ".join(changed))



def check_workdir(config, run_dir: RunDir, resume: bool):
    """(resuming, the finished run's summary or None); raises on bad input, before any data is loaded."""
    validate_config(config, algorithms.available())
    if resume and run_dir.exists():
        check_resumable(config, run_dir)
        return True, run_dir.read_summary()
    run_dir.check_new()
    return False, None


def agreed_config(config) -> dict:
    """The config fields every process of a multi-process run must share (all but where data is read
    from and the progress bar)."""
    flat = flatten(to_jsonable(config.to_dict()))
    return {k: v for k, v in flat.items() if k not in ("data.data_dir", "progress")}
