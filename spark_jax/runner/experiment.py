"""One experiment from a config: validate, prepare (`spark_jax.runner.build`), run the rounds, write files.

`run(config, workdir, resume)` is what `experiments/run.py` calls. Every
fallible step (config checks, data, partition, graph feasibility, the resume
checks) happens before the run directory is created or touched, so bad input
never leaves a half-written directory behind.

Each round: the jitted round (with the NaN guard's per-node finiteness flags,
`spark_jax.guard`), evaluation, one metrics.jsonl line, and every
`config.checkpoint_every` rounds a checkpoint (`spark_jax.runner.checkpoint`). A
round that trips the guard raises `guard.NonFiniteError` before its metrics
line is written: metrics.jsonl and the checkpoints stay those of the last good
rounds.
"""

from __future__ import annotations

import contextlib
import shutil
import time

import jax
import numpy as np
from absl import logging

from spark_jax import algorithms, guard, parallel
from spark_jax.rng import stream_key
from spark_jax.runner import checkpoint, curves, distributed, run_budget, run_data, run_lock, run_signals
from spark_jax.runner.build import Setup, final_models, prepare, round_inputs
from spark_jax.runner.progress import RoundReporter
from spark_jax.runner.run_checks import agreed_config, check_resumable, check_workdir
from spark_jax.runner.run_data import build_partition
from spark_jax.runner.run_io import RunDir, naming, to_jsonable, write_atomic
from spark_jax.runner.run_signals import Interrupted
from spark_jax.runner.validation import ConfigError, validate_config
from spark_jax.setting import comm, metrics, partition_report, topology

__all__ = ["ConfigError", "Interrupted", "Setup", "prepare", "round_inputs", "final_models", "run", "build_partition",
           "check_resumable"]


def run(config, workdir, resume: bool = False) -> dict:
    """Runs `config.rounds` rounds and writes the run directory; returns the summary.

    resume=False: `workdir` must not exist or be empty. resume=True: continue
    the run in `workdir` from its last complete checkpoint (from round 0 when
    it has none; metrics.jsonl is cut back to the checkpoint's round); its
    config.json must hold the same config (`check_resumable`). A finished run
    (summary.json) is not run again: its summary comes back with
    'run_status': 'already finished'. A `workdir` that does not exist or is
    empty starts a new run. The returned summary's 'run_status' is 'ran',
    'resumed' or 'already finished'. The run holds the lock of `workdir`
    (`spark_jax.runner.run_lock`) throughout: a second process on it gets
    `run_lock.LockedError` naming this one's pid.
    """
    validate_config(config, algorithms.available())
    run_dir = RunDir(workdir, writer=distributed.is_writer())
    # One process per run directory (LockedError names the holder); in a multi-process run, process 0 holds it.
    with run_lock.hold(run_dir.path) if run_dir.writer else contextlib.nullcontext():
        return _run_locked(config, run_dir, resume)


def _run_locked(config, run_dir: RunDir, resume: bool) -> dict:
    resuming, done = distributed.run_everywhere(
        "config", lambda: check_workdir(config, run_dir, resume),
        lambda checked: distributed.digest_json([agreed_config(config), str(run_dir.path), resume, checked[0],
                                                 checked[1] is not None]))
    if done is not None:
        return {**done, "run_status": "already finished"}
    setup = prepare(config)
    if resuming:
        # Before anything is rewritten; on every process (all raise if one's files differ from the record).
        distributed.run_everywhere("resumed data", lambda: run_data.check_same_data(run_dir, setup.data_fingerprint),
                                   lambda _: b"")
        return {**_run_rounds(setup, run_dir, resume=True), "run_status": "resumed"}
    run_dir.create()
    try:
        if run_dir.writer:
            run_dir.write_config(config.to_dict(), setup.data_fingerprint)
            write_atomic(run_dir.path / "partition.txt", partition_report.histogram_summary(setup.label_hist) + "\n")
            if curves.plots_enabled():
                with naming(run_dir.path / "label_histogram.png"):
                    partition_report.plot_label_heatmap(setup.label_hist, run_dir.path / "label_histogram.png")
        distributed.barrier("spark_jax.run_dir")  # the other processes open its checkpoints/ next
        return {**_run_rounds(setup, run_dir), "run_status": "ran"}
    except BaseException as e:
        # Nothing half-written: a run that failed (or was stopped by SIGINT/SIGTERM) before its first round
        # completed leaves no directory, so that a plain rerun starts it again.
        metrics_file = run_dir.path / "metrics.jsonl"
        if run_dir.writer and not (metrics_file.exists() and metrics_file.stat().st_size):
            shutil.rmtree(run_dir.path, ignore_errors=True)
            if isinstance(e, Interrupted):
                e.kept = False
        raise


