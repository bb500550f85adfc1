"""Bad configs and inputs, table-driven: each fails with its one-line message and leaves no run directory.

Most cases call `experiment.run` in-process (the error is raised before
anything is written); a few go through the real CLI (`experiments.run`).
"""

import json
import math
import os
import subprocess
import sys

import ml_collections
import pytest

from experiments.configs import fmnist_ring, tiny
from spark_jax import algorithms, config_options
from spark_jax.runner import experiment
from spark_jax.lab.sweep_grid import set_field
from spark_jax.setting.data import DataError
from tests.conftest import REPO

SPARK = {"algorithm": "spark"}
SPARK_KW = config_options.SPARK_KW

# (overrides applied in order, expected message). Overrides: dotted path -> value.
BAD_CONFIGS = [
    ({"rounds": 0}, "rounds=0 must be an integer >= 1"),
    ({"rounds": None}, "rounds=None must be an integer >= 1"),
    ({"seed": -1}, "seed=-1 must be an integer in [0, 4294967295]"),
    ({"checkpoint_every": -1}, "checkpoint_every=-1 must be an integer >= 0 (0 = no checkpoints)"),
    ({"progress": None}, "progress=None must be True or False"),
    ({"name": ""}, "name='' must be a non-empty string"),
    ({"algorithm": "sparkle"}, "algorithm='sparkle' is not one of 'dfedavg', 'dfedavgm'"),
    ({"data.dataset": "cifar10"}, "data.dataset='cifar10' is not one of 'fashion_mnist', 'mnist'"),
    ({"data.download": None}, "data.download=None must be True or False"),
    ({"data.base_url": "ftp://x/"}, "data.base_url='ftp://x/' must be '' (the public mirrors) or an http(s):// URL"),
    ({"log.tensorboard": None}, "log.tensorboard=None must be True or False"),
    ({"partition.kind": "zipf"}, "partition.kind='zipf' is not one of"),
    ({"partition.num_nodes": 1}, "partition.num_nodes=1 must be an integer >= 2"),
    ({"partition.alpha": math.nan}, "partition.alpha=nan must be a finite number > 0 (smaller alpha"),
    ({"partition.kind": "ntk_dfl_file", "partition.num_nodes": 301},
     "partition.num_nodes=301 but the NTK-DFL partition files have 300 nodes"),
    ({"partition.kind": "iid", "partition.num_nodes": 700, "partition.samples_per_node": 100},
     "partition.num_nodes * partition.samples_per_node = 70000 exceeds the 60000 training samples"),
    ({"partition.file_seed": -2}, "partition.file_seed=-2 must be an integer >= 0"),
    ({"algorithm_kw.compute.matmul_precision": "tf32"},
     "algorithm_kw.compute.matmul_precision='tf32' is not one of 'float32', 'tensorfloat32'"),
    ({"topology.kind": "regular", "topology.degree": 3, "partition.num_nodes": 7},
     "topology: random 3-regular graph on 7 nodes is impossible: num_nodes * degree must be even"),
    ({"topology.kind": "regular", "topology.degree": 8}, "degree must be < num_nodes"),
    ({"topology.kind": "torus"}, "topology: 2-D torus on 8 nodes is impossible"),
    ({"topology.kind": "er", "topology.p": 0.0}, "topology.p=0.0 must be a finite number in (0, 1]"),
    ({"topology.degree": 0}, "topology.degree=0 must be an integer >= 1"),
    ({"topology.mixing": "max"}, "topology.mixing='max' is not one of 'uniform', 'metropolis'"),
    ({"model.name": "resnet"}, "model.name='resnet' is not one of 'mlp', 'cnn'"),
    ({"model.hidden": ()}, "model.hidden=() must be a non-empty tuple of positive widths"),
    ({"model.channels": (8, 0)}, "model.channels=(8, 0) must be a non-empty tuple of integers >= 1"),
    ({"algorithm_kw.lr": 0.0}, "algorithm_kw.lr=0.0 must be a finite number > 0"),
    ({"algorithm_kw.lr": math.inf}, "algorithm_kw.lr=inf must be a finite number > 0"),
    ({"algorithm": "dpsgd", "algorithm_kw.batch_size": 0}, "algorithm_kw.batch_size=0 must be an integer >= 1"),
    ({"algorithm": "dfedavgm", "algorithm_kw.momentum": 1.0},
     "algorithm_kw.momentum=1.0 must be a finite number in [0, 1)"),
    ({"algorithm": "dfedsam", "algorithm_kw.lr_decay": 0.0},
     "algorithm_kw.lr_decay=0.0 must be a finite number in (0, 1]"),
    ({"algorithm_kw.taus": (200, 100)},
     "algorithm_kw.taus=(200, 100) must be positive integers in strictly ascending order"),
    ({"algorithm_kw.taus": (0, 100)},
     "algorithm_kw.taus=(0, 100) must be positive integers in strictly ascending order"),
    ({"algorithm_kw.eta0": -0.01}, "algorithm_kw.eta0=-0.01 must be a finite number > 0"),
    ({"algorithm_kw.evolution.integrator": "rk45"},
     "algorithm_kw.evolution.integrator='rk45' is not one of 'rk4', 'rk4_hermite', 'dopri5', 'imex', 'euler'"),
    ({"algorithm_kw.evolution.rtol": 0.0},
     "algorithm_kw.evolution.rtol=0.0 must be a finite number in (0, 1] (relative tolerance, 'dopri5')"),
    ({"algorithm_kw.evolution.imex.rtol": 0.0},
     "algorithm_kw.evolution.imex.rtol=0.0 must be a finite number in (0, 1] (relative tolerance, 'imex')"),
    ({"algorithm_kw.evolution.imex.atol": math.nan},
     "algorithm_kw.evolution.imex.atol=nan must be a finite number > 0 (absolute tolerance, 'imex')"),
    ({"algorithm_kw.evolution.imex.atol": -1e-5},
     "algorithm_kw.evolution.imex.atol=-1e-05 must be a finite number > 0 (absolute tolerance, 'imex')"),
    ({"algorithm_kw.evolution.imex.max_stride": 0}, "algorithm_kw.evolution.imex.max_stride=0 must be an integer >= 1"),
    ({"algorithm_kw.evolution.imex.split_modes": -1},
     "algorithm_kw.evolution.imex.split_modes=-1 must be an integer in [0, 64] (modes of H treated"),
    ({"algorithm_kw.evolution.imex.split_modes": 65},
     "algorithm_kw.evolution.imex.split_modes=65 must be an integer in [0, 64] (modes of H treated"),
    ({"algorithm_kw.evolution.imex.split_iterations": -2},
     "algorithm_kw.evolution.imex.split_iterations=-2 must be an integer >= 0 (subspace"),
    ({"algorithm_kw.evolution.max_stride": 0}, "algorithm_kw.evolution.max_stride=0 must be an integer >= 1"),
    ({"algorithm_kw.compute.product_columns": -1},
     "algorithm_kw.compute.product_columns=-1 must be an integer >= 0 (0 = no padding)"),
    ({"algorithm_kw.compute.sample_chunk": -1},
     "algorithm_kw.compute.sample_chunk=-1 must be an integer >= 0 (0 = no chunking)"),
    ({"algorithm_kw.compute.node_chunk": 0}, "algorithm_kw.compute.node_chunk=0 must be an integer >= 1"),
    ({"algorithm_kw.evolution.stride": 0}, "algorithm_kw.evolution.stride=0 must be an integer >= 1"),
    ({"algorithm": "ntk_dfl", "model.name": "cnn", "algorithm_kw.compute.kernel": "structured"},
     "algorithm_kw.compute.kernel='structured' needs a model with the structured fast path (model.name='mlp'), "
     "not 'cnn'"),
    ({"algorithm": "spark", "model.name": "cnn", "algorithm_kw.compute.sketch_method": "structured"},
     "algorithm_kw.compute.sketch_method='structured' needs a model with the structured fast path "
     "(model.name='mlp'), not 'cnn'"),
    ({"algorithm_kw.sketch.k": 0}, "algorithm_kw.sketch.k=0 must be an integer >= 1"),
    ({"algorithm_kw.compute.share_first_layer": "always"},
     "algorithm_kw.compute.share_first_layer='always' is not one of 'auto', 'on', 'off'"),
    ({"algorithm_kw.compute.share_bytes": 0.0},
     "algorithm_kw.compute.share_bytes=0.0 must be a finite number > 0 (bytes the shared"),
    ({**SPARK, "algorithm_kw.sketch.k": 2000},
     "algorithm_kw.sketch.k=2000 exceeds the 1010 parameters of sketch group 1 (grouping 'layer'"),
    ({**SPARK, "model.name": "cnn"}, "algorithm_kw.sketch.k=512 exceeds the 80 parameters of sketch group 0"),
    ({"algorithm_kw.compute.direction_chunk": 0}, "algorithm_kw.compute.direction_chunk=0 must be an integer >= 1"),
    ({"algorithm_kw.sketch.update_mode": "exact"}, "algorithm_kw.sketch.update_mode='exact' is not one of"),
    ({"algorithm_kw.distill.lambda_max": 1.5}, "algorithm_kw.distill.lambda_max=1.5 must be a finite number in [0, 1]"),
    ({"algorithm_kw.distill.temperature": 0.0}, "algorithm_kw.distill.temperature=0.0 must be a finite number > 0"),
    ({"algorithm_kw.momentum.beta": 1.0}, "algorithm_kw.momentum.beta=1.0 must be a finite number in [0, 1)"),
    ({"algorithm_kw.stages.boundaries": (0.8, 0.2)}, "must be ordered: 0 <= stage-2 start <= stage-3 start"),
    ({"algorithm_kw.stages.boundaries": (0.5,)}, "algorithm_kw.stages.boundaries must have two entries"),
    ({"algorithm_kw.stages.boundaries": (0.5, 1.5)}, "must be fractions in [0, 1] with unit 'fraction'"),
    ({"algorithm_kw.stages.unit": "round", "algorithm_kw.stages.boundaries": (1.5, 2.0)},
     "must be whole rounds with unit 'round'"),
    ({"algorithm_kw.stages.unit": "epoch"}, "algorithm_kw.stages.unit='epoch' is not one of 'fraction', 'round'"),
    ({"eval.per_node_test_subset": 20000}, "eval.per_node_test_subset=20000 must be an integer in [0, 10000]"),
    ({"eval.node_chunk": 0}, "eval.node_chunk=0 must be an integer >= 1"),
    ({"eval.target_accuracy": 1.5}, "eval.target_accuracy=1.5 must be a finite number in (0, 1]"),
    ({"eval.top_m": 0}, "eval.top_m=0 must be an integer >= 1"),
    ({"parallel.devices": 99}, "parallel.devices=99 must be an integer in [0, "),
    ({"parallel.cpu_devices": -1}, "parallel.cpu_devices=-1 must be an integer >= 0 (0 = one per core"),
]


