"""Command-line helpers: `--config=NAME[:ARG]` -> `experiments/configs/NAME.py[:ARG]`, flag errors."""

from __future__ import annotations

import pathlib
import sys

from absl import flags

from experiments.config_files import ConfigFileError

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


def rewrite_argv(argv: list[str]) -> list[str]:
    """Resolves the --config value in argv (both '--config=X' and '--config X')."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config="):
            a = "--config=" + resolve_config_arg(a.split("=", 1)[1])
        elif a == "--config" and i + 1 < len(argv):
            out.append(a)
            i += 1
            a = resolve_config_arg(argv[i])
        out.append(a)
        i += 1
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
        sys.exit(f"error: invalid config override {' '.join(bad)}: unknown key or wrong type ({e})")
