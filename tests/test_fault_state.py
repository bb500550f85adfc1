"""Family 3 of issue 16: corrupt run state (checkpoints, config.json, summary.json) on --resume.

The starting point is a real interrupted run: 4 rounds planned, stopped by
the NaN guard in round 4, so it holds checkpoints 2 and 3 and metrics of
rounds 1-3. A damaged newest checkpoint is skipped with a warning naming it
(moved to checkpoints_corrupt/) and the run resumes from the newest intact
one; damage that leaves nothing to resume from is one `error:` line naming
the file, exit 1, and every file byte-identical.
"""

import json
import pathlib
import shutil

import jax.numpy as jnp
import pytest

from experiments.configs import tiny
from spark_jax import algorithms
from spark_jax.runner import checkpoint, experiment
from spark_jax.guard import NonFiniteError
from spark_jax.runner.run_io import file_mode, read_metrics
from tests.faults import assert_nothing_half_written, assert_one_line_error, run_cli, snapshot

ARGS = ["--config=tiny", "--config.rounds=4", "--config.checkpoint_every=1", "--resume"]


@pytest.fixture(scope="module")
def interrupted(real_data_dir, tmp_path_factory):
    """A run directory with checkpoints 2 and 3 and metrics of rounds 1-3 (stopped in round 4)."""
    config = tiny.get_config()
    config.data.data_dir = real_data_dir
    config.rounds, config.checkpoint_every = 4, 1
    make = algorithms.make_algorithm

    def bad_round_4(alg):
        def round_fn(state, node_data, inputs):
            state, out = alg.round(state, node_data, inputs)
            return state, {**out, "train_loss": jnp.where(inputs.round_index == 3, jnp.nan, out["train_loss"])}
        return alg._replace(round=round_fn)

    workdir = tmp_path_factory.mktemp("state") / "run"
    algorithms.make_algorithm = lambda *a, **k: bad_round_4(make(*a, **k))
    try:
        with pytest.raises(NonFiniteError, match="round 4"):
            experiment.run(config, workdir)
    finally:
        algorithms.make_algorithm = make
    assert checkpoint.complete_steps(workdir) == [2, 3]
    return workdir


def _largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def resume_damaged(damage, interrupted, real_data_dir, tmp_path):
    """A copy of the interrupted run, damaged, then resumed by the CLI: (workdir, snapshot before, process)."""
    workdir = tmp_path / "run"
    shutil.copytree(interrupted, workdir)
    damage(workdir)
    before = snapshot(workdir)
    return workdir, before, run_cli("run", [f"--workdir={workdir}", *ARGS], real_data_dir)


# Damage to the newest checkpoint (3): skipped and named, the run resumes from checkpoint 2.
FALLBACK = [
    ("truncated-array-file", lambda w: _truncate(_largest_array_file(w / "checkpoints/3")), "OUT_OF_RANGE"),
    ("deleted-array-file", lambda w: _largest_array_file(w / "checkpoints/3").unlink(), "Error"),
    ("truncated-meta", lambda w: _truncate(w / "checkpoints/3/meta/metadata"), "JSONDecodeError: "),
    ("meta-of-another-step",
     lambda w: shutil.copy(w / "checkpoints/2/meta/metadata", w / "checkpoints/3/meta/metadata"),
     "CheckpointError: its progress (round 2, 2 metrics records) is not that of step 3"),
]


@pytest.mark.parametrize("damage,reason", [c[1:] for c in FALLBACK], ids=[c[0] for c in FALLBACK])
@pytest.mark.slow
def test_corrupt_newest_checkpoint_is_skipped_and_named(damage, reason, interrupted, real_data_dir, tmp_path):
    workdir, before, proc = resume_damaged(damage, interrupted, real_data_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = [l for l in proc.stderr.splitlines() if "skipping the corrupt checkpoint" in l]
    assert len(warning) == 1 and f"skipping the corrupt checkpoint {workdir}/checkpoints/3 (" in warning[0]
    assert reason in warning[0] and warning[0].endswith(
        f"moved to {workdir}/checkpoints_corrupt/3; resuming from the checkpoint of round 2"), warning[0]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert [r["round"] for r in read_metrics(workdir)] == [1, 2, 3, 4]
    lines = (workdir / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    assert b"".join(lines[:2]) == b"".join(before["metrics.jsonl"].splitlines(keepends=True)[:2])
    kept = {k: v for k, v in before.items() if k.startswith("checkpoints/3/")}
    assert {f"checkpoints/{k[len('checkpoints_corrupt/'):]}": v for k, v in snapshot(workdir).items()
            if k.startswith("checkpoints_corrupt/")} == kept  # moved aside, not altered
    assert checkpoint.complete_steps(workdir) == [4] and (workdir / "summary.json").exists()
    # Family 10: files written after the resume get the same mode as the others (not mkstemp's 0600).
    modes = {str(p.relative_to(workdir)): oct(p.stat().st_mode & 0o777) for p in workdir.rglob("*") if p.is_file()}
    assert set(modes.values()) == {oct(file_mode())}, modes


def _write(name, text):
    return lambda w: (w / name).write_text(text)


# Damage that leaves nothing to resume from: one line naming the file; nothing changes.
ERRORS = [
    ("both-checkpoints", lambda w: [_truncate(w / f"checkpoints/{s}/meta/metadata") for s in (2, 3)],
     "cannot resume {w}: no checkpoint reads back intact ({w}/checkpoints/3: "),
    ("config-list", _write("config.json", "[]"),
     "{w}/config.json: not a run config (expected a JSON object, got list)"),
    ("config-no-config-key", _write("config.json", '{"environment": {}}'),
     "{w}/config.json: not a run config (expected a JSON object with a 'config' object, got keys ['environment'])"),
    ("config-config-not-object", _write("config.json", '{"config": 3}'),
     "{w}/config.json: not a run config (expected a JSON object with a 'config' object, got keys ['config'])"),
    ("config-truncated", lambda w: _truncate(w / "config.json"), "{w}/config.json: not valid JSON ("),
    ("config-binary", lambda w: (w / "config.json").write_bytes(b"\xff\xfe{}"), "{w}/config.json: not UTF-8 text"),
    ("summary-string", _write("summary.json", '"done"'),
     "{w}/summary.json: not a run summary (expected a JSON object, got str)"),
    ("summary-truncated", _write("summary.json", '{"final_test_accuracy": 0.'),
     "{w}/summary.json: not valid JSON (Expecting ',' delimiter at line 1 column 26)"),
]


@pytest.mark.parametrize("damage,message", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
@pytest.mark.slow
def test_corrupt_state_without_a_fallback_is_one_line(damage, message, interrupted, real_data_dir, tmp_path):
    workdir, before, proc = resume_damaged(damage, interrupted, real_data_dir, tmp_path)
    assert_one_line_error(proc, message.format(w=workdir))
    assert snapshot(workdir) == before and not (workdir / ".lock").exists()
    assert_nothing_half_written(workdir)


def test_reason_is_the_root_cause_but_not_a_suppressed_context():
    """`raise X from None` (json's decoder does it over a StopIteration) names X, not the hidden context."""
    try:
        try:
            try:
                raise StopIteration(738)
            except StopIteration:
                raise json.JSONDecodeError("Expecting value", "{", 1) from None
        except json.JSONDecodeError as e:
            raise RuntimeError("orbax: cannot restore meta") from e
    except RuntimeError as outer:
        assert checkpoint._reason(outer) == "JSONDecodeError: Expecting value: line 1 column 2 (char 1)"
