"""What a finished run says and shows: summary lines, curves.png, the progress notes, TensorBoard events.

The event files are read back by TensorBoard's own loader when `tensorboard` is installed, and always by
the parser below, written from the TFRecord and protobuf specifications independently of
spark_jax.runner.tensorboard_log (its own CRC-32C is checked against the standard check value).
"""

import math
import struct
import zlib

import pytest

from experiments.configs import fmnist_ring, tiny
from spark_jax.runner import curves, progress, run_summary, tensorboard_log

HISTORY = [{"round": r, "test_accuracy": a, "node_accuracy_mean": a - 0.1, "node_accuracy_min": a - 0.3,
            "train_loss": 2.0 / r, "bytes_cumulative": 1_000_000 * r, "round_time": 2.0, "finite": True}
           for r, a in zip(range(1, 7), (0.3, 0.5, 0.62, 0.61, 0.7, 0.69))]
SUMMARY = {"config_name": "fmnist_ring:small", "algorithm": "spark", "num_nodes": 30, "rounds": 6,
           "final_test_accuracy": 0.69, "final_node_accuracy_mean": 0.59, "best_test_accuracy": 0.7,
           "best_round": 5, "target_accuracy": 0.85, "rounds_to_target": None, "bytes_to_target": None,
           "bytes_total": 6_000_000, "wall_time": 95.3}


def test_summary_lines(tmp_path):
    (tmp_path / "curves.png").write_bytes(b"")
    lines = run_summary.summary_lines(SUMMARY, tmp_path, " (resumed)")
    assert lines == [
        f"fmnist_ring:small: final aggregated test accuracy 0.6900 after 6 rounds (resumed); run directory {tmp_path}",
        "  spark, 30 nodes: per-node test accuracy (mean) 0.5900; best aggregated 0.7000 at round 5",
        "  target accuracy 0.85: not reached in 6 rounds; 6 MB sent in all",
        "  wall time 1 min 35 s",
        f"  curves: {tmp_path / 'curves.png'}",
        f"  report: python -m experiments.report {tmp_path}"]
    hit = run_summary.summary_lines({**SUMMARY, "rounds_to_target": 3, "bytes_to_target": 3_210_000}, "r d")
    assert hit[2] == "  target accuracy 0.85: reached at round 3, after 3.21 MB sent; 6 MB sent in all"
    assert hit[-1] == "  report: python -m experiments.report 'r d'" and "curves" not in hit[-2]
    assert run_summary.human_seconds(4000) == "1 h 6 min" and run_summary.human_bytes(1.5e10) == "15 GB"


def test_curves_png_with_spark_stages(tmp_path):
    config = fmnist_ring.get_config("small")
    config.rounds = 6
    assert curves.stage_starts(config) == (3, 5)  # stages 2 and 3 begin at 0-based rounds 2 and 4
    assert curves.stage_starts(tiny.get_config()) == ()  # DFedAvg: no stages
    path = curves.plot_curves(HISTORY, tmp_path / "curves.png", "fmnist_ring:small", (3, 5))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


@pytest.mark.parametrize("value,enabled", [(None, True), ("", True), ("0", True), ("no", True), ("1", False),
                                           ("true", False), ("yes", False)])
def test_no_plots_environment_variable(monkeypatch, value, enabled):
    if value is None:
        monkeypatch.delenv(curves.NO_PLOTS_ENV, raising=False)
    else:
        monkeypatch.setenv(curves.NO_PLOTS_ENV, value)
    assert curves.plots_enabled() is enabled


def test_cost_note_names_the_small_variant_and_estimates_after_round_1(capsys, tmp_path):
    config = fmnist_ring.get_config("")
    config.progress, config.rounds = False, 40
    assert progress.is_paper_scale_on_cpu(config)  # the suite runs on CPU
    reporter = progress.RoundReporter(config, tmp_path, 0, [])
    reporter.round_done({"round": 1, "test_accuracy": 0.5, "round_time": 95.0})
    reporter.round_done({"round": 2, "test_accuracy": 0.6, "round_time": 60.0})
    reporter.close()
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "note: fmnist_ring is paper scale (300 nodes, 40 rounds) on CPU: a round can take minutes; the total is "
        "estimated after round 1; `--config=fmnist_ring:small` is the CPU-sized variant (minutes)",
        "round 1 took 1 min 35 s (with compilation): about 1 h 3 min for the 40 rounds of fmnist_ring at this pace"]
    assert not progress.is_paper_scale_on_cpu(fmnist_ring.get_config("small"))
    assert progress.cost_note(fmnist_ring.get_config("small")).endswith("estimated after round 1")


