"""The study of the SPARK readings: presets validate, numbers and verdicts from synthetic runs, and
docs/RESULTS.md regenerates from its committed run records."""

import json
import math
import pathlib

import numpy as np
import pytest

from experiments.configs import fmnist_regular
from spark_jax.lab import readings_stats, readings_verdicts, report_readings, sweep_grid, sweep_presets
from tests.conftest import REPO

D = 1000  # parameters: weight bytes per edge 4 * D


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize("arg", ["", "study"])
def test_every_reading_preset_row_builds_and_validates(arg):
    from spark_jax import algorithms  # pylint: disable=g-import-not-at-top
    from spark_jax.runner.validation import validate_config  # pylint: disable=g-import-not-at-top

    config = fmnist_regular.get_config(arg)
    config.lock()
    grid = sweep_grid.build_grid(config, [], "0", "spark_readings")
    assert {s.setting for s in grid} == {f"{r},alpha={a}" for r in sweep_presets.READINGS for a in (0.1, 0.5)}
    for spec in grid:
        validate_config(spec.config, algorithms.available())
    core = sweep_presets.PRESETS["spark_readings_core"].settings
    more = sweep_presets.PRESETS["spark_readings_more"].settings
    assert not set(core) & set(more)
    assert set(core) | set(more) <= set(sweep_presets.PRESETS["spark_readings"].settings)
    alpha05 = sweep_presets.PRESETS["spark_readings_alpha05"].settings
    assert set(alpha05) == {s for s in more if s.endswith("alpha=0.5")}
    if arg == "study":
        assert config.partition.num_nodes == 30 and config.rounds == 20 and config.topology.kind == "regular"


def test_reading_rows_set_what_their_names_say():
    r = sweep_presets.READINGS
    spark = {"algorithm": "spark"}  # every spark_* row runs SPARK, whatever the base config
    assert r["spark_v1"] == spark and r["ntk_dfl"] == {"algorithm": "ntk_dfl"}
    assert r["spark_v2"] == {**spark, "algorithm_kw.sketch.enabled": False}
    assert r["spark_v2_no_momentum"]["algorithm_kw.momentum.beta"] == 0.0
    assert r["spark_v2_no_distill"]["algorithm_kw.distill.lambda_max"] == 0
    assert r["spark_v1_roundtrip"] == {**spark, "algorithm_kw.sketch.update_mode": "roundtrip"}
    assert all(row.get("algorithm") == "spark" for name, row in r.items() if name.startswith("spark"))


# ---------------------------------------------------------------- a synthetic study


def write_run(run_dir: pathlib.Path, *, accs, jac_per_round, msg_per_round, seed, rounds, alpha, algorithm="spark"):
    run_dir.mkdir(parents=True)
    config = {"name": "synthetic:study", "seed": seed, "rounds": rounds, "algorithm": algorithm,
              "partition": {"num_nodes": 4, "alpha": alpha}, "topology": {"degree": 2},
              "ntk": {"taus": [100, 200], "integrator": "imex"}, "eval": {"per_node_test_subset": 100},
              "stages": {"boundaries": [1 / 3, 2 / 3], "unit": "fraction"}}
    (run_dir / "config.json").write_text(json.dumps({"config": config, "environment": {}}))
    lines, total = [], 0
    for r, acc in enumerate(accs, start=1):
        total += 4 * D + msg_per_round
        lines.append(json.dumps({"round": r, "test_accuracy": acc, "node_accuracy_mean": acc - 0.1,
                                 "bytes_cumulative": total, "jacobian_bytes": jac_per_round,
                                 "round_time": 5.0 if r == 1 else 1.0, "wall_time": 5.0 + (r - 1)}))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run_dir / "summary.json").write_text(json.dumps({"final_test_accuracy": accs[-1]}))


