"""The method comparison view of experiments.report, on a hand-written fake sweep (no training)."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from spark_jax.lab import report_compare, report_tables
from tests.conftest import REPO

TARGET = 0.8
# (method, alpha, topology) -> per seed: aggregated test accuracy per round. dfedavg is written first
# on disk and sorts first alphabetically; the table must still put spark first (COMPARE_METHODS order).
ACC = {
    ("dfedavg", 0.1, "regular"): {0: [0.40, 0.50, 0.60, 0.70], 1: [0.45, 0.55, 0.65, 0.72]},  # never reaches
    ("dfedavg", 0.5, "ring"): {0: [0.70, 0.85, 0.90, 0.91], 1: [0.70, 0.80, 0.88, 0.93]},  # rounds 2, 2
    ("spark", 0.1, "regular"): {0: [0.50, 0.70, 0.82, 0.86], 1: [0.50, 0.60, 0.75, 0.79]},  # round 3; 1/2
    ("spark", 0.5, "ring"): {0: [0.60, 0.80, 0.85, 0.88], 1: [0.60, 0.79, 0.84, 0.90]},  # rounds 2, 3
}
NODE_OFFSET = {"dfedavg": 0.2, "spark": 0.1}  # node_accuracy_mean = test_accuracy - offset
BYTES_PER_ROUND = {"dfedavg": 4_000_000, "spark": 1_000_000}
COLUMNS = ["alpha=0.1, regular", "alpha=0.5, ring"]


def write_fake_sweep(root):
    runs = []
    for (method, alpha, topology), seeds in ACC.items():
        setting = f"{method},alpha={alpha},{topology}"
        for seed, accs in seeds.items():
            run = root / setting / f"seed{seed}"
            run.mkdir(parents=True)
            config = {"algorithm": method, "seed": seed, "rounds": 4, "data": {"data_dir": f"/d/{seed}"},
                      "partition": {"alpha": alpha, "kind": "ntk_dfl", "num_nodes": 20},
                      "topology": {"kind": topology, "degree": 5}, "eval": {"target_accuracy": 0.85}}
            (run / "config.json").write_text(json.dumps({"config": config, "environment": {}}))
            with open(run / "metrics.jsonl", "w") as f:
                for r, acc in enumerate(accs, start=1):
                    record = {"round": r, "test_accuracy": acc, "node_accuracy_mean": acc - NODE_OFFSET[method],
                              "bytes_cumulative": r * BYTES_PER_ROUND[method], "jacobian_bytes": 0}
                    f.write(json.dumps(record) + "\n")
            (run / "summary.json").write_text(json.dumps({"final_test_accuracy": accs[-1]}))
            # Heat maps: alpha=0.1 has one for both seeds (seed 0 must be chosen), alpha=0.5 only for seed 1.
            if (alpha, seed) != (0.5, 0):
                (run / report_compare.HEATMAP).write_bytes(b"\x89PNG " + f"{method} {alpha} seed{seed}".encode())
            runs.append({"run_dir": f"{setting}/seed{seed}", "setting": setting})
    (root / "sweep.json").write_text(json.dumps({"runs": runs}))


def expected(method, column):
    key = [k for k in ACC if k[0] == method][COLUMNS.index(column)]
    curves = np.array(list(ACC[key].values()))
    final, node = curves[:, -1], curves[:, -1] - NODE_OFFSET[method]
    hits = [int(np.argmax(c >= TARGET)) + 1 for c in curves if (c >= TARGET).any()]
    return final, node, hits


def fmt(values):
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


@pytest.fixture
def report(tmp_path):
    root = tmp_path / "sweep"
    write_fake_sweep(root)
    return root, report_tables.write_report(root, tmp_path / "out", TARGET, sections=[report_compare.section])


def test_comparison_rows_and_cells(report):
    _, rep = report
    (section,) = rep["sections"]
    comp = section["comparison"]
    assert comp.methods == ["spark", "dfedavg"] and comp.columns == COLUMNS
    assert comp.keys == ["partition.alpha", "topology.kind"]
    rows = {(r["method"], r["setting"]): r for r in section["rows"]}
    assert len(rows) == 4
    for (method, column), row in rows.items():
        final, node, hits = expected(method, column)
        assert row["n"] == 2 and row["seeds"] == "0 1"
        np.testing.assert_allclose([row["final_accuracy_mean"], row["final_accuracy_std"]],
                                   [final.mean(), final.std(ddof=1)])
        np.testing.assert_allclose([row["node_accuracy_mean"], row["node_accuracy_std"]],
                                   [node.mean(), node.std(ddof=1)])
        assert row["reached"] == len(hits)
        if hits:
            np.testing.assert_allclose(row["rounds_to_target_mean"], np.mean(hits))
            np.testing.assert_allclose(row["bytes_to_target_mean"], np.mean(hits) * BYTES_PER_ROUND[method])
        else:
            assert row["rounds_to_target_mean"] is None and row["bytes_to_target_mean"] is None
    # Known numbers, independently of the helpers above.
    assert rows["spark", COLUMNS[0]]["final_accuracy_mean"] == pytest.approx(0.825)
    assert rows["spark", COLUMNS[0]]["final_accuracy_std"] == pytest.approx(0.07 / np.sqrt(2))
    assert rows["spark", COLUMNS[1]]["rounds_to_target_mean"] == 2.5
    assert rows["dfedavg", COLUMNS[1]]["bytes_to_target_mean"] == 8_000_000


def test_markdown_tables_cells_order_and_bold(report):
    _, rep = report
    tables = list(rep["sections"][0]["tables"].values())
    final, node, rounds, bytes_ = (t.splitlines() for t in tables)
    assert final[0] == "| method | alpha=0.1, regular | alpha=0.5, ring |"
    assert [line.split(" | ")[0] for line in final[2:]] == ["| spark", "| dfedavg"]
    # Aggregated accuracy: spark best at alpha=0.1, dfedavg best at alpha=0.5.
    assert final[2] == f"| spark | **{fmt([0.86, 0.79])}** | {fmt([0.88, 0.90])} |"
    assert final[3] == f"| dfedavg | {fmt([0.70, 0.72])} | **{fmt([0.91, 0.93])}** |"
    # Per-node accuracy: spark best in both columns.
    assert node[2] == f"| spark | **{fmt([0.76, 0.69])}** | **{fmt([0.78, 0.80])}** |"
    assert node[3] == f"| dfedavg | {fmt([0.50, 0.52])} | {fmt([0.71, 0.73])} |"
    assert rounds[2:] == ["| spark | 3.0 (1/2) | 2.5 (2/2) |", "| dfedavg | – (0/2) | 2.0 (2/2) |"]
    assert bytes_[2:] == ["| spark | 3.00 MB | 2.50 MB |", "| dfedavg | – | 8.00 MB |"]


def test_files_csv_heatmaps_and_markdown(report):
    root, rep = report
    out = rep["files"]["md"].parent
    for png in ("compare_vs_round.png", "compare_vs_bytes.png", "accuracy_vs_round.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, png
    # Heat maps: the seed-0 copy for alpha=0.1 (spark comes first), the only one (seed 1) for alpha=0.5.
    assert (out / "partition_alpha=0.1.png").read_bytes() == b"\x89PNG spark 0.1 seed0"
    assert (out / "partition_alpha=0.5.png").read_bytes() == b"\x89PNG spark 0.5 seed1"
    assert len(list(out.glob("partition_*.png"))) == 2
    with open(out / "compare.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["method"], r["setting"]) for r in table] == [(m, c) for m in ("spark", "dfedavg") for c in COLUMNS]
    assert table[0]["partition.alpha"] == "0.1" and table[0]["topology.kind"] == "regular"
    assert float(table[0]["final_accuracy_mean"]) == pytest.approx(0.825) and table[2]["rounds_to_target_mean"] == ""
    md = (out / "report.md").read_text()
    for text in ("## Method comparison", "](compare_vs_round.png)", "](compare_vs_bytes.png)",
                 "](partition_alpha=0.1.png)", "](partition_alpha=0.5.png)", "from spark,alpha=0.5,ring/seed1",
                 f"| spark | **{fmt([0.86, 0.79])}** |", "## Per setting", "| spark,alpha=0.1,regular | 0 1 (2) |"):
        assert text in md, text
    assert md.index("## Method comparison") < md.index("## Per setting")


def test_applies_only_when_algorithm_and_another_key_vary(tmp_path):
    write_fake_sweep(tmp_path)
    runs = [report_tables.load_run(p) for p in report_tables.find_run_dirs(tmp_path)]
    settings = report_tables.group_settings(runs, tmp_path)
    assert report_compare.applies(settings)
    only_methods = report_tables.group_settings([r for r in runs if r.config["partition.alpha"] == 0.1], tmp_path)
    assert not report_compare.applies(only_methods)  # only `algorithm` varies
    one_method = report_tables.group_settings([r for r in runs if r.config["algorithm"] == "spark"], tmp_path)
    assert not report_compare.applies(one_method)  # no `algorithm` among the varying keys
    assert report_compare.section(tmp_path, only_methods, tmp_path / "o", TARGET) is None
    forced = report_compare.section(tmp_path, only_methods, tmp_path / "o", TARGET, force=True)
    assert forced["comparison"].columns == ["all runs"] and forced["comparison"].methods == ["spark", "dfedavg"]
    assert report_compare.section(tmp_path, settings, tmp_path / "o", TARGET, force=False) is None


def test_column_labels():
    names = report_compare.short_names(["partition.alpha", "algorithm_kw.lr", "algorithm_kw.distill.lr"])
    assert names == {"partition.alpha": "alpha", "algorithm_kw.lr": "algorithm_kw.lr",
                     "algorithm_kw.distill.lr": "algorithm_kw.distill.lr"}
    assert report_compare.column_label({"partition.alpha": 0.1, "algorithm_kw.lr": 0.05}, names) == \
        "alpha=0.1, algorithm_kw.lr=0.05"


@pytest.mark.slow  # 5-15 s (2026-12-02): in the full suite, not the fast loop
def test_cli_prints_the_comparison(tmp_path):
    write_fake_sweep(tmp_path / "sweep")
    proc = subprocess.run([sys.executable, "-m", "experiments.report", str(tmp_path / "sweep"),
                           f"--target={TARGET}", f"--out={tmp_path / 'out'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| method | alpha=0.1, regular | alpha=0.5, ring |" in proc.stdout
    assert f"| spark | **{fmt([0.86, 0.79])}** | {fmt([0.88, 0.90])} |" in proc.stdout
    assert "| spark | 3.0 (1/2) | 2.5 (2/2) |" in proc.stdout
    assert (tmp_path / "out" / "compare_vs_bytes.png").stat().st_size > 0


def test_keyword_arguments_of_different_algorithms_make_no_columns(tmp_path):
    """Each baseline has its own defaults (dfedavg lr 0.1, dfedavgm 0.01): across algorithms they are told
    apart by `algorithm`, so the columns are the setting (alpha) alone; within one algorithm a keyword
    argument that differs still splits the settings."""
    from spark_jax.runner.run_io import flatten

    def run(name, algorithm, alpha, **kw):
        defaults = {"dfedavg": {"lr": 0.1, "batch_size": 25, "local_epochs": 20},
                    "dfedavgm": {"lr": 0.01, "momentum": 0.9, "batch_size": 50, "local_epochs": 20}}[algorithm]
        config = flatten({"algorithm": algorithm, "partition": {"alpha": alpha}, "seed": 0,
                          "algorithm_kw": {**defaults, **kw}})
        return report_tables.Run(tmp_path / name, config, [], True)

    runs = [run(f"{a}{alpha}", a, alpha) for a in ("dfedavg", "dfedavgm") for alpha in (0.1, 0.5)]
    settings = report_tables.group_settings(runs, tmp_path)
    assert sorted(s.label for s in settings) == [f"algorithm={a},partition.alpha={alpha}"
                                                 for a in ("dfedavg", "dfedavgm") for alpha in (0.1, 0.5)]
    assert report_compare.build(settings).columns == ["alpha=0.1", "alpha=0.5"]
    settings = report_tables.group_settings(runs + [run("slow", "dfedavg", 0.1, lr=0.05)], tmp_path)
    assert "algorithm=dfedavg,lr=0.05,partition.alpha=0.1" in [s.label for s in settings]
