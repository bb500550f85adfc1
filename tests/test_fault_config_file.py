"""Family 6 of issue 16: a bad config file is one line naming the file and line, never a traceback.

The table calls the loader (`experiments.config_files.load`) in-process and
asserts the exact message; two cases go through the real CLIs
(`experiments.run`, `experiments.sweep`): `error: config file ...`, exit 1,
no run or sweep directory.
"""

import textwrap

import pytest

from experiments import config_files
from tests.faults import assert_one_line_error, run_cli

TINY = "from experiments.configs import tiny\n"

# (case, file source, ':ARG' or '', expected message with {p} = the file's path)
CASES = [
    ("syntax error", "def get_config(:\n    pass\n", "", "{p}:1: SyntaxError: invalid syntax"),
    ("indentation", "def get_config():\nreturn 1\n", "", "{p}:2: IndentationError: expected an indented block "
     "after function definition on line 1"),
    ("import error", "import no_such_module_xyz\n\ndef get_config():\n    return None\n", "",
     "{p}:1: ModuleNotFoundError: No module named 'no_such_module_xyz' (loading the file)"),
    ("exception at load", "X = 1 / 0\n", "", "{p}:1: ZeroDivisionError: division by zero (loading the file)"),
    ("get_config raises", TINY + "def get_config():\n    c = tiny.get_config()\n    return {}['k']\n", "",
     "{p}:4: KeyError: 'k' (in get_config())"),
    ("raises in a helper of the file", TINY + "def helper(a):\n    raise ValueError(f'bad {a}\\nsecond line')\n\n"
     "def get_config(arg):\n    return helper(arg)\n", ":x",
     "{p}:3: ValueError: bad x second line (in get_config('x'))"),
    ("raises in a module it calls", TINY + "def get_config(arg):\n    return tiny.get_config(arg)\n", ":huge",
     "{p}:3: ValueError: tiny: unknown argument 'huge'; known: 'small' (in get_config('huge'))"),
    ("wrong type set", TINY + "def get_config():\n    c = tiny.get_config()\n    c.rounds = 'x'\n    return c\n",
     "", "{p}:4: TypeError: Could not override field 'rounds' (reference). x is of original type <class 'str'> "
     "and cannot be casted to type <class 'int'> (in get_config())"),
    (":arg not taken", TINY + "def get_config():\n    return tiny.get_config()\n", ":small",
     "{p}:2: get_config() does not take the argument 'small' (from {p}:small)"),
    ("arg needed", TINY + "def get_config(arg):\n    return tiny.get_config(arg)\n", "",
     "{p}:2: get_config(arg) does not take no argument; pass one as {p}:ARG"),
    ("no get_config", "def get_conf():\n    return None\n", "",
     "{p}: defines no get_config() function (a config file defines get_config([arg]) returning an "
     "ml_collections.ConfigDict; see experiments/configs/tiny.py)"),
    ("get_config not callable", "get_config = 3\n", "", "{p}: defines no get_config() function"),
    ("returns None", TINY + "def get_config():\n    c = tiny.get_config()\n", "",
     "{p}:2: get_config() returned None (a missing return?); it must return the ml_collections.ConfigDict of "
     "experiments/configs/base.py, with changes"),
    ("returns a dict", "def get_config():\n    return {'rounds': 2}\n", "",
     "{p}:1: get_config() returned a dict, not an ml_collections.ConfigDict; start from "
     "experiments.configs.base.base_config()"),
    ("unknown field", TINY + "def get_config():\n    c = tiny.get_config()\n    c.roundz = 3  # typo\n    return c\n",
     "", "{p}:4: unknown config field(s) roundz (not in the schema, experiments/configs/base.py)"),
    ("unknown nested fields", TINY + "import ml_collections\n\ndef get_config():\n    c = tiny.get_config()\n"
     "    c.model.depth = 3\n    c.extra = ml_collections.ConfigDict({'a': 1})\n    return c\n", "",
     "{p}:7: unknown config field(s) extra, model.depth (not in the schema, experiments/configs/base.py)"),
    ("missing field", "import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict("
     "{'name': 'x'})\n", "", "{p}:3: get_config() lacks config field(s) algorithm, algorithm_kw, checkpoint_every, "
     "data, eval, log and "),
    ("keyword arguments of another algorithm", TINY + "def get_config():\n    c = tiny.get_config()\n"
     "    c.algorithm = 'spark'  # without its keyword arguments\n    return c\n", "",
     "{p}:4: config.algorithm_kw does not hold the keyword arguments of algorithm 'spark' (unknown: batch_size, "
     "local_epochs, lr; missing: compute, decay, distill, eta0, evolution, momentum and 4 more); start from "
     "base.base_config('spark'), or switch with spark_jax.algorithms.with_algorithm"),
    ("the layout before 2026-12-01", TINY + "def get_config():\n    c = tiny.get_config()\n    c.ntk.taus = (10,)\n"
     "    return c\n", "", "{p}:4: AttributeError: \"'ntk'\" (in get_config()); config.ntk is now part of "
     "config.algorithm_kw, the algorithm's keyword arguments"),
    ("unknown algorithm", TINY + "def get_config():\n    c = tiny.get_config()\n    c.algorithm = 'sparkle'\n"
     "    return c\n", "", "{p}:4: unknown algorithm 'sparkle'; available: dfedavg, dfedavgm, dfedsam, dispfl, "),
    ("empty file", "", "", "{p}: defines no get_config() function"),
    ("null byte", "x = 1\0\n", "", "{p}: SyntaxError: source code string cannot contain null bytes"),
]


@pytest.mark.parametrize("case,source,arg,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_config_file_is_one_line_naming_file_and_line(tmp_path, case, source, arg, expected):
    path = tmp_path / "my_config.py"
    path.write_text(source)
    with pytest.raises(config_files.ConfigFileError) as e:
        config_files.load(f"{path}{arg}")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(expected.format(p=path)), (case, message)


def test_unreadable_config_file(tmp_path):
    with pytest.raises(config_files.ConfigFileError, match=r"cannot read the config file \(Is a directory\)"):
        config_files.load(f"{tmp_path}:x")


def test_a_good_config_file_loads_locked(tmp_path):
    path = tmp_path / "good.py"
    path.write_text(textwrap.dedent("""\
        from experiments.configs import tiny

        def get_config(arg="2"):
            c = tiny.get_config()
            c.rounds = int(arg)
            return c
        """))
    config = config_files.load(f"{path}:5")
    assert config.rounds == 5 and config_files.load(str(path)).rounds == 2
    with pytest.raises(AttributeError):
        config.no_such_field = 1  # locked: overrides cannot add fields


@pytest.mark.slow  # 5-15 s (2026-12-02): in the full suite, not the fast loop
def test_cli_run_and_sweep_refuse_a_bad_config_file(real_data_dir, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(TINY + "def get_config():\n    c = tiny.get_config()\n    c.bogus = 1\n    return c\n")
    workdir = tmp_path / "run"
    proc = run_cli("run", [f"--config={bad}", f"--workdir={workdir}"], real_data_dir, timeout=120)
    assert_one_line_error(proc, f"error: config file {bad}:4: unknown config field(s) bogus (not in the schema")
    assert not workdir.exists()
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def get_config()\n    return None\n")
    proc = run_cli("sweep", [f"--config={syntax}:a", "--sweep=config.seed=1,2", f"--workdir={tmp_path / 'sw'}"],
                   real_data_dir, timeout=120)
    assert_one_line_error(proc, f"error: config file {syntax}:1: SyntaxError: expected ':'")
    assert not (tmp_path / "sw").exists()
