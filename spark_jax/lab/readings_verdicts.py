"""The paper's claims (a)-(d) decided from the study's numbers by fixed rules (docs/RESULTS.md).

Each rule is stated in its verdict's text, so a reader can check it against
the tables. `stats[(reading, alpha)]` is `readings_stats.cell_stats`,
`reach[(reading, alpha)]` is `readings_stats.to_target` at the alpha's common
target. Verdicts: 'reproduced', 'partly', 'not reproduced', or 'not measured'
when a needed row is missing.

  (a) 98.7% less Jacobian traffic than NTK-DFL while keeping accuracy;
  (b) the target accuracy about 3x faster (in rounds) than existing approaches
      under high heterogeneity (the smallest alpha);
  (c) total communication to a target accuracy lowered by up to about 70%;
  (d) equal or higher final accuracy across heterogeneity levels.
"""

from __future__ import annotations

import dataclasses
import math

from spark_jax.lab.readings_stats import BASELINES, TOLERANCE
from spark_jax.lab.report_tables import format_bytes


@dataclasses.dataclass
class Verdict:
    claim: str
    verdict: str
    evidence: str


def _grade(value: float, full: float, part: float) -> str:
    return "reproduced" if value >= full else "partly" if value >= part else "not reproduced"


def _sparks(stats, alpha) -> list[str]:
    return [r for (r, a) in stats if a == alpha and r.startswith("spark_")]


def _rounds_to(reach, reading: str, alpha: float, rounds: int) -> float | None:
    """Mean rounds to the common target; a seed that never reached it counts the cell as rounds + 1."""
    x = reach.get((reading, alpha))
    if not x or not x["n"]:
        return None
    return x["round"] if x["reached"] == x["n"] else float(rounds + 1)


def _total_bytes(reach, reading: str, alpha: float) -> float | None:
    """Mean total bytes to the common target; None unless every seed reached it."""
    x = reach.get((reading, alpha))
    return x["bytes"] if x and x["n"] and x["reached"] == x["n"] else None


def claim_a(stats, alpha: float) -> Verdict:
    """Jacobian bytes of the SPEC-default sketch (spark_v1) against NTK-DFL, and the accuracy kept."""
    name = "(a) 98.7% less Jacobian traffic than NTK-DFL, accuracy kept"
    if ("spark_v1", alpha) not in stats or ("ntk_dfl", alpha) not in stats:
        return Verdict(name, "not measured", "needs spark_v1 and ntk_dfl")
    v1, ntk = stats["spark_v1", alpha], stats["ntk_dfl", alpha]
    cut = 1.0 - v1["jacobian_bytes"] / ntk["jacobian_bytes"]
    gaps = {r: stats[r, alpha]["final"][0] - ntk["final"][0] for r in _sparks(stats, alpha)
            if stats[r, alpha]["jacobian_bytes"] < 0.05 * ntk["jacobian_bytes"]}
    kept = gaps["spark_v1"] >= -TOLERANCE
    verdict = ("reproduced" if cut >= 0.985 and kept else "partly" if cut >= 0.985 or kept else "not reproduced")
    best = max(gaps, key=gaps.get)
    text = (f"spark_v1 sends {100 * cut:.1f}% less Jacobian traffic than ntk_dfl (alpha {alpha:g}); its final "
            f"accuracy is {100 * gaps['spark_v1']:+.1f} points from ntk_dfl's (kept = within "
            f"{100 * TOLERANCE:.0f} point). Of the sketched readings, {best} comes closest: "
            f"{100 * gaps[best]:+.1f} points.")
    return Verdict(name, verdict, text)


def claim_b(stats, reach, alpha: float, rounds: int) -> Verdict:
    """Rounds to the common target: the fastest SPARK reading against the fastest baseline."""
    name = f"(b) target accuracy about 3x faster than existing approaches (alpha {alpha:g})"

    def rounds_to(reading):
        return _rounds_to(reach, reading, alpha, rounds)

    sparks = {r: rounds_to(r) for r in _sparks(stats, alpha) if rounds_to(r) is not None}
    bases = {r: rounds_to(r) for r in BASELINES if rounds_to(r) is not None}
    if not sparks or not bases:
        return Verdict(name, "not measured", "needs a SPARK reading and a baseline")
    s, b = min(sparks, key=sparks.get), min(bases, key=bases.get)
    speedup = bases[b] / sparks[s]
    default = bases[b] / sparks.get("spark_v1", math.inf)
    text = (f"fastest reading {s}: {sparks[s]:.1f} rounds; fastest baseline {b}: {bases[b]:.1f} rounds "
            f"(a seed that never reached the target counts as {rounds + 1}): {speedup:.2f}x "
            f"(spark_v1: {default:.2f}x). Rule: >= 2.5x reproduced, >= 1.2x partly.")
    return Verdict(name, _grade(speedup, 2.5, 1.2), text)


