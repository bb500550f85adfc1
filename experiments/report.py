"""Tables and plots from run directories: `python -m experiments.report DIR`.

  python -m experiments.report results/sweep_x [--target=0.85] [--out=results/sweep_x/report]
      writes report.md, report.csv, accuracy_vs_round.png, accuracy_vs_bytes.png;
      seconds for hundreds of runs.

Thin on purpose: the logic is in `spark_jax.report_tables`. DIR is any tree
holding run directories (config.json + metrics.jsonl); runs are grouped into
settings by the config keys that differ between them, seeds aggregated.
`--target` defaults to the runs' common config.eval.target_accuracy (else
0.85); rounds/bytes to target are recomputed from metrics.jsonl.
"""

from __future__ import annotations

import sys

from absl import app, flags

from spark_jax import report_tables

_TARGET = flags.DEFINE_float("target", None, "Target aggregated test accuracy for rounds/bytes to target.")
_OUT = flags.DEFINE_string("out", None, "Output directory (default DIR/report).")


def main(argv):
    if len(argv) != 2:
        sys.exit("usage: python -m experiments.report DIR [--target=0.85] [--out=DIR/report]")
    try:
        report = report_tables.write_report(argv[1], _OUT.value, _TARGET.value)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(report_tables.markdown_table(report["rows"]))
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} unfinished run(s)")
    print(f"target {report['target']:g}; wrote {', '.join(str(p) for p in report['files'].values())}")


if __name__ == "__main__":
    app.run(main)