# reading -> (per-seed accuracy curves over 6 rounds, Jacobian bytes per round, message bytes per round)
CURVES = {
    "ntk_dfl": ([[.50, .60, .70, .80, .82, .84], [.52, .62, .72, .79, .83, .85]], 10_000, 10_400),
    "spark_v1": ([[.40, .50, .60, .70, .80, .83], [.42, .52, .62, .72, .78, .81]], 100, 500),
    "spark_v2": ([[.70, .80, .85, .86, .87, .88], [.72, .81, .84, .86, .88, .89]], 10_000, 10_400),
    "dfedavgm": ([[.30, .40, .50, .60, .70, .75], [.31, .41, .52, .61, .69, .74]], 0, 0),
}


@pytest.fixture
def study(tmp_path):
    root = tmp_path / "study"
    runs = []
    for reading, (curves, jac, msg) in CURVES.items():
        for seed, accs in enumerate(curves):
            name = f"{reading},alpha=0.1/seed{seed}"
            write_run(root / "part" / name, accs=accs, jac_per_round=jac, msg_per_round=msg, seed=seed, rounds=6,
                      alpha=0.1, algorithm="ntk_dfl" if reading == "ntk_dfl" else "spark")
            runs.append({"setting": f"{reading},alpha=0.1", "seed": seed, "run_dir": name, "status": "ran"})
    runs.append({"setting": "spark_v1_roundtrip,alpha=0.1", "seed": 0, "run_dir": "spark_v1_roundtrip,alpha=0.1/seed0",
                 "status": "failed", "error": "FloatingPointError: non-finite round 3\nmore"})
    runs.append({"setting": "spark_v1_own_exact,alpha=0.1", "seed": 0, "run_dir": "x/seed0", "status": "new"})
    (root / "part" / "sweep.json").write_text(json.dumps(
        {"argv": ["--config=synthetic:study", "--workdir=results/study/part"], "runs": runs}))
    return root


def test_rounds_and_bytes_to_target_match_an_explicit_scan(study):
    cells = {c.reading: c for c in readings_stats.load_cells(study)}
    assert [c.reading for c in readings_stats.load_cells(study)][:3] == ["ntk_dfl", "spark_v2", "spark_v1"]
    x = readings_stats.to_target(cells["ntk_dfl"], 0.80)
    # seed 0 reaches 0.80 at round 4, seed 1 (0.79 at round 4) at round 5
    assert x["reached"] == 2 and x["round"] == 4.5 and x["round_std"] == pytest.approx(math.sqrt(0.5))
    assert x["bytes"] == pytest.approx((4 + 5) / 2 * (4 * D + 10_400))
    assert x["jacobian_bytes"] == pytest.approx(4.5 * 10_000)
    y = readings_stats.to_target(cells["spark_v1"], 0.82)
    assert y["reached"] == 1 and y["round"] == 6
    assert cells["spark_v1_roundtrip"].failed == [(0, "FloatingPointError: non-finite round 3")]
    assert cells["spark_v1_own_exact"].unfinished == [0] and not cells["spark_v1_own_exact"].runs


def test_cell_stats_and_common_target(study):
    cells = readings_stats.load_cells(study)
    s = readings_stats.cell_stats(next(c for c in cells if c.reading == "spark_v2"))
    assert s["final"][0] == pytest.approx(0.885) and s["final"][1] == pytest.approx(np.std([.88, .89], ddof=1))
    assert s["node"][0] == pytest.approx(0.785)
    assert s["stages"] == pytest.approx([(.80 + .81) / 2, (.86 + .86) / 2, (.88 + .89) / 2])  # records 2, 4, 6
    assert s["seconds_per_round"] == 1.0 and s["first_round_seconds"] == 5.0 and s["wall_seconds"] == 20.0
    # min-over-seeds best accuracies: ntk .84, v2 .88, v1 .81, dfedavgm .74 -> 3 of 4 rows reach .81
    assert readings_stats.common_target([c for c in cells if c.runs]) == pytest.approx(0.81)