# ------------------------------------------------------------- TensorBoard event files


def _crc32c(data: bytes) -> int:
    """Bitwise CRC-32C (no table), independent of spark_jax.runner.tensorboard_log."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    c = _crc32c(data)
    return ((c >> 15 | c << 17) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(buf: bytes, i: int):
    shift = value = 0
    while True:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> list:
    """[(field number, value)] of a protobuf message: varints as int, fixed64/32 as raw bytes."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise AssertionError(f"wire type {wire}")
        out.append((number, value))
    return out


def read_events(path) -> list[dict]:
    """Events of a TFRecord event file: {'step', 'wall_time', 'file_version' | 'scalars'}; CRCs checked."""
    raw, i, events = path.read_bytes(), 0, []
    while i < len(raw):
        header = raw[i:i + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", raw[i + 8:i + 12])[0] == _masked(header)
        body = raw[i + 12:i + 12 + length]
        assert struct.unpack("<I", raw[i + 12 + length:i + 16 + length])[0] == _masked(body)
        i += 16 + length
        ev = {"step": 0, "scalars": {}}
        for number, value in _fields(body):
            if number == 1:
                ev["wall_time"] = struct.unpack("<d", value)[0]
            elif number == 2:
                ev["step"] = value
            elif number == 3:
                ev["file_version"] = value.decode()
            elif number == 5:
                for _, v in _fields(value):
                    f = dict(_fields(v))
                    ev["scalars"][f[1].decode()] = struct.unpack("<f", f[2])[0]
        events.append(ev)
    return events


def test_crc32c_and_record_framing():
    assert tensorboard_log.crc32c(b"123456789") == _crc32c(b"123456789") == 0xE3069283
    assert tensorboard_log.crc32c(b"") == 0 and zlib.crc32(b"123456789") != 0xE3069283  # not zlib's CRC-32


def test_event_files_read_back(tmp_path):
    config = tiny.get_config()
    config.log.tensorboard = True
    config.progress = False
    reporter = progress.RoundReporter(config, tmp_path, 2, HISTORY[:2])  # a resumed run: rounds 1-2 kept
    for record in HISTORY[2:4]:
        reporter.round_done({**record, "consensus_distance": math.inf})
    reporter.close()
    (path,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    events = read_events(path)
    assert events[0]["file_version"] == "brain.Event:2"
    assert [e["step"] for e in events[1:]] == [1, 2, 3, 4]
    assert set(events[3]["scalars"]) == {"test_accuracy", "node_accuracy_mean", "node_accuracy_min", "train_loss",
                                         "bytes_cumulative", "round_time", "consensus_distance"}
    assert events[3]["scalars"]["test_accuracy"] == pytest.approx(0.62) and events[4]["scalars"]["train_loss"] == 0.5
    assert math.isinf(events[4]["scalars"]["consensus_distance"])
    # Resuming again rewrites the log from the kept history: one file, no discarded rounds.
    progress.RoundReporter(config, tmp_path, 1, HISTORY[:1]).close()
    (path,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    assert [e["step"] for e in read_events(path)] == [0, 1]
    try:
        from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
    except ImportError:
        print("tensorboard not installed: events checked with this file's own reader only")
        return
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [s.step for s in acc.Scalars("test_accuracy")] == [1]


def test_new_config_fields_and_old_run_directories():
    from spark_jax.runner.run_io import config_differences  # pylint: disable=g-import-not-at-top

    c = tiny.get_config()
    assert c.data.download is True and c.data.base_url == "" and c.log.tensorboard is False
    # A config.json written before these fields existed still resumes, whatever they are set to now.
    old = {"data": {"dataset": "mnist", "data_dir": ""}}
    new = {"data": {"dataset": "mnist", "data_dir": "", "download": False, "base_url": "http://127.0.0.1:1/"},
           "log": {"tensorboard": True}}
    assert config_differences(old, new) == []