def round_bytes(alg, graph: topology.Graph, counts: np.ndarray, num_params: int) -> tuple[int, dict]:
    """(dense weight bytes, the algorithm's message byte counts) of one round on `graph`.

    The dense averaging weights (d floats per directed edge, `comm.weight_bytes`) count unless the
    algorithm sends none (`Algorithm.sends_dense_weights=False`: its message is the whole exchange).
    """
    weights_sent = comm.weight_bytes(graph.neighbors, graph.mask, num_params) if alg.sends_dense_weights else 0
    messages = alg.message_bytes(graph.neighbors, graph.mask, counts) if alg.message_bytes else {}
    return weights_sent, messages


def guarded_round(round_fn):
    """`round_fn` with the NaN guard's 'finite_state' [M] flags added to its metrics."""

    def guarded(state, node_data, inputs):
        state, out = round_fn(state, node_data, inputs)
        return state, {**out, "finite_state": guard.nodes_finite(state)}

    return guarded


def _start(setup: Setup, run_dir: RunDir, resume: bool):
    """(state, progress): a fresh state at round 0, or the last checkpoint's when resuming."""
    cfg = setup.config
    state = setup.algorithm.init(stream_key(cfg.seed, "init"), setup.node_data)
    if setup.mesh is not None:  # state node axis split over the devices
        state = parallel.shard_nodes(state, setup.mesh)
    progress = checkpoint.Progress()
    if resume:
        restored = checkpoint.restore_intact(run_dir.path, like=state)  # corrupt steps skipped, named
        if restored is not None:
            state, progress = restored
        run_dir.rewrite_metrics(progress.history)
        logging.warning("resuming %s at round %d of %d", run_dir.path, progress.round, cfg.rounds)
    return state, progress


def _where_kept(run_dir: RunDir, progress: checkpoint.Progress) -> str:
    """What a run stopped by the NaN guard keeps (its bad round's metrics line is not written)."""
    if progress.round == 0:
        return "no round completed"
    step = checkpoint.latest_step(run_dir.path)
    ckpt = (f"last good checkpoint: round {step} ({checkpoint.checkpoint_dir(run_dir.path) / str(step)})"
            if step is not None else "no checkpoint yet")
    rounds = "round 1" if progress.round == 1 else f"rounds 1-{progress.round}"
    return f"{ckpt}; metrics.jsonl holds {rounds}"


def _run_rounds(setup: Setup, run_dir: RunDir, resume: bool = False) -> dict:
    """Rounds from the start (or the last checkpoint), then summary.json; returns the summary."""
    state, progress = _start(setup, run_dir, resume)
    manager = checkpoint.open_manager(run_dir.path) if setup.config.checkpoint_every else None
    try:
        state = _rounds(setup, run_dir, state, progress, manager)
        summary = _summary(setup, state, progress)
        if run_dir.writer and curves.plots_enabled():  # accuracy vs round and vs bytes, stages marked
            # (spark_jax/runner/curves.py); before summary.json, which marks the run finished (a resume would
            # never draw it again)
            curves.plot_curves(progress.history, run_dir.path / "curves.png", setup.config.name,
                               curves.stage_starts(setup.config))
        run_dir.write_summary(summary)
        if manager is not None:
            checkpoint.keep_only_latest(manager)  # a finished run keeps its final state only
        return summary
    finally:
        if manager is not None:
            manager.close()


def _rounds(setup: Setup, run_dir: RunDir, state, progress: checkpoint.Progress, manager):
    """Runs rounds progress.round .. config.rounds - 1, updating `progress`; returns the final state."""
    # Bar, cost note on CPU, TensorBoard events (spark_jax/runner/progress.py).
    bar = RoundReporter(setup.config, run_dir.path, progress.round, progress.history, run_dir.writer)
    try:
        return _round_loop(setup, run_dir, state, progress, manager, bar)
    except KeyboardInterrupt as e:  # SIGINT, or SIGTERM under run_signals.stop_signals_raise
        raise run_signals.interrupted(e, progress.round + 1, run_dir.path) from None
    except jax.errors.JaxRuntimeError as e:  # XLA out of memory: one line, checkpoints of good rounds kept
        line = run_budget.out_of_memory_line(e, progress.round + 1, setup.config)
        if line is None:
            raise
        raise run_budget.OutOfMemoryError(f"{line}; {_where_kept(run_dir, progress)}") from None
    finally:  # also on errors and signals: the bar's line ends before the error line, events are closed
        bar.close()


