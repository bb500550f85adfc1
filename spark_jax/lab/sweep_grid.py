"""Sweeps: typed `--sweep` axes, presets, the run grid, and running it resumably.

`python -m experiments.sweep` is a thin wrapper around `build_grid` and
`run_sweep`. A sweep is the Cartesian product of

  preset settings (named override sets, `sweep_presets.PRESETS`) x `--sweep` axes x seeds.

Axis syntax (`parse_axis`): `config.PATH=V1,V2,...`, typed like the field: int, float (ints
accepted), bool (true/false/1/0, any case), str. Tuple fields (`model.hidden`, `algorithm_kw.taus`)
separate values with `;` and elements with `:`: `config.algorithm_kw.taus=100:200;100:200:400`
(quote it for the shell). A scalar axis may also use `;` (strings with commas).

Layout: `SWEEP_DIR/<setting>/seed<N>/` is an ordinary run directory, where <setting> is the
preset setting's name and the axis values (paths without `algorithm_kw.`), e.g.
`no_sketch,sketch.k=128`, or `default` when there are neither; `sweep.json` lists the grid and
each run's status. Re-running a sweep skips finished runs (summary.json), resumes interrupted runs
from their last checkpoint (`spark_jax.runner.checkpoint`), and re-runs from scratch one that has none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import pathlib
import re
import shutil
import time
import traceback
from typing import Any, Callable

import ml_collections

from spark_jax import algorithms
from spark_jax.runner import checkpoint, run_lock, run_signals
from spark_jax.runner.run_io import CorruptFileError, RunDir, config_differences, write_json_atomic
from spark_jax.runner.run_signals import Interrupted, SweepInterrupted
from spark_jax.lab.sweep_presets import PRESETS, Preset


class SweepError(ValueError):
    """A sweep spec, preset or sweep directory that cannot work; raised before anything runs."""


@dataclasses.dataclass(frozen=True)
class Axis:
    path: str  # dotted, without the 'config.' prefix
    values: tuple


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of the grid: its setting name, overrides (in order), seed and full config."""

    setting: str
    seed: int
    overrides: tuple  # ((path, value), ...) excluding the seed
    config: Any = dataclasses.field(compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"{self.setting}/seed{self.seed}"


@dataclasses.dataclass
class RunResult:
    spec: RunSpec
    # 'done' (already finished, skipped) | 'ran' | 'resumed' (interrupted, continued from its checkpoint)
    # | 'redone' (interrupted without a checkpoint, re-run) | 'failed'
    status: str
    final_test_accuracy: float | None = None
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0


# ---------------------------------------------------------------- config paths and values


def _strip(path: str) -> str:
    return path[len("config."):] if path.startswith("config.") else path


def get_field(config, path: str):
    """The value at dotted `path`; SweepError naming the known keys if there is none."""
    node, done = config, []
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            if (moved := algorithms.moved_path(path)) is not None:  # the layout before 2026-12-01
                raise SweepError(f"config.{path} is now config.{moved} (keyword arguments)")
            where = ".".join(done) or "config"
            known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "(a leaf)"
            raise SweepError(f"unknown config field {path!r}: {where} has no {part!r}; known: {known}")
        node = node[part]
        done.append(part)
    if isinstance(node, ml_collections.ConfigDict):
        raise SweepError(f"config.{path} is a section, not a field; sweep one of its fields")
    return node


def set_field(config, path: str, value) -> None:
    """Sets an existing field; ml_collections' type check applies (TypeError -> SweepError). 'algorithm'
    switches the algorithm and its keyword arguments (`algorithms.with_algorithm`): set it first."""
    get_field(config, path)
    if path == "algorithm":
        try:
            algorithms.with_algorithm(config, value)
            return
        except (ValueError, TypeError) as e:
            raise SweepError(f"config.algorithm={value!r}: {e}") from e
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node[part]
    try:
        node[last] = value
    except (TypeError, ValueError, AttributeError) as e:
        raise SweepError(f"config.{path}={value!r}: {e}") from e


def _parse_scalar(text: str, like, path: str):
    text = text.strip()
    try:
        if isinstance(like, bool):
            low = text.lower()
            if low in ("true", "1"):
                return True
            if low in ("false", "0"):
                return False
            raise ValueError("expected true/false")
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            return float(text)
        if isinstance(like, str):
            return text
    except ValueError as e:
        raise SweepError(f"config.{path}: cannot read {text!r} as {type(like).__name__} ({e})") from e
    raise SweepError(f"config.{path} has type {type(like).__name__}, which sweeps do not support")


def _guess_scalar(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def parse_value(text: str, like, path: str):
    """One sweep value `text`, typed like the field's current value `like`."""
    if isinstance(like, (tuple, list)):
        parts = text.split(":") if text.strip() else []
        if like:
            return tuple(_parse_scalar(p, like[0], path) for p in parts)
        return tuple(_guess_scalar(p.strip()) for p in parts)
    if like is None:
        raise SweepError(f"config.{path} defaults to None; its type is unknown, so it cannot be swept")
    return _parse_scalar(text, like, path)


def parse_axis(spec: str, config) -> Axis:
    """'config.PATH=V1,V2' (tuples: 'config.PATH=A:B;C:D') -> Axis with typed values."""
    path, eq, values = spec.partition("=")
    path = _strip(path.strip())
    if not eq or not path or not values.strip():
        raise SweepError(f"--sweep={spec!r}: expected config.PATH=V1,V2,...")
    if path == "seed":
        raise SweepError("sweep seeds with --seeds=0,1,2, not --sweep=config.seed=...")
    like = get_field(config, path)
    if isinstance(like, (tuple, list)):
        if "," in values:
            raise SweepError(f"--sweep={spec!r}: config.{path} is a tuple; separate values with ';' and a "
                             "tuple's elements with ':', e.g. 100:200;100:200:400")
        texts = values.split(";")
    else:
        texts = values.split(";") if ";" in values else values.split(",")
    parsed = tuple(parse_value(t, like, path) for t in texts)
    names = [format_value(v) for v in parsed]
    if len(set(names)) != len(names):
        raise SweepError(f"--sweep={spec!r}: repeated value")
    return Axis(path, parsed)


def parse_seeds(text: str | None, default: int) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; None or '' -> [default]."""
    if not text:
        return [int(default)]
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError as e:
        raise SweepError(f"--seeds={text!r}: expected comma-separated integers") from e
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds={text!r}: seeds must be distinct integers >= 0")
    return seeds


# ---------------------------------------------------------------- names and the grid


def format_value(value) -> str:
    """A deterministic, path-safe spelling of a typed value (floats keep repr: 0.0, 1e-05)."""
    if isinstance(value, (tuple, list)):
        return ":".join(format_value(v) for v in value)
    text = repr(value) if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._+\-]", "_", text)


def setting_name(preset_setting: str | None, axis_values: list[tuple[str, Any]]) -> str:
    """'PRESET,PATH=V,...' (paths without `algorithm_kw.`), or 'default'."""
    parts = ([preset_setting] if preset_setting else []) + [f"{p.removeprefix('algorithm_kw.')}={format_value(v)}"
                                                            for p, v in axis_values]
    return ",".join(parts) or "default"


def resolve_preset(name: str | None) -> Preset | None:
    if not name:
        return None
    if name not in PRESETS:
        raise SweepError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def expand_grid(config, axes: list[Axis], seeds: list[int], preset: Preset | None = None) -> list[RunSpec]:
    """Settings (preset x axes) x seeds, seed-major, so a partial sweep already compares every setting."""
    paths = [a.path for a in axes]
    if len(set(paths)) != len(paths):
        raise SweepError(f"a config field is swept twice: {paths}")
    preset_settings = list(preset.settings.items()) if preset else [(None, {})]
    for pname, overrides in preset_settings:
        both = set(map(_strip, overrides)) & set(paths)
        if both:
            raise SweepError(f"preset setting {pname!r} already sets {sorted(both)}; do not also sweep it")
    settings = []
    for (pname, preset_overrides), values in itertools.product(preset_settings, itertools.product(
            *[a.values for a in axes])):
        axis_values = list(zip(paths, values))
        overrides = tuple((_strip(p), v) for p, v in preset_overrides.items()) + tuple(axis_values)
        settings.append((setting_name(pname, axis_values), overrides))
    names = [n for n, _ in settings]
    if len(set(names)) != len(names):
        raise SweepError(f"two settings have the same name: {names}")
    grid = []
    for seed in seeds:
        for name, overrides in settings:
            run_config = config.copy_and_resolve_references()
            for path, value in sorted(overrides, key=lambda o: o[0] != "algorithm"):  # the algorithm first
                set_field(run_config, path, value)
            set_field(run_config, "seed", seed)
            grid.append(RunSpec(setting=name, seed=seed, overrides=overrides, config=run_config))
    return grid


def build_grid(config, sweep_specs: list[str], seeds: str | None = None, preset: str | None = None) -> list[RunSpec]:
    """Parses `--sweep`, `--seeds`, `--preset` against `config` and expands the grid."""
    preset_ = resolve_preset(preset)
    names = {o.get("algorithm") for o in preset_.settings.values()} if preset_ else {None}
    typed_by = config if len(names) != 1 or None in names else algorithms.with_algorithm(  # the preset's algorithm
        config.copy_and_resolve_references(), *names)
    axes = [parse_axis(s, typed_by) for s in sweep_specs]
    return expand_grid(config, axes, parse_seeds(seeds, config.seed), preset_)


# ---------------------------------------------------------------- running


def run_state(run_dir: pathlib.Path) -> str:
    """'done' (summary.json), 'interrupted' (directory without one) or 'new'."""
    if (run_dir / "summary.json").exists():
        return "done"
    return "interrupted" if run_dir.exists() else "new"


def check_resumable(grid: list[RunSpec], sweep_dir) -> None:
    """SweepError if an existing run directory holds a run of a different config."""
    problems = []
    for spec in grid:
        try:
            old = RunDir(pathlib.Path(sweep_dir) / spec.name).read_config()
        except CorruptFileError:
            continue  # named when the run itself is tried (resumed: fails, named; no checkpoint: redone)
        if old is None:
            continue
        diff = config_differences(old, spec.config.to_dict())
        if diff:
            problems.append(f"{spec.name} (differs in {', '.join(diff[:5])})")
    if problems:
        raise SweepError(f"{sweep_dir} holds runs of a different config: {'; '.join(problems)}; "
                         "use another --workdir")


def sweep_record(grid: list[RunSpec], sweep_dir, results: dict[str, RunResult], meta: dict | None = None) -> dict:
    """What sweep.json holds: the grid (settings, seeds, overrides, run dirs relative to it) and statuses."""
    settings = {}
    for spec in grid:
        settings.setdefault(spec.setting, dict(spec.overrides))
    runs = []
    for spec in grid:
        res = results.get(spec.name)
        runs.append({"name": spec.name, "setting": spec.setting, "seed": spec.seed,
                     "overrides": dict(spec.overrides), "run_dir": spec.name,  # relative to sweep.json
                     "status": res.status if res else run_state(pathlib.Path(sweep_dir) / spec.name),
                     "final_test_accuracy": res.final_test_accuracy if res else None,
                     "error": res.error if res else None})
    return {**(meta or {}), "settings": settings, "seeds": sorted({s.seed for s in grid}), "runs": runs}


def _final_accuracy(summary) -> float | None:
    return summary.get("final_test_accuracy") if isinstance(summary, dict) else None


def run_sweep(grid: list[RunSpec], sweep_dir, runner: Callable | None = None, *, meta: dict | None = None,
              log: Callable[[str], None] = print) -> list[RunResult]:
    """Runs the grid in order, resumably; a failing run is recorded and the sweep goes on.

    `runner(config, run_dir, resume=False) -> summary dict` (default
    `spark_jax.runner.experiment.run`). A run whose directory has summary.json is
    skipped; an interrupted one (a directory without it) with a complete
    checkpoint is resumed (`runner(..., resume=True)`); without one, its
    directory is removed and the run redone. sweep.json is rewritten after
    every run. The sweep holds the lock of `sweep_dir` (`spark_jax.runner.run_lock`)
    throughout; each run also locks its own directory. SIGINT (or SIGTERM,
    `run_signals.stop_signals_raise`) stops the sweep with `run_signals.SweepInterrupted`
    naming the run it was in; re-running the sweep resumes it.
    """
    if runner is None:
        from spark_jax.runner.experiment import run as runner  # pylint: disable=g-import-not-at-top
    sweep_dir = pathlib.Path(sweep_dir)
    with run_lock.hold(sweep_dir):  # one sweep per directory (LockedError names the holder's pid)
        return _run_sweep_locked(grid, sweep_dir, runner, meta, log)


def _run_sweep_locked(grid, sweep_dir: pathlib.Path, runner, meta, log) -> list[RunResult]:
    check_resumable(grid, sweep_dir)
    results: dict[str, RunResult] = {}
    current, width = None, len(str(len(grid)))
    try:
        write_json_atomic(sweep_dir / "sweep.json", sweep_record(grid, sweep_dir, results, meta))
        for i, spec in enumerate(grid):
            current = spec.name
            run_signals.raise_pending()  # a SIGINT/SIGTERM whose exception was swallowed
            results[spec.name] = res = _run_one(spec, sweep_dir / spec.name, runner)
            write_json_atomic(sweep_dir / "sweep.json", sweep_record(grid, sweep_dir, results, meta))
            log(progress_line(i, len(grid), res, width))
            current = None
    except (Interrupted, KeyboardInterrupt) as e:  # SIGINT/SIGTERM: the sweep stops, resumable as it is
        with contextlib.suppress(Exception):
            write_json_atomic(sweep_dir / "sweep.json", sweep_record(grid, sweep_dir, results, meta))
        raise SweepInterrupted(e, current) from None
    return [results[s.name] for s in grid]


def _run_one(spec: RunSpec, run_dir: pathlib.Path, runner) -> RunResult:
    """Runs, resumes, redoes or skips (done) the run of `spec` in `run_dir`; its result."""
    state = run_state(run_dir)
    start = time.perf_counter()
    if state == "done":
        try:
            res = RunResult(spec, "done", _final_accuracy(RunDir(run_dir).read_summary()))
        except CorruptFileError as e:  # reported, counted as failed; the sweep goes on
            res = RunResult(spec, "failed", error=f"{type(e).__name__}: {e}")
    else:
        resume = state == "interrupted" and checkpoint.latest_step(run_dir) is not None
        if state == "interrupted" and not resume:
            shutil.rmtree(run_dir)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        status = "resumed" if resume else "redone" if state == "interrupted" else "ran"
        try:
            summary = runner(spec.config, run_dir, resume=True) if resume else runner(spec.config, run_dir)
            res = RunResult(spec, status, _final_accuracy(summary))
        except Interrupted:  # SIGINT/SIGTERM: stops the sweep (`_run_sweep_locked`), not a failed run
            raise
        except Exception as e:  # pylint: disable=broad-except
            res = RunResult(spec, "failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    res.seconds = time.perf_counter() - start
    return res


def progress_line(index: int, total: int, res: RunResult, width: int = 0) -> str:
    if res.status == "failed":
        tail = res.error
    else:
        acc = res.final_test_accuracy
        tail = f"final accuracy {acc:.4f}" if acc is not None else "final accuracy ?"
        if res.status != "done":
            tail += f" ({res.seconds:.1f} s)"
    return f"[{index + 1:>{width}}/{total}] {res.spec.name}  {res.status}  {tail}"


def format_grid(grid: list[RunSpec], sweep_dir=None) -> str:
    """The dry-run listing: one line per run with its overrides (and state, given a sweep dir)."""
    lines = [f"{len(grid)} runs ({len({s.setting for s in grid})} settings x {len({s.seed for s in grid})} seeds)"]
    width = len(str(len(grid)))
    for i, spec in enumerate(grid):
        over = ", ".join(f"{p}={v!r}" for p, v in spec.overrides) or "(config as given)"
        state = f"  [{run_state(pathlib.Path(sweep_dir) / spec.name)}]" if sweep_dir else ""
        lines.append(f"[{i + 1:>{width}}/{len(grid)}] {spec.name}{state}  {over}, seed={spec.seed}")
    return "\n".join(lines)
