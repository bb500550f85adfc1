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


def _bare_environ() -> dict:
    """This environment without a CPU device count or XLA flags (the suite's own, or the user's)."""
    return {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}


def _fresh_process(first: int, other: int, **env) -> dict:
    environ = _bare_environ()
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


# ------------------------------------------------------------ devices waiting for each other at collectives

def test_split_raises_the_collective_termination_timeout_and_keeps_the_users():
    flag = parallel.COLLECTIVE_TERMINATE_FLAG
    env = {}
    parallel.allow_slow_collectives(env)
    assert env["XLA_FLAGS"] == f"{flag}=3600"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}  # the environment's count wins, flag added
    assert parallel.split_cpu(2, environ=env) is None
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=4 {flag}=3600"
    env = {"XLA_FLAGS": f"{flag}=7"}  # the user's own value stays
    parallel.allow_slow_collectives(env)
    assert env["XLA_FLAGS"] == f"{flag}=7"
    env = {}
    with pytest.raises(ValueError):  # bad input changes nothing
        parallel.split_cpu(-1, environ=env)
    assert env == {}


@pytest.mark.parametrize("platforms, plugin, added", [
    ("", False, True), ("cpu", False, True), ("cpu", True, True), ("", True, False), ("cuda", False, False),
    ("cuda,cpu", True, False)])
def test_the_timeout_is_set_only_where_jax_computes_on_the_cpu(platforms, plugin, added):
    """A GPU/TPU plugin installed (JAX then picks the accelerator) or JAX_PLATFORMS naming another platform
    first: the CPU devices run no collectives, and XLA_FLAGS stays as it was."""
    env = {"JAX_PLATFORMS": platforms} if platforms else {}
    plugins = ("json",) if plugin else ("no_such_module_here",)  # "json" stands in for an installed plugin
    parallel.allow_slow_collectives(env, plugins=plugins)
    assert ("XLA_FLAGS" in env) == added, env


def test_runs_record_xla_flags_without_the_timeout():
    flag = parallel.COLLECTIVE_TERMINATE_FLAG
    assert parallel.recorded_xla_flags(f"--xla_a=1 {flag}=3600 --xla_b=2") == "--xla_a=1 --xla_b=2"
    assert parallel.recorded_xla_flags(f"{flag}=7") == f"{flag}=7"  # a user's own value is theirs: recorded
    assert parallel.recorded_xla_flags("--xla_a=1  --xla_b=2") == "--xla_a=1  --xla_b=2"  # untouched without it


_LAGGING_DEVICE = """
import time
import jax, jax.numpy as jnp
from jax.experimental import io_callback
from jax.sharding import NamedSharding, PartitionSpec as P
from spark_jax import parallel
parallel.split_cpu(2)
mesh = jax.make_mesh((2,), ("nodes",))

def body(x):  # device 0 reaches the psum %(lag)d s after device 1
    late = lambda x: io_callback(lambda v: (time.sleep(%(lag)d), v)[1], x, x, ordered=False)
    x = jax.lax.cond(jax.lax.axis_index("nodes") == 0, late, lambda x: x, x)
    return jax.lax.psum(x, "nodes")

f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("nodes"), out_specs=P("nodes"), check_vma=False))
x = jax.device_put(jnp.arange(4.0), NamedSharding(mesh, P("nodes")))
print("sum", float(jax.device_get(f(x))[0]))
"""


# XLA warns about a device late at a collective after this flag's seconds (20 by default), then counts the
# termination timeout: 1 s here, where this jaxlib registers it, instead of the 26 s lag it would take without.
_WARN_STUCK_FLAG = "--xla_cpu_collective_call_warn_stuck_timeout_seconds"


@pytest.mark.slow
def test_xla_honours_the_termination_timeout_flag():
    """The flag `split_cpu` sets is live in this jaxlib: with 3 s instead of its 3600, a device late at a
    psum beyond XLA's warning time plus these 3 s aborts the process; 1 s late it completes. (An unknown XLA
    flag would abort every run at start-up instead.) The warning comes after 1 s where this jaxlib registers
    its flag (then the late device lags 10 s), after XLA's 20 s where it does not (then 26 s)."""
    environ = _bare_environ()

    def run(lag, warn):
        flags = f"{parallel.COLLECTIVE_TERMINATE_FLAG}=3" + (f" {_WARN_STUCK_FLAG}=1" if warn else "")
        return subprocess.run([sys.executable, "-c", _LAGGING_DEVICE % {"lag": lag}], cwd=REPO, timeout=240,
                              env=dict(environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags),
                              capture_output=True, text=True)

    quick, warn = run(1, True), True
    if quick.returncode != 0 and f"Unknown flag in XLA_FLAGS: {_WARN_STUCK_FLAG}" in quick.stderr:
        quick, warn = run(1, False), False
    assert quick.returncode == 0 and "sum 2.0" in quick.stdout, quick.stderr[-2000:]
    late = run(10 if warn else 26, warn)
    assert late.returncode != 0 and "Termination timeout" in late.stderr and "of 3 seconds" in late.stderr, \
        late.stderr[-2000:]