def test_verdicts_follow_their_rules(study):
    cells = [c for c in readings_stats.load_cells(study) if c.runs]
    stats = {(c.reading, c.alpha): readings_stats.cell_stats(c) for c in cells}
    reach = {(c.reading, c.alpha): readings_stats.to_target(c, 0.81) for c in cells}
    a = readings_verdicts.claim_a(stats, 0.1)
    assert a.verdict == "partly" and "99.0% less" in a.evidence  # cut 99%, accuracy 2.5 points lower
    b = readings_verdicts.claim_b(stats, reach, 0.1, 6)
    # spark_v2 reaches .81 at rounds 3 and 2 -> 2.5; ntk_dfl at 5 and 5 -> 5; dfedavgm never (7): 2x
    assert b.verdict == "partly" and "fastest reading spark_v2: 2.5 rounds" in b.evidence and "2.00x" in b.evidence
    c = readings_verdicts.claim_c(stats, reach, 0.1)
    # bytes to .81: spark_v1 6 x 4,500 = 27,000; spark_v2 2.5 x 14,400; ntk_dfl 5 x 14,400 = 72,000: 62.5% less
    assert c.verdict == "reproduced" and "cheapest reading spark_v1: 27.00 kB" in c.evidence
    assert "spark_v2: 50% less" in c.evidence
    d = readings_verdicts.claim_d(stats, [0.1])
    assert d.verdict == "reproduced" and "spark_v2 0.8850" in d.evidence


def test_markdown_names_failures_and_every_row(study, tmp_path):
    written = report_readings.write_results(study, tmp_path / "docs" / "RESULTS.md")
    text = written["markdown"].read_text()
    assert "spark_v1_roundtrip, alpha 0.1, seed 0: failed: `FloatingPointError: non-finite round 3`" in text
    assert "spark_v1_own_exact, alpha 0.1, seed 0: not finished" in text
    assert "python -m experiments.sweep --config=synthetic:study --workdir=results/study/part" in text
    for reading in CURVES:
        assert f"| {reading} |" in text
    assert all(p.is_file() and p.stat().st_size > 0 for p in written["figures"])
    assert not list(written["data"].rglob("checkpoints"))
    assert report_readings.markdown(written["data"]) == text  # regenerates from the collected copy


def test_paired_effects_at_stage_ends(study):
    cells = {c.reading: c for c in readings_stats.load_cells(study)}
    diffs, seeds = readings_stats.paired_effect(cells["spark_v1"], cells["spark_v2"])
    # records 2, 4, 6 of v1 (.50 .70 .83 | .52 .72 .81) minus v2 (.80 .86 .88 | .81 .86 .89)
    assert seeds == [0, 1] and diffs == pytest.approx([-0.295, -0.15, -0.065])
    assert readings_stats.paired_effect(cells["spark_v1"], cells["spark_v1_own_exact"]) is None


def test_a_damaged_run_is_reported_as_failed_never_averaged(study):
    bad = study / "part" / "spark_v2,alpha=0.1" / "seed1" / "metrics.jsonl"
    bad.write_text(bad.read_text()[:-40])  # the last line cut mid-record
    cell = next(c for c in readings_stats.load_cells(study) if c.reading == "spark_v2")
    assert [r.seed for r in cell.runs] == [0]
    assert cell.failed and cell.failed[0][0] == 1 and "damaged run records" in cell.failed[0][1]
    assert "metrics.jsonl" in cell.failed[0][1]
    (study / "part" / "sweep.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="sweep.json: not a sweep record"):
        readings_stats.load_cells(study)



def test_commands_show_named_configs_as_typed(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "sweep.json").write_text(json.dumps({"argv": [
        "--config=/x/y/experiments/configs/fmnist_regular.py:study", "--seeds=0,1", "--workdir=results/r/a"]}))
    assert report_readings._commands(tmp_path) == [  # pylint: disable=protected-access
        "python -m experiments.sweep --config=fmnist_regular:study --seeds=0,1 --workdir=results/r/a",
        "python -m experiments.report results/r/a --readings=docs/RESULTS.md"]
# ---------------------------------------------------------------- the committed study


def test_committed_results_regenerate_from_their_run_records():
    data = REPO / "docs" / "results" / "readings_cpu"
    committed = (REPO / "docs" / "RESULTS.md").read_text()
    assert report_readings.markdown(data) == committed
    for line in committed.splitlines():
        if line.startswith("!["):
            assert (REPO / "docs" / line.split("](")[1].rstrip(")")).is_file(), line