def claim_c(stats, reach, alpha: float) -> Verdict:
    """Total bytes (weights + messages) to the common target, against NTK-DFL and the cheapest baseline."""
    name = f"(c) total communication to target lowered by up to about 70% (alpha {alpha:g})"

    def total(reading):
        return _total_bytes(reach, reading, alpha)

    sparks = {r: total(r) for r in _sparks(stats, alpha) if total(r) is not None}
    if total("ntk_dfl") is None or not sparks:
        return Verdict(name, "not measured", "needs ntk_dfl and a SPARK reading reaching the target in every seed")
    s = min(sparks, key=sparks.get)
    cut = 1.0 - sparks[s] / total("ntk_dfl")
    v2 = 1.0 - sparks["spark_v2"] / total("ntk_dfl") if "spark_v2" in sparks else math.nan
    others = {r: total(r) for r in BASELINES if r != "ntk_dfl" and total(r) is not None}
    text = (f"cheapest reading {s}: {format_bytes(sparks[s])} to the target against ntk_dfl's "
            f"{format_bytes(total('ntk_dfl'))}: {100 * cut:.0f}% less (spark_v2: {100 * v2:.0f}% less). ")
    if others:
        o = min(others, key=others.get)
        text += (f"The weight-only baseline {o} needs {format_bytes(others[o])}, "
                 f"{sparks[s] / others[o]:.1f}x less than {s}'s. ")
    return Verdict(name, _grade(cut, 0.6, 0.2), text + "Rule (against ntk_dfl): >= 60% reproduced, >= 20% partly.")


def claim_d(stats, alphas) -> Verdict:
    """Final accuracy of the best SPARK reading against the best baseline at every alpha."""
    name = "(d) equal or higher final accuracy across heterogeneity levels"
    parts, held = [], 0
    for alpha in alphas:
        sparks = {r: stats[r, alpha]["final"][0] for r in _sparks(stats, alpha)}
        bases = {r: stats[r, alpha]["final"][0] for r in BASELINES if (r, alpha) in stats}
        if not sparks or not bases:
            continue
        s, b = max(sparks, key=sparks.get), max(bases, key=bases.get)
        gap = sparks[s] - bases[b]
        held += gap >= -TOLERANCE
        parts.append(f"alpha {alpha:g}: best reading {s} {sparks[s]:.4f} vs best baseline {b} {bases[b]:.4f} "
                     f"({100 * gap:+.1f} points)")
    if not parts:
        return Verdict(name, "not measured", "needs SPARK readings and baselines")
    verdict = "reproduced" if held == len(parts) else "partly" if held else "not reproduced"
    return Verdict(name, verdict, "; ".join(parts) + f". Equal = within {100 * TOLERANCE:.0f} point.")


def clear_winners(stats, alpha: float, default: str = "spark_v1") -> list[tuple[str, float, float]]:
    """Readings whose final accuracy beats `default` by more than TOLERANCE and twice the standard error.

    Returns (reading, accuracy gain, bytes-per-round ratio to the default).
    """
    if (default, alpha) not in stats:
        return []
    d = stats[default, alpha]
    out = []
    for r in _sparks(stats, alpha):
        x = stats[r, alpha]
        gain = x["final"][0] - d["final"][0]
        se = math.sqrt(x["final"][1] ** 2 / max(x["n"], 1) + d["final"][1] ** 2 / max(d["n"], 1))
        if r != default and gain > max(TOLERANCE, 2 * se):
            out.append((r, gain, x["bytes_per_round"] / d["bytes_per_round"]))
    return sorted(out, key=lambda t: -t[1])


def scorecard(stats, reach, alpha: float, rounds: int) -> list[dict]:
    """Per SPARK reading at `alpha`, the four claims' measures taken for that reading alone.

    jacobian_cut and bytes_cut are against ntk_dfl; speedup against the fastest baseline in rounds to the
    common target; gap against the best baseline's final accuracy. `met` counts the claims' full thresholds.
    """
    def rounds_to(r):
        return _rounds_to(reach, r, alpha, rounds)

    def total(r):
        return _total_bytes(reach, r, alpha)

    bases = [rounds_to(b) for b in BASELINES if rounds_to(b) is not None]
    best_base = max((stats[b, alpha]["final"][0] for b in BASELINES if (b, alpha) in stats), default=math.nan)
    ntk = stats.get(("ntk_dfl", alpha))
    rows = []
    for r in _sparks(stats, alpha):
        x = stats[r, alpha]
        jac_cut = 1.0 - x["jacobian_bytes"] / ntk["jacobian_bytes"] if ntk else math.nan
        speedup = min(bases) / rounds_to(r) if bases and rounds_to(r) else math.nan
        bytes_cut = (1.0 - total(r) / total("ntk_dfl") if total(r) is not None and total("ntk_dfl") is not None
                     else math.nan)
        gap = x["final"][0] - best_base
        kept = ntk is not None and x["final"][0] - ntk["final"][0] >= -TOLERANCE
        met = int(jac_cut >= 0.985 and kept) + int(speedup >= 2.5) + int(bytes_cut >= 0.6) + int(gap >= -TOLERANCE)
        rows.append({"reading": r, "final": x["final"][0], "jacobian_cut": jac_cut, "speedup": speedup,
                     "bytes_cut": bytes_cut, "gap": gap, "met": met})
    return sorted(rows, key=lambda row: (-row["met"], -row["final"]))