def _config(overrides, data_dir):
    """tiny with `overrides`, the algorithm first; an NTK algorithm's keyword argument without an
    algorithm runs SPARK (which takes them all)."""
    c = tiny.get_config()
    c.data.data_dir = data_dir
    if "algorithm" not in overrides and any(p.startswith("algorithm_kw.") and p.split(".")[1] in SPARK_KW
                                            for p in overrides):
        overrides = {**SPARK, **overrides}
    for path, value in sorted(overrides.items(), key=lambda o: o[0] != "algorithm"):
        if path == "algorithm" and value not in algorithms.available():
            c.algorithm = value  # what validation sees of a config built by hand
        else:
            set_field(c, path, value)
    return c


@pytest.mark.parametrize("overrides,message", BAD_CONFIGS, ids=[",".join(f"{k}={v!r}" for k, v in o.items())
                                                               for o, _ in BAD_CONFIGS])
def test_bad_config_fails_before_writing(overrides, message, real_data_dir, tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(experiment.ConfigError) as e:
        experiment.run(_config(overrides, real_data_dir), workdir)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not workdir.exists()


def test_wrongly_typed_field_of_a_config_file(real_data_dir, tmp_path):
    c = ml_collections.ConfigDict(_config({}, real_data_dir).to_dict(), type_safe=False)
    c.rounds, c.topology.dynamic = 3, "yes"
    with pytest.raises(experiment.ConfigError, match="topology.dynamic='yes' must be True or False"):
        experiment.run(c, tmp_path / "run")
    del c.eval["top_m"]
    c.topology.dynamic = True
    with pytest.raises(experiment.ConfigError, match="config is missing a field .*top_m"):
        experiment.run(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bad_data_inputs_leave_no_directory(real_data_dir, tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        experiment.run(_config({"data.data_dir": "/nonexistent/spark_jax_data"}, ""), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="seed7"):
        experiment.run(_config({"partition.kind": "ntk_dfl_file", "partition.file_seed": 7}, real_data_dir),
                       tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------- through the CLI


def run_cli(args, data_dir):
    env = dict(os.environ, SPARK_JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _assert_one_line_error(proc, message):
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--config.checkpoint_every=-1"], "checkpoint_every=-1 must be an integer >= 0"),
    (["--config.algorithm_kw.taus=(100,100)", "--config.algorithm=ntk_dfl"], "strictly ascending"),
    # the layout before 2026-12-01: one line naming the replacement
    (["--config.ntk.taus=(100,200)"], "--config.ntk.taus is now --config.algorithm_kw.taus"),
    (["--config.sketch.method=forward"], "--config.sketch.method is now --config.algorithm_kw.compute.sketch_method"),
    (["--config.dfedavg.lr=0.05"], "--config.dfedavg.lr is now --config.algorithm_kw.lr (with algorithm=dfedavg)"),
    (["--config.algorithm=sparkle"], "unknown algorithm 'sparkle'"),
    (["--config.algorithm_kw.sketch.k=8"], "(--config.algorithm=NAME switches it"),  # tiny runs DFedAvg: no sketch
    (["--resume"], "--resume needs --workdir"),
])
def test_cli_bad_inputs(args, message, real_data_dir, tmp_path):
    workdir = tmp_path / "run"
    with_workdir = [] if "--resume" in args else [f"--workdir={workdir}"]
    _assert_one_line_error(run_cli(["--config=tiny", *args, *with_workdir], real_data_dir), message)
    assert not workdir.exists()


@pytest.mark.slow  # 5-15 s (2026-12-02): in the full suite, not the fast loop
def test_cli_existing_workdir_is_left_intact(real_data_dir, tmp_path):
    """A non-empty workdir without --resume, or --resume with another config: errors, nothing touched."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"config": _config({}, "").to_dict()}))
    (workdir / "metrics.jsonl").write_text('{"round": 1}\n')
    before = {p.name: p.read_bytes() for p in workdir.iterdir()}
    _assert_one_line_error(run_cli(["--config=tiny", f"--workdir={workdir}"], real_data_dir),
                           "already exists and is not empty; pass --resume")
    _assert_one_line_error(run_cli(["--config=tiny", "--config.rounds=3", f"--workdir={workdir}", "--resume"],
                                   real_data_dir), "cannot resume")
    assert {p.name: p.read_bytes() for p in workdir.iterdir()} == before
    # In-process: the message names the differing field and both values.
    with pytest.raises(experiment.ConfigError, match=r"in 1 field\(s\) \(rounds: 2 -> 3\)"):
        experiment.run(_config({"rounds": 3}, real_data_dir), workdir, resume=True)
    (workdir / "config.json").unlink()
    with pytest.raises(FileExistsError, match="has no config.json"):
        experiment.run(_config({}, real_data_dir), workdir, resume=True)


def test_option_lists_are_defined_once():
    """Each option list lives in spark_jax.options; the modules that implement an option use that very tuple."""
    from spark_jax import ntk, options, parallel
    from spark_jax.algorithms import schedules
    from spark_jax.ntk import sketch, sketch_share
    from spark_jax.algorithms import base
    assert ntk.INTEGRATORS is options.INTEGRATORS
    assert ntk.CRITERIA is options.TAU_CRITERIA
    assert parallel.NODE_BATCHING is options.NODE_BATCHING
    assert sketch_share.SHARE_MODES is options.SHARE_MODES
    assert sketch.GROUPINGS is options.SKETCH_GROUPINGS
    assert schedules.RAMPS is options.RAMPS
    assert base.MATMUL_PRECISIONS is options.MATMUL_PRECISIONS


def test_options_and_the_config_adapter_need_no_jax():
    """Checking a config's NTK options imports no JAX (the options, checks and adapter are plain Python).

    The config itself is built here (its keyword arguments' defaults come from the algorithm registry,
    which imports JAX) and handed over as JSON."""
    config_json = fmnist_ring.get_config().to_json()
    code = ("import json, sys, ml_collections; from spark_jax import config_options; "
            "config_options.check_spark(ml_collections.ConfigDict(json.loads(sys.stdin.read()))); "
            "print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         input=config_json)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_a_model_registered_in_models_is_a_valid_model_name(monkeypatch):
    """model.name is checked against the MODELS registry itself: adding a model touches models.py only."""
    from spark_jax import algorithms
    from spark_jax.runner.validation import validate_config
    from spark_jax.setting import models

    c = tiny.get_config()
    c.model.name = "wide_mlp"
    with pytest.raises(experiment.ConfigError, match=r"model.name='wide_mlp' is not one of 'mlp', 'cnn'"):
        validate_config(c, algorithms.available())
    monkeypatch.setitem(models.MODELS, "wide_mlp", models.ModelSpec(models.MODELS["mlp"].build, structured=True))
    validate_config(c, algorithms.available())
