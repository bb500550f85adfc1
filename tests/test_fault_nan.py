"""Family 4 of issue 16: the NaN guard checks every value a round writes before the round is committed.

Each case puts one non-finite value into one metric of one round (the
algorithm's own round output, so the parameters stay finite and only the
metrics check can catch it). The run must stop with one line naming the round
and the metric, write nothing for that round, and leave every file of the
good rounds (metrics.jsonl, checkpoints, config.json) byte-identical.
"""

import math

import jax.numpy as jnp
import pytest

from experiments.configs import tiny
from spark_jax import algorithms, guard
from spark_jax.runner import checkpoint, experiment
from spark_jax.setting import metrics
from spark_jax.guard import NonFiniteError
from spark_jax.runner.run_io import read_metrics
from tests.faults import assert_nothing_half_written, snapshot


def _bad_metric(round_fn, round_index: int, key: str, value: float):
    """`round_fn` whose metric `key` is `value` in round `round_index` (0-based)."""

    def wrapped(state, node_data, inputs):
        state, out = round_fn(state, node_data, inputs)
        return state, {**out, key: jnp.where(inputs.round_index == round_index, value, out[key])}

    return wrapped


def _bad_evaluation(make_evaluate, bad_round: int, key: str, value: float):
    """`metrics.make_evaluate` whose evaluation result `key` is `value` in round `bad_round` (1-based)."""

    def make(*args, **kwargs):
        evaluate, calls = make_evaluate(*args, **kwargs), []

        def wrapped(*a):
            out = evaluate(*a)
            calls.append(1)
            return {**out, key: jnp.float32(value)} if len(calls) == bad_round else out

        return wrapped

    return make


# (bad round, 1-based; metric; value; expected message). train_loss comes from the round, the rest from
# the evaluation.
CASES = [
    (1, "train_loss", math.nan, "round 1: non-finite metrics (train_loss=nan); no round completed"),
    (3, "train_loss", math.nan, "round 3: non-finite metrics (train_loss=nan); last good checkpoint: round 2 ("),
    (3, "consensus_distance", math.inf, "round 3: non-finite metrics (consensus_distance=inf); last good "
                                        "checkpoint: round 2 ("),
    (2, "test_accuracy", -math.inf, "round 2: non-finite metrics (test_accuracy=-inf); last good "
                                    "checkpoint: round 1 ("),
]


@pytest.mark.parametrize("bad_round,key,value,message", CASES,
                         ids=[f"round{r}-{k}={v}" for r, k, v, _ in CASES])
@pytest.mark.slow
def test_a_non_finite_metric_stops_the_run_before_it_is_written(bad_round, key, value, message, real_data_dir,
                                                                 tmp_path, monkeypatch):
    config = tiny.get_config()
    config.data.data_dir = real_data_dir
    config.rounds, config.checkpoint_every = 4, 1
    if key == "train_loss":
        make = algorithms.make_algorithm
        monkeypatch.setattr(algorithms, "make_algorithm", lambda *a, **k: (lambda alg: alg._replace(
            round=_bad_metric(alg.round, bad_round - 1, key, value)))(make(*a, **k)))
    else:
        monkeypatch.setattr(metrics, "make_evaluate", _bad_evaluation(metrics.make_evaluate, bad_round, key, value))
    workdir = tmp_path / "run"
    good = {}
    check = guard.check_record

    def check_and_snapshot(record, round_number, **kw):
        if round_number == bad_round:
            good.update(snapshot(workdir))  # what the good rounds left, just before the bad one is checked
        return check(record, round_number, **kw)

    monkeypatch.setattr(guard, "check_record", check_and_snapshot)
    with pytest.raises(NonFiniteError) as e:
        experiment.run(config, workdir)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    if bad_round == 1:
        assert not workdir.exists()  # nothing committed, nothing half-written
        return
    assert snapshot(workdir) == good
    assert [r["round"] for r in read_metrics(workdir)] == list(range(1, bad_round))
    assert checkpoint.latest_step(workdir) == bad_round - 1 and not (workdir / "summary.json").exists()
    assert_nothing_half_written(workdir)


@pytest.mark.parametrize("record,bad", [
    ({"a": 1.0, "b": [2.0, float("nan")], "c": {"d": float("-inf")}, "e": None, "f": "x", "g": 3},
     [("b.1", math.nan), ("c.d", -math.inf)]),
    ({"a": 1.0, "b": 10**30, "c": True}, []),
])
def test_nonfinite_values_finds_nested_values(record, bad):
    found = guard.nonfinite_values(record)
    assert [k for k, _ in found] == [k for k, _ in bad]
    assert all(str(v) == str(w) for (_, v), (_, w) in zip(found, bad))
