"""What a run shows while its rounds go: the progress bar, the cost note, TensorBoard events.

`RoundReporter` is created when the rounds start and told of every round's
metrics record (`round_done`):

* the bar (`config.progress`): `NAME: round r/R |###   | 01:35<1:01:45 ETA, 95.2s/round, acc=0.6123`
  (round r of R, elapsed < remaining, seconds per round, the latest aggregated test accuracy);
* on CPU with a paper-scale config (`PAPER_SCALE_NODES` nodes or more), a first line saying that
  the cost is estimated after round 1 and naming the `:small` variant, then after round 1 the
  estimate for all rounds (round 1 includes compilation, so it is an upper estimate);
* TensorBoard event files (`config.log.tensorboard`, `spark_jax.runner.tensorboard_log`), every metric
  per round.

Only the writing process (`writer=True`) prints or writes.
"""

from __future__ import annotations

import sys

from spark_jax.runner import tensorboard_log
from spark_jax.runner.run_summary import human_seconds

PAPER_SCALE_NODES = 100
BAR_FORMAT = "{desc}: round {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining} ETA, {rate_fmt}{postfix}"


def _small_variant(name: str) -> str | None:
    """'fmnist_ring' -> 'fmnist_ring:small'; None for a name that already has an argument or a path."""
    return None if ":" in name or "/" in name or name.endswith(".py") else f"{name}:small"


def is_paper_scale_on_cpu(config) -> bool:
    import jax  # pylint: disable=g-import-not-at-top

    return config.partition.num_nodes >= PAPER_SCALE_NODES and jax.default_backend() == "cpu"


def cost_note(config) -> str:
    """The first line of a paper-scale run on CPU."""
    small = _small_variant(config.name)
    hint = f"; `--config={small}` is the CPU-sized variant (minutes)" if small else ""
    rounds = f"{config.rounds} round{'s' if config.rounds != 1 else ''}"
    return (f"note: {config.name} is paper scale ({config.partition.num_nodes} nodes, {rounds}) on "
            f"CPU: a round can take minutes; the total is estimated after round 1{hint}")


def estimate_line(config, round_number: int, seconds: float, rounds: int) -> str:
    """After the first round run: the estimated time of the `rounds` rounds this run runs."""
    return (f"round {round_number} took {human_seconds(seconds)} (with compilation): about "
            f"{human_seconds(seconds * rounds)} for the {rounds} round{'s' if rounds != 1 else ''} of "
            f"{config.name} at this pace")


class RoundReporter:
    """Progress bar, cost note and TensorBoard log of one run (see the module docstring)."""

    def __init__(self, config, run_dir, start_round: int, history, writer: bool = True):
        self.config = config
        self.bar = None
        self.tb = None
        self.estimate = False
        self.start_round = start_round
        if not writer:
            return
        if is_paper_scale_on_cpu(config):
            self.estimate = True
            self.note(cost_note(config))
        if config.progress:
            from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

            self.bar = tqdm(total=config.rounds, initial=start_round, desc=config.name, unit="round",
                            bar_format=BAR_FORMAT, dynamic_ncols=True)
        if config.log.tensorboard:
            self.tb = tensorboard_log.open_run_log(run_dir, history)

    def note(self, line: str) -> None:
        """A line above the bar (stderr, like the bar)."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def round_done(self, record: dict) -> None:
        """After a round's metrics line is written."""
        if self.tb is not None:
            self.tb.scalars(record["round"], tensorboard_log.numeric_metrics(record))
        if self.bar is not None:
            self.bar.set_postfix_str(f"acc={record['test_accuracy']:.4f}", refresh=False)
            self.bar.update(1)
        if self.estimate and record["round"] == self.start_round + 1 and record["round"] < self.config.rounds:
            self.note(estimate_line(self.config, record["round"], record["round_time"],
                                    self.config.rounds - self.start_round))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
