"""Command-line helpers: `--config=NAME[:ARG]` -> `experiments/configs/NAME.py[:ARG]`, flag errors."""

from __future__ import annotations

import pathlib
import sys

from absl import flags

from experiments.config_files import ALGORITHM_SUFFIX, ConfigFileError

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"


def named_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "base"))


def resolve_config_arg(value: str) -> str:
    """'NAME[:ARG]' or 'path.py[:ARG]' -> 'path.py[:ARG]'; SystemExit if unknown."""
    name, sep, arg = value.partition(":")
    if pathlib.Path(name).is_file():
        return value
    if name.endswith(".py") or "/" in name:
        sys.exit(f"error: config file {name}: no such file")
    path = CONFIG_DIR / f"{name}.py"
    if name in ("base", "__init__") or not path.is_file():
        sys.exit(f"error: unknown config {name!r}; named configs: {', '.join(named_configs())} "
                 "(or give a path to a config file)")
    return f"{path}{sep}{arg}"


def moved_override(argv: list[str]) -> str | None:
    """The error line for the first `--config.PATH` override of the layout before 2026-12-01 (one
    section per part of the method: `--config.ntk.taus`, `--config.dfedavg.lr`), naming its replacement."""
    from spark_jax import algorithms  # pylint: disable=g-import-not-at-top

    for a in argv:
        if a.startswith("--config.") and not a.startswith("--config.algorithm"):
            path = a[len("--config."):].split("=", 1)[0]
            new = algorithms.moved_path(path)
            if new is not None:
                return (f"error: --config.{path} is now --config.{new}: a run config gives its algorithm's "
                        "keyword arguments as config.algorithm_kw (spark_jax/config_options.py)")
    return None


def rewrite_argv(argv: list[str]) -> list[str]:
    """Resolves the --config value in argv (both '--config=X' and '--config X'); folds
    `--config.algorithm=NAME` (the last one) into it as 'PATH.py[:ARG]|algorithm=NAME', so the loader
    switches the algorithm, and its keyword arguments, before the other overrides apply
    (`config_files.load`); SystemExit naming the replacement of an override of the old layout."""
    line = moved_override(argv[1:])
    if line is not None:
        sys.exit(line)
    out, algorithm, config_at, i = [], None, None, 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config.algorithm=") or (a == "--config.algorithm" and i + 1 < len(argv)):
            algorithm = a.split("=", 1)[1] if "=" in a else argv[i + 1]
            i += 1 if "=" in a else 2
            continue
        if a.startswith("--config="):
            a = "--config=" + resolve_config_arg(a.split("=", 1)[1])
            config_at = len(out)
        elif a == "--config" and i + 1 < len(argv):
            out.append(a)
            i += 1
            a = resolve_config_arg(argv[i])
            config_at = len(out)
        out.append(a)
        i += 1
    if algorithm is not None:
        if config_at is None:
            sys.exit(f"error: --config.algorithm={algorithm} needs --config (the experiment config it changes)")
        out[config_at] += f"{ALGORITHM_SUFFIX}{algorithm}"
    return out


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with bad flags and config overrides turned into one error line."""
    try:
        return flags.FLAGS(argv)
    except ConfigFileError as e:  # one line naming the file and line (experiments/config_files.py)
        sys.exit(f"error: config file {e}")
    except flags.Error as e:
        sys.exit(f"error: {e}")
    except (KeyError, AttributeError, TypeError, ValueError) as e:
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        hint = ("; config.algorithm_kw holds the keyword arguments of the config's algorithm (--config.algorithm="
                "NAME switches it, docs/LIBRARY.md)") if any(a.startswith("--config.algorithm_kw.") for a in bad) else ""
        sys.exit(f"error: invalid config override {' '.join(bad)}: unknown key or wrong type ({e}){hint}")
