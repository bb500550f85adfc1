"""TensorBoard event files without TensorFlow, tensorboardX or protobuf (`config.log.tensorboard`).

A run with `--config.log.tensorboard=True` writes `<workdir>/tensorboard/events.out.tfevents.*`: one
scalar per numeric metric per round (the tag is the metrics.jsonl key, the step the round), readable by
`tensorboard --logdir <workdir>` (or a sweep directory). metrics.jsonl stays the record: on resume the
event files are rewritten from its kept rounds, so TensorBoard never shows rounds the run discarded.

The format, encoded by hand (the few fields needed are stable since TensorFlow 1.0):
  file   = TFRecords: uint64 length (little-endian), uint32 masked crc32c(length bytes),
           data, uint32 masked crc32c(data); masked(c) = ((c >> 15 | c << 17) + 0xa282ead8) mod 2^32.
  data   = an `Event` protobuf: wall_time (1, double), step (2, int64 varint), and either
           file_version (3, string "brain.Event:2", the first record) or summary (5, message).
  summary = repeated value (1, message): tag (1, string), simple_value (2, float32).
crc32c (Castagnoli) is a table-driven pure-Python loop: fine for a few hundred bytes a round.
"""

from __future__ import annotations

import os
import pathlib
import socket
import struct
import time

FILE_VERSION = b"brain.Event:2"
SUBDIR = "tensorboard"


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord uses; crc32c(b'123456789') == 0xE3069283."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, the data's masked CRC."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # int64 as two's complement
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    """A protobuf field: key varint, then the payload (length-prefixed for wire type 2)."""
    key = _varint(number << 3 | wire)
    return key + (_varint(len(payload)) + payload if wire == 2 else payload)


def event(step: int, wall_time: float, *, scalars: dict | None = None, file_version: bytes | None = None) -> bytes:
    """An encoded `Event`: the file-version header, or a summary of `scalars` {tag: number}."""
    out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(int(step)))
    if file_version is not None:
        out += _field(3, 2, file_version)
    if scalars:
        values = b"".join(_field(1, 2, _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", float(v))))
                          for tag, v in scalars.items())
        out += _field(5, 2, values)
    return out


def numeric_metrics(record: dict) -> dict:
    """The scalars of a metrics record: every int/float (not bool, not 'round'), finite or not."""
    return {k: v for k, v in record.items()
            if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class EventWriter:
    """Appends scalar events to one new event file in `logdir`; flushed after every write."""

    def __init__(self, logdir):
        self.logdir = pathlib.Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.spark_jax"
        self.path = self.logdir / name
        self._file = open(self.path, "wb")  # pylint: disable=consider-using-with
        self._write(event(0, now, file_version=FILE_VERSION))

    def _write(self, data: bytes) -> None:
        self._file.write(tfrecord(data))
        self._file.flush()

    def scalars(self, step: int, values: dict, wall_time: float | None = None) -> None:
        """One event at `step` holding every (tag, value) of `values`."""
        if values:
            self._write(event(step, time.time() if wall_time is None else wall_time, scalars=values))

    def close(self) -> None:
        self._file.close()


def open_run_log(run_dir, history) -> EventWriter:
    """The event writer of a run directory: old event files removed, `history`'s rounds written again."""
    logdir = pathlib.Path(run_dir) / SUBDIR
    if logdir.is_dir():
        for old in logdir.glob("events.out.tfevents.*"):
            old.unlink()
    writer = EventWriter(logdir)
    for record in history:
        writer.scalars(record["round"], numeric_metrics(record))
    return writer
