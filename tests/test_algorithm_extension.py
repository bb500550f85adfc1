"""A new algorithm is one file plus one `register` line (issue 15): its keyword arguments come with it.

The file below (written to a temporary directory, outside the package) is a whole algorithm: its
factory, its `check_config` and its default keyword arguments (`CONFIG`). One `algorithms.register`
line, run before the command line is parsed, is all the rest: `--config.algorithm=nesterov` selects
it, `--config.algorithm_kw.lr=...` overrides it, validation runs its check, a run records its keyword
arguments and the command runs it end to end.
"""

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

ALGORITHM_FILE = '''
"""DFedAvg with Nesterov momentum: local SGD (optax.sgd, nesterov=True), then mixing."""
import optax

from spark_jax import checks
from spark_jax.algorithms.dfedavg import check_local_training, make_local_training

CONFIG = dict(lr=0.05, momentum=0.9, batch_size=10, local_epochs=1)


def make(config, model, mesh=None):
    c = config.algorithm_kw
    return make_local_training("nesterov", config, model, mesh,
                               lambda r, dtype: optax.sgd(c.lr, c.momentum, nesterov=True))


def check_config(config):
    check_local_training(config)
    checks.number(config.algorithm_kw.momentum, "algorithm_kw.momentum", 0.0, 1.0, hi_open=True)
'''

RUN = textwrap.dedent('''
    import runpy, sys
    sys.path.insert(0, {plugin!r})
    from spark_jax import algorithms
    import nesterov
    algorithms.register("nesterov", nesterov.make, nesterov.check_config, nesterov.CONFIG)  # the one line
    sys.argv = ["experiments.run"] + {args!r}
    runpy.run_module("experiments.run", run_name="__main__")  # the command line, as `python -m` runs it
''')


def _run(tmp_path, real_data_dir, *args):
    plugin = tmp_path / "plugin"
    plugin.mkdir(exist_ok=True)
    (plugin / "nesterov.py").write_text(ALGORITHM_FILE)
    code = RUN.format(plugin=str(plugin), args=["--config=tiny", "--config.algorithm=nesterov",
                                                 f"--data_dir={real_data_dir}", *args])
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # 5-15 s (2026-12-02): in the full suite, not the fast loop
def test_a_one_file_algorithm_runs_from_the_command_line(tmp_path, real_data_dir):
    workdir = tmp_path / "run"
    out = _run(tmp_path, real_data_dir, "--config.algorithm_kw.lr=0.02", f"--workdir={workdir}")
    assert out.returncode == 0, out.stderr[-2000:]
    config = json.loads((workdir / "config.json").read_text())["config"]
    assert config["algorithm"] == "nesterov"
    assert config["algorithm_kw"] == {"lr": 0.02, "momentum": 0.9, "batch_size": 10, "local_epochs": 1}
    rounds = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds if "test_accuracy" in r][-1] == 2
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rounds if "test_accuracy" in r)


@pytest.mark.parametrize("override,message", [
    ("--config.algorithm_kw.momentum=1.5", "algorithm_kw.momentum=1.5 must be"),
    ("--config.algorithm_kw.batch_size=0", "algorithm_kw.batch_size=0 must be"),
])
def test_its_check_runs_on_its_keyword_arguments(tmp_path, real_data_dir, override, message):
    out = _run(tmp_path, real_data_dir, override, f"--workdir={tmp_path / 'run'}")
    assert out.returncode == 1
    assert message in out.stderr.strip().splitlines()[-1], out.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_an_unknown_keyword_argument_is_refused(tmp_path, real_data_dir):
    out = _run(tmp_path, real_data_dir, "--config.algorithm_kw.nesterov_lr=0.1", f"--workdir={tmp_path / 'run'}")
    assert out.returncode != 0
    assert "nesterov_lr" in out.stderr
    assert not (tmp_path / "run").exists()
