"""Loading a config file (`--config=path.py[:ARG]`) with one-line errors naming the file and line.

`load(spec)` executes the file, calls its `get_config([ARG])` and checks the
result against the schema (`experiments/configs/base.py`). Every way a
config file can fail is a `ConfigFileError` whose message is one line:

  syntax error            PATH:LINE: SyntaxError: MESSAGE
  exception on loading    PATH:LINE: TYPE: MESSAGE (loading the file)      (e.g. an ImportError)
  exception in get_config PATH:LINE: TYPE: MESSAGE (in get_config('ARG'))  LINE = the innermost frame in PATH
  no get_config           PATH: defines no get_config() ...
  ARG not taken           PATH:LINE: get_config(...) does not take ...     LINE = its `def`
  None / not a ConfigDict PATH:LINE: get_config() returned None ...
  unknown fields          PATH:LINE: unknown config field(s) a.b ...       LINE = where the first is set

`define_config_flag` is `config_flags.DEFINE_config_file` with this loader
as its parser (`--config.a.b=v` overrides work as before); the CLIs turn the
error into `error: config file ...` (`config_names.parse_flags`).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
import traceback

import ml_collections
from absl import flags
from ml_collections import config_flags

MODULE_NAME = "spark_jax_config_file"


class ConfigFileError(Exception):
    """A config file that gives no valid config; the message is one line naming the file (and line)."""


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _exception_line(path: str, e: BaseException, where: str) -> str:
    """'PATH:LINE: TYPE: MESSAGE (where)', LINE the innermost traceback frame inside `path`."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if _same_file(f.filename, path)]
    line = f":{frames[-1].lineno}" if frames else ""
    message = _one_line(e)
    return f"{path}{line}: {type(e).__name__}{': ' + message if message else ''} ({where})"


