"""`parallel.split_cpu`: the CPU as one XLA device per core (config.parallel.cpu_devices), set once per
process before JAX starts, the environment's explicit choice winning."""

import json
import os
import subprocess
import sys

import pytest

from spark_jax import parallel
from tests.conftest import REPO


@pytest.mark.parametrize("cores, want", [(1, 1), (2, 2), (5, 5), (8, 8), (64, 8)])
def test_auto_is_one_device_per_core_at_most_eight(cores, want):
    assert parallel.cpu_device_count(0, cores=cores) == want
    assert parallel.cpu_device_count(3, cores=cores) == 3  # an explicit count is taken as given


@pytest.mark.parametrize("bad", [-1, True, 1.5, "2", None])
def test_bad_counts_are_one_line_errors(bad):
    with pytest.raises(ValueError, match=r"parallel.cpu_devices=.* must be an integer >= 0"):
        parallel.cpu_device_count(bad)


_SCRIPT = """
import json, jax
from spark_jax import parallel
out = {"first": parallel.split_cpu(%(first)d), "again": parallel.split_cpu(%(first)d)}
try:
    parallel.split_cpu(%(other)d)
except ValueError as e:
    out["before_start"] = str(e)
out["devices"] = jax.device_count()
try:
    parallel.split_cpu(%(other)d)
except ValueError as e:
    out["after_start"] = str(e)
print(json.dumps(out))
"""


def _fresh_process(first: int, other: int, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT % {"first": first, "other": other}], cwd=REPO,
                          env=dict(environ, JAX_PLATFORMS="cpu", **env), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_split_once_per_process_before_jax_starts():
    got = _fresh_process(3, 2)
    assert got["first"] == got["again"] == 3 and got["devices"] == 3
    for key in ("before_start", "after_start"):  # a second, different count: refused, the first kept
        assert got[key] == ("parallel.cpu_devices=2 asks for 2 CPU devices, but this process already has 3: "
                            "the CPU is split once per process, before anything uses a device"), got


def test_the_environments_explicit_count_wins():
    got = _fresh_process(3, 2, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    assert got["first"] is None and got["devices"] == 4 and "before_start" not in got and "after_start" not in got
