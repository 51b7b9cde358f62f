"""The Uni-C optical-flow filter (Suppl. VI) as a rule over a video's `FlowStats`.

The paper: "Videos are labeled as negative if the overall optical flow mean is less than its
variance, or if both the horizontal and vertical optical flow means are less than five times their
respective variances." Read with vidprior.flow's statistics (per frame pair, the spatial means of
|u|, |v| and |w| = sqrt(u^2 + v^2); mean and population variance over the video's pairs), and the
factors of `FlowRuleParams` (overall_factor=1, axis_factor=5), a video is negative when a clause
fires. They are checked in this fixed order and the first that fires is reported:

1. ``min_motion``: mean |w| < min_mean_magnitude (px at the analysis resolution). Our addition:
   the paper calls videos with minimal flow negative, but the literal clauses pass a perfectly
   still video (0 < 0 is false), so a floor stands in for "minimal". It goes first because a
   near-still video's tiny variances make the other clauses' outcome noise.
2. ``overall``: mean |w| < overall_factor * var |w| (erratic overall motion).
3. ``axes``: mean |u| < axis_factor * var |u| AND mean |v| < axis_factor * var |v|.

Comparisons are strict, so a video exactly at a boundary passes. Means (px) and variances (px^2)
have different units, which is why flow is measured at one fixed analysis resolution. Statistics
that are not finite have no verdict: both functions raise instead of labelling them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vidprior.config import FlowRuleParams
from vidprior.flow import FlowStats

CLAUSES = ("min_motion", "overall", "axes")
STAT_COLUMNS = ("mean_u", "var_u", "mean_v", "var_v", "mean_mag", "var_mag")


@dataclass(frozen=True)
class FlowRuleVerdict:
    passed: bool
    clause: str = ""  # the first clause that fired, with its numbers; "" when passed


def _clause_text(name: str, s: dict[str, float], p: FlowRuleParams) -> str:
    if name == "min_motion":
        return f"min_motion: mean |w| {s['mean_mag']:.4g} < {p.min_mean_magnitude:g} px"
    if name == "overall":
        return f"overall: mean |w| {s['mean_mag']:.4g} < {p.overall_factor:g} x var |w| {s['var_mag']:.4g}"
    return (
        f"axes: mean |u| {s['mean_u']:.4g} < {p.axis_factor:g} x var |u| {s['var_u']:.4g} "
        f"and mean |v| {s['mean_v']:.4g} < {p.axis_factor:g} x var |v| {s['var_v']:.4g}"
    )


def _fired(s, p: FlowRuleParams) -> dict[str, np.ndarray | bool]:
    """Each clause's outcome; works on scalars and on columns alike."""
    return {
        "min_motion": s["mean_mag"] < p.min_mean_magnitude,
        "overall": s["mean_mag"] < p.overall_factor * s["var_mag"],
        "axes": (s["mean_u"] < p.axis_factor * s["var_u"]) & (s["mean_v"] < p.axis_factor * s["var_v"]),
    }


def apply_flow_rule(stats: FlowStats, params: FlowRuleParams) -> FlowRuleVerdict:
    """The rule's verdict on one video; ValueError if any statistic is NaN or infinite."""
    if not stats.is_finite():
        raise ValueError(f"flow rule undefined for non-finite statistics: {stats.non_finite_fields()}")
    values = {k: float(getattr(stats, k)) for k in STAT_COLUMNS}
    fired = _fired(values, params)
    for name in CLAUSES:
        if fired[name]:
            return FlowRuleVerdict(passed=False, clause=_clause_text(name, values, params))
    return FlowRuleVerdict(passed=True)


def apply_flow_rule_frame(stats: pd.DataFrame, params: FlowRuleParams) -> pd.DataFrame:
    """Vectorised rule over a frame with `FlowStats` columns: columns `flow_passed`, `flow_clause`.

    Same verdicts and clause texts as `apply_flow_rule`, row by row, on `stats`' index.
    """
    missing = [c for c in STAT_COLUMNS if c not in stats.columns]
    if missing:
        raise ValueError(f"flow statistics frame lacks columns {missing}")
    values = {c: stats[c].to_numpy(dtype=np.float64) for c in STAT_COLUMNS}
    bad = ~np.isfinite(np.stack(list(values.values()), axis=1)).all(axis=1)
    if bad.any():
        rows = list(stats.index[bad][:10])
        raise ValueError(f"flow rule undefined for non-finite statistics in rows {rows}")
    fired = _fired(values, params)
    first = np.full(len(stats), "", dtype=object)
    for name in reversed(CLAUSES):  # later clauses are overwritten by earlier ones
        first[np.asarray(fired[name], dtype=bool)] = name
    clause = [
        _clause_text(name, {c: values[c][i] for c in STAT_COLUMNS}, params) if name else ""
        for i, name in enumerate(first)
    ]
    return pd.DataFrame({"flow_passed": first == "", "flow_clause": clause}, index=stats.index)
