"""Does a measured record conserve the energy the user gave? A fit of its trend against its scatter.

`energy_trend` evaluates the user's energy on every measured state and fits, over all trajectories
at once, `E_ij = a_i + b t_ij` (one intercept per trajectory, one common slope): least squares, with
the slope's standard error from the residual scatter. The change over the record is `b T` (T the
mean duration of a trajectory), and as a fraction of the energy above its floor (the lowest value
of E over the box the data span, i.e. the resting state of a potential well). The verdict:

- `"dissipates"`: the energy falls by more than 3 standard errors of that change and by more than
  2% of the energy above the floor;
- `"gains"`: the same, rising;
- `"conserves"`: otherwise (the change is within the measurement scatter).
"""

from __future__ import annotations

import math

import numpy as np

SIGNIFICANCE = 3.0  # standard errors
MIN_FRACTION = 0.02  # of the energy above its floor


def energy_floor(energy_fn, x: np.ndarray, points: int = 20_000, seed: int = 0) -> float:
    """The lowest energy over the box the states span (a grid for up to 2 dimensions, random points
    beyond), or the lowest on the data where that is lower."""
    lo, hi = x.min(0), x.max(0)
    dim = x.shape[1]
    if dim <= 2:
        axes = [np.linspace(a, b, int(round(points ** (1 / dim)))) for a, b in zip(lo, hi)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, dim)
    else:
        grid = np.random.RandomState(seed).uniform(lo, hi, (points, dim))
    with np.errstate(all="ignore"):
        values = np.concatenate((np.asarray(energy_fn(grid), dtype=np.float64),
                                 np.asarray(energy_fn(x), dtype=np.float64)))
    values = values[np.isfinite(values)]
    return float(values.min()) if len(values) else math.nan


def energy_trend(energy_fn, t: np.ndarray, x: np.ndarray, trajectory: np.ndarray) -> dict:
    """The measured energy's common slope over time, its uncertainty and the verdict (see the module).

    `t` `(N,)`, `x` `(N, D)`, `trajectory` `(N,)` ids; `energy_fn` maps `(N, D)` to `(N,)`.
    """
    e = np.asarray(energy_fn(x), dtype=np.float64)
    ok = np.isfinite(e)
    t, e, ids = np.asarray(t, dtype=np.float64)[ok], e[ok], np.asarray(trajectory)[ok]
    groups = [np.flatnonzero(ids == i) for i in dict.fromkeys(ids.tolist())]
    groups = [g for g in groups if len(g) >= 3]
    if not groups:
        return {"verdict": "unknown", "why": "fewer than 3 finite energies per trajectory"}
    dt = np.concatenate([t[g] - t[g].mean() for g in groups])
    de = np.concatenate([e[g] - e[g].mean() for g in groups])
    sxx = float((dt**2).sum())
    slope = float((dt * de).sum() / sxx) if sxx > 0 else 0.0
    resid = de - slope * dt
    dof = max(1, len(dt) - len(groups) - 1)
    scatter = float(np.sqrt((resid**2).sum() / dof))
    slope_se = scatter / math.sqrt(sxx) if sxx > 0 else math.inf
    duration = float(np.mean([np.ptp(t[g]) for g in groups]))
    start = float(np.mean([e[g].mean() - slope * (t[g].mean() - t[g].min()) for g in groups]))
    floor = energy_floor(energy_fn, x[ok])
    above = start - floor
    change, change_se = slope * duration, slope_se * duration
    fraction = change / above if above > 0 else math.nan
    significant = abs(change) > SIGNIFICANCE * change_se and (not math.isfinite(fraction)
                                                               or abs(fraction) > MIN_FRACTION)
    verdict = "conserves" if not significant else ("dissipates" if change < 0 else "gains")
    return {"verdict": verdict, "slope": slope, "slope_se": slope_se, "change": change, "change_se": change_se,
            "fraction": fraction, "fraction_se": change_se / above if above > 0 else math.nan,
            "scatter": scatter, "duration": duration, "start": start, "floor": floor,
            "trajectories": len(groups), "points": int(len(dt))}


def describe(trend: dict, models=("dhnn",)) -> str:
    """One sentence for the report: what the measured energy does over the record, with its uncertainty
    (`models`: the models compared, so that the sentence points at the dissipative one or asks for it)."""
    if trend["verdict"] == "unknown":
        return f"The data's energy trend could not be measured ({trend['why']})."
    pct = (f" ({abs(trend['fraction']):.0%} ± {trend['fraction_se']:.0%} of the energy above its floor "
           f"{trend['floor']:.3g})" if math.isfinite(trend["fraction"]) else "")
    fit = (f"a common linear trend over {trend['trajectories']} trajector"
           f"{'y' if trend['trajectories'] == 1 else 'ies'} of mean duration {trend['duration']:.3g}: change "
           f"{trend['change']:+.3g} ± {trend['change_se']:.2g} against a scatter of {trend['scatter']:.2g} about "
           "the fit")
    if trend["verdict"] == "dissipates":
        return (f"The measured energy falls by {abs(trend['change']):.3g}{pct} over the record ({fit}): the system "
                "dissipates. An HNN conserves its learned energy and cannot represent that; "
                + ("see the dissipative model's row." if "dhnn" in models else
                   "add `dhnn` to --models for a model that can (a dissipative HNN)."))
    if trend["verdict"] == "gains":
        return (f"The measured energy rises by {trend['change']:.3g}{pct} over the record ({fit}): energy is fed "
                "in (a drive, or a wrong energy expression). An HNN cannot represent that.")
    return (f"The measured energy is conserved within the measurement scatter ({fit}): a conservative model "
            "(HNN, LNN) fits the physics.")
