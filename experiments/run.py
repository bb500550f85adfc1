"""Runs one experiment: `python -m experiments.run --config=fmnist_ring[:small]`.

Thin on purpose: flags -> config -> `spark_jax.experiment.run`. NAME resolves
to `experiments/configs/NAME.py` (a file path works too); `--config.a.b=v`
overrides are type-checked by ml_collections; `--workdir` defaults to
`results/<name>_<timestamp>`.
"""

from __future__ import annotations

import datetime
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.config_names import named_configs, parse_flags, rewrite_argv

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config: NAME[:ARG] or path.py[:ARG].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default results/<name>_<timestamp>).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Directory with the IDX files (overrides config.data.data_dir "
                                "and $SPARK_JAX_DATA_DIR).")


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # keep the progress bar readable
    config = _CONFIG.value
    if config is None:
        sys.exit(f"error: --config is required; named configs: {', '.join(named_configs())}")
    if _DATA_DIR.value:
        config.data.data_dir = _DATA_DIR.value
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = _WORKDIR.value or f"results/{config.name.replace(':', '_')}_{stamp}"

    from spark_jax.data import DataError
    from spark_jax.experiment import run

    try:
        summary = run(config, workdir)
    except (ValueError, DataError, FileNotFoundError, FileExistsError) as e:
        sys.exit(f"error: {e}")
    print(f"{summary['config_name']}: final aggregated test accuracy {summary['final_test_accuracy']:.4f} "
          f"after {summary['rounds']} rounds; run directory {workdir}")


if __name__ == "__main__":
    sys.argv = rewrite_argv(sys.argv)
    app.run(main, flags_parser=parse_flags)