def _same_file(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def _execute(path: str):
    """The config file as a module (registered in sys.modules, as a normal import would be)."""
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as e:
        raise ConfigFileError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    try:
        code = compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as e:
        line = f":{e.lineno}" if e.lineno else ""
        raise ConfigFileError(f"{path}{line}: {type(e).__name__}: {_one_line(e.msg)}") from None
    except ValueError as e:  # null bytes, before Python 3.11.4 (a SyntaxError since)
        raise ConfigFileError(f"{path}: SyntaxError: {_one_line(e)}") from None
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    try:
        exec(code, module.__dict__)  # pylint: disable=exec-used
    except Exception as e:  # pylint: disable=broad-except
        raise ConfigFileError(_exception_line(path, e, "loading the file")) from None
    return module


def _def_line(path: str, fn) -> str:
    try:
        return f"{path}:{fn.__code__.co_firstlineno}"
    except AttributeError:
        return path


def _call(path: str, get_config, args: tuple):
    try:
        signature = inspect.signature(get_config)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(*args)
        except TypeError:
            given = f"the argument {args[0]!r} (from {path}:{args[0]})" if args else "no argument"
            raise ConfigFileError(f"{_def_line(path, get_config)}: get_config{signature} does not take {given}"
                                  + ("" if args else f"; pass one as {path}:ARG")) from None
    try:
        return get_config(*args)
    except Exception as e:  # pylint: disable=broad-except
        call = f"get_config({args[0]!r})" if args else "get_config()"
        raise ConfigFileError(_exception_line(path, e, f"in {call}") + _old_layout_hint(e)) from None


def _old_layout_hint(e: Exception) -> str:
    """For a config file of the layout before 2026-12-01 (`c.ntk.taus = ...`, `c.dfedavg.lr = ...`): where
    those fields are now."""
    from spark_jax import algorithms, config_options  # pylint: disable=g-import-not-at-top

    name = str(e).strip("\"'") if isinstance(e, (AttributeError, KeyError)) else None
    if name in config_options.OLD_NTK_SECTIONS or name in algorithms.available():
        return (f"; config.{name} is now part of config.algorithm_kw, the algorithm's keyword arguments: start "
                "from base.base_config(ALGORITHM) and set c.algorithm_kw (docs/LIBRARY.md)")
    return ""


def schema(algorithm: str = "dfedavg") -> ml_collections.ConfigDict:
    """The base schema with `algorithm`'s keyword arguments (`config.algorithm_kw`)."""
    from experiments.configs import base  # pylint: disable=g-import-not-at-top

    return base.base_config(algorithm)


def _algorithm_schema(path: str, config) -> ml_collections.ConfigDict:
    """The schema for the algorithm `config` names; ConfigFileError if it names none we know."""
    from spark_jax import algorithms  # pylint: disable=g-import-not-at-top

    name = config.get("algorithm") if isinstance(config, ml_collections.ConfigDict) else None
    if name is not None and name not in algorithms.available():
        raise ConfigFileError(f"{_line_setting(path, 'algorithm')}: unknown algorithm {name!r}; available: "
                              f"{', '.join(algorithms.available())}")
    return schema(name or "dfedavg")


def field_differences(config, reference, prefix: str = "") -> tuple[list[str], list[str]]:
    """(fields of `config` that `reference` lacks, fields of `reference` that `config` lacks), dotted."""
    unknown, missing = [], []
    for key in config.keys():
        if key not in reference:
            unknown.append(prefix + key)
        elif isinstance(config[key], ml_collections.ConfigDict) and isinstance(reference[key],
                                                                               ml_collections.ConfigDict):
            u, m = field_differences(config[key], reference[key], f"{prefix}{key}.")
            unknown += u
            missing += m
    missing += [prefix + key for key in reference.keys() if key not in config]
    return unknown, missing


def _line_setting(path: str, field: str) -> str:
    """'PATH:LINE' of the first line that seems to set `field`'s last part (c.x = / 'x': / x=), else PATH."""
    name = re.escape(field.rsplit(".", 1)[-1])
    pattern = re.compile(rf"\.{name}\s*=(?!=)|['\"]{name}['\"]\s*[:\]]|\b{name}\s*=(?!=)")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, text in enumerate(f, 1):
                if pattern.search(text.split("#", 1)[0]):
                    return f"{path}:{number}"
    except OSError:
        pass
    return path


def _listed(fields: list[str], most: int = 6) -> str:
    more = f" and {len(fields) - most} more" if len(fields) > most else ""
    return ", ".join(fields[:most]) + more


def _check(path: str, get_config, config, reference) -> None:
    where = _def_line(path, get_config)
    if config is None:
        raise ConfigFileError(f"{where}: get_config() returned None (a missing return?); it must return the "
                              "ml_collections.ConfigDict of experiments/configs/base.py, with changes")
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigFileError(f"{where}: get_config() returned a {type(config).__name__}, not an "
                              "ml_collections.ConfigDict; start from experiments.configs.base.base_config()")
    unknown, missing = field_differences(config, reference)
    if any(f.startswith("algorithm_kw.") for f in unknown + missing):
        unknown, missing = ([f[len("algorithm_kw."):] for f in fs if f.startswith("algorithm_kw.")]
                            for fs in (unknown, missing))
        raise ConfigFileError(f"{_line_setting(path, 'algorithm')}: config.algorithm_kw does not hold the "
                              f"keyword arguments of algorithm {config.algorithm!r} (unknown: {_listed(unknown) or '-'}; "
                              f"missing: {_listed(missing) or '-'}); start from base.base_config({config.algorithm!r}), "
                              "or switch with spark_jax.algorithms.with_algorithm")
    if unknown:
        raise ConfigFileError(f"{_line_setting(path, unknown[0])}: unknown config field(s) {_listed(unknown)} "
                              "(not in the schema, experiments/configs/base.py)")
    if missing:
        raise ConfigFileError(f"{where}: get_config() lacks config field(s) {_listed(missing)}; start from "
                              "experiments.configs.base.base_config()")


ALGORITHM_SUFFIX = "|algorithm="  # `rewrite_argv` folds --config.algorithm=NAME into the spec with it


def load(spec: str, lock: bool = True, reference=None, algorithm: str | None = None) -> ml_collections.ConfigDict:
    """The config of `spec` = 'PATH.py[:ARG][|algorithm=NAME]', checked against `reference` (default: the base
    schema for its algorithm); then switched to `algorithm` (or NAME) if given (`algorithms.with_algorithm`:
    before any `--config.a.b=v` override, so `algorithm_kw` overrides address the new algorithm's)."""
    spec, has_name, name = spec.partition(ALGORITHM_SUFFIX)
    algorithm = name if has_name else algorithm
    path, sep, arg = spec.partition(":")
    module = _execute(path)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigFileError(f"{path}: defines no get_config() function (a config file defines "
                              "get_config([arg]) returning an ml_collections.ConfigDict; see "
                              "experiments/configs/tiny.py)")
    config = _call(path, get_config, (arg,) if sep else ())
    _check(path, get_config, config, _algorithm_schema(path, config) if reference is None else reference)
    if algorithm is not None:
        from spark_jax import algorithms  # pylint: disable=g-import-not-at-top

        try:
            algorithms.with_algorithm(config, algorithm)
        except ValueError as e:
            raise ConfigFileError(f"--config.algorithm: {e}") from None
    if lock:
        config.lock()
    return config


class _Parser(flags.ArgumentParser):
    """absl parser of the config flag's value (ml_collections' `ConfigFileFlagParser`, with `load`)."""

    def parse(self, argument):
        return load(argument)

    def flag_type(self):
        return "config object"


def define_config_flag(help_string: str, name: str = "config") -> flags.FlagHolder:
    """`--NAME=path.py[:ARG]` (with `--NAME.a.b=v` overrides), loaded by `load`."""
    holder = config_flags.DEFINE_config_file(name, None, help_string, lock_config=True)
    flags.FLAGS[name].parser = _Parser()
    return holder