def _round_loop(setup: Setup, run_dir: RunDir, state, progress: checkpoint.Progress, manager, bar):
    cfg, alg = setup.config, setup.algorithm
    place_inputs = (lambda x: x) if setup.mesh is None else lambda x: parallel.replicate(x, setup.mesh)
    round_fn = jax.jit(guarded_round(alg.round), donate_argnums=0)
    evaluate = metrics.make_evaluate(setup.model.apply, cfg.eval.node_chunk, setup.mesh)
    train_key = stream_key(cfg.seed, "train")
    start = time.perf_counter() - progress.wall_time
    counts = distributed.fetch(setup.node_data.counts)
    for r in range(progress.round, cfg.rounds):
        run_signals.raise_pending()  # a SIGINT/SIGTERM whose exception was swallowed (e.g. in a gc callback)
        t0 = time.perf_counter()
        graph = setup.topology.graph(r)
        state, alg_metrics = round_fn(state, setup.node_data, place_inputs(round_inputs(graph, r, train_key)))
        ev = evaluate(state.params, setup.test_x, setup.test_y, setup.node_test_x, setup.node_test_y)
        ev, alg_metrics = distributed.fetch((ev, alg_metrics))
        alg_metrics, flags = guard.split_flags(alg_metrics)
        try:
            guard.check(flags, r + 1)
        except guard.NonFiniteError as e:
            raise guard.NonFiniteError(f"{e}; {_where_kept(run_dir, progress)}") from None
        weights_sent, messages = round_bytes(alg, graph, counts, setup.num_params)
        sent = weights_sent + messages.get("message_bytes", 0)
        progress.bytes_cumulative += sent
        for key in ("jacobian_bytes", "exact_jacobian_bytes"):
            progress.byte_totals[key] = progress.byte_totals.get(key, 0) + messages.get(key, 0)
        record = {"round": r + 1, **ev, **alg_metrics, **messages, "weight_bytes": weights_sent,
                  "bytes_round": sent, "bytes_cumulative": progress.bytes_cumulative,
                  "round_time": time.perf_counter() - t0, "wall_time": time.perf_counter() - start}
        record = to_jsonable(record)
        try:
            guard.check_record(record, r + 1)  # every value the round writes, before it is committed
        except guard.NonFiniteError as e:
            raise guard.NonFiniteError(f"{e}; {_where_kept(run_dir, progress)}") from None
        with run_signals.deferred():  # committed whole: a signal comes after the line and the progress counting it
            run_dir.append_metrics(record)
            progress.history.append(record)
            progress.round = r + 1
        progress.wall_time = time.perf_counter() - start
        if manager is not None and (progress.round % cfg.checkpoint_every == 0 or progress.round == cfg.rounds):
            checkpoint.save(manager, state, progress)
        bar.round_done(record)
    run_signals.raise_pending()
    progress.wall_time = time.perf_counter() - start
    return state


def _summary(setup: Setup, state, progress: checkpoint.Progress) -> dict:
    cfg, history, totals = setup.config, progress.history, progress.byte_totals
    accs = [h["test_accuracy"] for h in history]
    hit = metrics.rounds_to_target(accs, cfg.eval.target_accuracy)
    return {
        "config_name": cfg.name, "algorithm": setup.algorithm.name, "rounds": cfg.rounds,
        "num_nodes": cfg.partition.num_nodes, "num_params": setup.num_params, "data_source": setup.data_source,
        "final_test_accuracy": accs[-1], "best_test_accuracy": max(accs), "best_round": int(np.argmax(accs)) + 1,
        "final_node_accuracy_mean": history[-1]["node_accuracy_mean"],
        "target_accuracy": cfg.eval.target_accuracy, "rounds_to_target": hit,
        "bytes_to_target": history[hit - 1]["bytes_cumulative"] if hit else None,
        "bytes_total": progress.bytes_cumulative, "jacobian_bytes_total": totals.get("jacobian_bytes", 0),
        "jacobian_traffic_reduction": (1.0 - totals["jacobian_bytes"] / totals["exact_jacobian_bytes"]
                                       if totals.get("exact_jacobian_bytes") else None),
        "wall_time": progress.wall_time,
        "final_models": to_jsonable(final_models(setup, state.params if setup.mesh is None
                                                 else parallel.replicate(state.params, setup.mesh))),
    }
