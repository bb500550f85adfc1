"""Tables and plots from run directories: `python -m experiments.report DIR`.

  python -m experiments.report results/sweep_x [--target=0.85] [--out=results/sweep_x/report] [--compare]
      writes report.md, report.csv, accuracy_vs_round.png, accuracy_vs_bytes.png;
      seconds for hundreds of runs.
  python -m experiments.report results/readings_cpu --readings=docs/RESULTS.md
      the study of the SPARK readings (sweep presets spark_readings*): RESULTS.md, its figures and a
      copy of the run records (spark_jax/lab/report_readings.py).
  python -m experiments.report results/compare_cpu
      a method comparison (sweep preset compare_fmnist) also gets compare.csv, compare_vs_round.png,
      compare_vs_bytes.png and partition_*.png, and its tables in report.md.

Thin on purpose: the logic is in `spark_jax.lab.report_tables` (per-setting table)
and `spark_jax.lab.report_compare` (methods x settings). DIR is any tree holding
run directories (config.json + metrics.jsonl); runs are grouped into settings
by the config keys that differ between them, seeds aggregated. The comparison
view is added when those keys include `algorithm` and another key, or with
--compare (--nocompare turns it off). `--target` defaults to the runs' common
config.eval.target_accuracy (else 0.85); rounds/bytes to target are
recomputed from metrics.jsonl.
"""

from __future__ import annotations

import functools
import sys

from absl import app, flags

from spark_jax.lab import report_compare, report_readings, report_tables
from spark_jax.runner.run_io import os_error_line

_TARGET = flags.DEFINE_float("target", None, "Target aggregated test accuracy for rounds/bytes to target.")
_OUT = flags.DEFINE_string("out", None, "Output directory (default DIR/report).")
_READINGS = flags.DEFINE_string("readings", None, "Write the study of the SPARK readings (sweep presets "
                                "spark_readings*) to this Markdown file, e.g. docs/RESULTS.md, with its data and "
                                "figures in results/ beside it (spark_jax/lab/report_readings.py).")
_COMPARE = flags.DEFINE_bool("compare", None, "Methods x settings comparison tables and figures "
                             "(default: when `algorithm` and another config key vary).")


def main(argv):
    if len(argv) != 2:
        sys.exit("usage: python -m experiments.report DIR [--target=0.85] [--out=DIR/report] [--compare]")
    if _READINGS.value:
        try:
            written = report_readings.write_results(argv[1], _READINGS.value)
        except ValueError as e:
            sys.exit(f"error: {e}")
        except OSError as e:
            sys.exit(f"error: {os_error_line(e)}")
        print(f"wrote {written['markdown']}, {len(written['figures'])} figures; run records in {written['data']}")
        return
    compare = functools.partial(report_compare.section, force=_COMPARE.value)
    try:
        report = report_tables.write_report(argv[1], _OUT.value, _TARGET.value, sections=[compare])
    except ValueError as e:
        sys.exit(f"error: {e}")
    except OSError as e:  # e.g. a read-only or full --out directory: the path and the cause
        sys.exit(f"error: {os_error_line(e)}")
    print(report_tables.markdown_table(report["rows"]))
    for section in report["sections"]:
        print("\n" + section["text"])
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} unfinished run(s)")
    if report["corrupt"]:
        print(f"skipped {len(report['corrupt'])} corrupt run(s):")
        for run in report["corrupt"]:
            print(f"  {run.problem}")
    print(f"target {report['target']:g}; wrote {', '.join(str(p) for p in report['files'].values())}")


if __name__ == "__main__":
    app.run(main)
