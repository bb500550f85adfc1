"""Compares the metrics of two run directories round by round (before/after a change).

    python scripts/compare_runs.py RUN_A RUN_B [RUN_A2 RUN_B2 ...]

Prints, per pair, 'identical' when every metric of every round is bitwise equal (wall-clock fields
aside: round_time, wall_time), else the largest absolute difference per metric and the first round it
differs in. Exit status 1 when a pair differs in its keys or number of rounds.
"""

from __future__ import annotations

import json
import pathlib
import sys

CLOCK = ("round_time", "wall_time")


def _rounds(run_dir) -> list[dict]:
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _flat(value) -> list[float]:
    values = value if isinstance(value, list) else [value]
    return [float("nan") if v is None else float(v) for v in values]


def compare(a, b) -> tuple[bool, str]:
    ra, rb = _rounds(a), _rounds(b)
    if len(ra) != len(rb):
        return False, f"{len(ra)} vs {len(rb)} rounds"
    diffs = {}  # key -> (max |difference|, first round)
    for x, y in zip(ra, rb):
        if set(x) != set(y):
            return False, f"round {x.get('round')}: keys differ: {sorted(set(x) ^ set(y))}"
        for key in x:
            if key in CLOCK or x[key] == y[key]:
                continue
            a, b = _flat(x[key]), _flat(y[key])
            gap = float("inf") if len(a) != len(b) else max(abs(p - q) for p, q in zip(a, b))
            old = diffs.get(key, (0.0, x["round"]))
            diffs[key] = (max(old[0], gap), old[1])
    if not diffs:
        return True, f"identical ({len(ra)} rounds, every metric but {', '.join(CLOCK)})"
    body = "; ".join(f"{k} max |diff| {g:.3g} from round {r}" for k, (g, r) in sorted(diffs.items()))
    final = f"final test_accuracy {ra[-1].get('test_accuracy')} vs {rb[-1].get('test_accuracy')}"
    return True, f"differs: {body}; {final}"


def main(argv) -> int:
    if len(argv) < 2 or len(argv) % 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    status = 0
    for a, b in zip(argv[::2], argv[1::2]):
        ok, text = compare(a, b)
        print(f"{pathlib.Path(a).name}: {text}")
        status |= not ok
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
