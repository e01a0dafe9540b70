"""Scaling-law fits for sweeps: saturating power laws, IsoFLOP minima, the compute-optimal model size, and
bootstrap intervals for all of them. The maths is numpy alone; only ``plot_fit`` needs matplotlib.

Two kinds of sweep are fitted:

* a loss against one scale variable x (parameters, tokens or compute): the saturating power law
  y = a·x^(−alpha) + c, with c the irreducible loss (a > 0, alpha > 0, 0 <= c < min y). For a fixed c the law is
  a straight line in log-log, log(y − c) = log a − alpha·log x, so ``fit_power_law`` profiles over c: a grid of c
  in [0, min y), one log-log regression per c, the c whose curve has the least squared error in y itself, then
  repeated zooms around it. No nonlinear optimiser, no starting guess, no scipy.
* an IsoFLOP sweep: several model sizes N trained at each compute budget C. Each budget's loss is a parabola in
  log N whose vertex is that budget's optimal size (``isoflop_minimum``); the optima follow N*(C) = k·C^beta, a
  line in log-log (``fit_optimal_size``).

A sweep has a handful of points, so uncertainty comes from the bootstrap: resample the points with replacement,
refit, and report percentile intervals (``bootstrap``, ``bootstrap_isoflop``), rather than asymptotic errors.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

Values = Sequence[float] | np.ndarray

MIN_DISTINCT = 3         # three parameters per fit: a resample with fewer distinct x cannot determine them
C_GRID = 100             # c values on each of the two starting grids (linear, and geometric towards min y)
C_CEILING = 1 - 1e-6     # the largest c tried, as a fraction of min y: log(y − c) must stay finite, yet the
                         # sweep of a steep law can end within a millionth of its floor
ZOOM_POINTS = 21
ZOOM_STEPS = 10          # each zoom narrows the bracket around the best c about tenfold


# ----------------------------------------------------------------------------------------------- checks


def _as_array(name: str, values: Values, positive: bool) -> np.ndarray:
    """A 1-D finite float array; positive where it goes through a log."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array.tolist()}")
    if positive and np.any(array <= 0):
        raise ValueError(f"{name} must be positive (it is fitted on a log scale), got {array.min():g}")
    return array


def _checked_pair(names: tuple[str, str], x: Values, y: Values, min_distinct: int,
                  y_positive: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """x and y as arrays, checked before any log or regression can fail obscurely on them."""
    x, y = _as_array(names[0], x, positive=True), _as_array(names[1], y, positive=y_positive)
    if len(x) != len(y):
        raise ValueError(f"{names[0]} and {names[1]} differ in length: {len(x)} and {len(y)}")
    if len(x) < min_distinct:
        raise ValueError(f"need at least {min_distinct} points, got {len(x)}")
    distinct = len(np.unique(x))
    if distinct < min_distinct:
        raise ValueError(f"need at least {min_distinct} distinct {names[0]} values, got {distinct}")
    return x, y


# ----------------------------------------------------------------------------------------------- power law


def curve(params: dict, x: Values) -> np.ndarray:
    """The fitted curve at x, for either law fitted here: a·x^(−alpha) + c, or k·x^beta for N*(C).

    Parameters broadcast against x, so arrays of bootstrap draws (shaped (S, 1)) give one curve per draw."""
    x = np.asarray(x, dtype=float)
    if "k" in params:
        return params["k"] * x ** params["beta"]
    return params["a"] * x ** -params["alpha"] + params["c"]


def _profile(log_x: np.ndarray, y: np.ndarray, cs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each candidate c at once: the log-log regression's a and alpha, and that curve's squared error in y.

    A c whose regression slope is not negative (alpha <= 0) is infeasible and gets an infinite error."""
    log_rest = np.log(y[None, :] - cs[:, None])
    centred_x = log_x - log_x.mean()
    slope = (log_rest - log_rest.mean(axis=1, keepdims=True)) @ centred_x / (centred_x @ centred_x)
    log_a = log_rest.mean(axis=1) - slope * log_x.mean()
    predicted = np.exp(log_a[:, None] + slope[:, None] * log_x[None, :]) + cs[:, None]
    rss = ((y[None, :] - predicted) ** 2).sum(axis=1)
    return np.where(slope < 0, rss, np.inf), np.exp(log_a), -slope


def _starting_cs(y_min: float) -> np.ndarray:
    """c from 0 to just below min y: linear for the bulk, geometric in (min y − c) for curves that have nearly
    saturated, where the error changes fastest with c."""
    top = C_CEILING * y_min
    linear = np.linspace(0.0, top, C_GRID)
    near_min = y_min - np.geomspace(y_min - top, y_min, C_GRID)
    return np.unique(np.clip(np.concatenate([linear, near_min]), 0.0, top))


def fit_power_law(x: Values, y: Values) -> dict:
    """Fit y = a·x^(−alpha) + c, profiled over c (see the module docstring).

    c minimises the squared error in y; a and alpha are, for that c, the log-log regression's (errors relative
    to y − c), so on noisy data the result can sit slightly off the exact y-space least-squares optimum.

    Returns {"a", "alpha", "c", "rss"} with rss the sum of squared residuals in y. Raises ValueError for fewer
    than 3 (distinct) points, non-positive x or y, or y that does not fall with x (no alpha > 0 fits)."""
    x, y = _checked_pair(("x", "y"), x, y, MIN_DISTINCT)
    log_x = np.log(x)
    cs = _starting_cs(float(y.min()))
    rss, a, alpha = _profile(log_x, y, cs)
    best = int(np.argmin(rss))
    if not np.isfinite(rss[best]):
        raise ValueError("y does not fall with x: no power law with alpha > 0 fits these points")
    for _ in range(ZOOM_STEPS):
        bracket = np.linspace(cs[max(best - 1, 0)], cs[min(best + 1, len(cs) - 1)], ZOOM_POINTS)
        cs = np.unique(np.append(bracket, cs[best]))   # keep the best so far: zooming never makes the fit worse
        rss, a, alpha = _profile(log_x, y, cs)
        best = int(np.argmin(rss))
    return {"a": float(a[best]), "alpha": float(alpha[best]), "c": float(cs[best]), "rss": float(rss[best])}


# ----------------------------------------------------------------------------------------------- IsoFLOP


def isoflop_minimum(n: Values, loss: Values) -> dict:
    """One budget's optimal size: the vertex of loss = p0 + p1·log N + p2·(log N)^2 (natural log).

    Returns {"n_opt", "loss_opt", "coefficients": [p0, p1, p2]}. Raises ValueError for fewer than 3 distinct
    sizes, or when the parabola opens downward: then it has no minimum and the sizes do not bracket the optimum."""
    n, loss = _checked_pair(("n", "loss"), n, loss, MIN_DISTINCT, y_positive=False)
    p2, p1, p0 = np.polyfit(np.log(n), loss, 2)
    if p2 <= 0:
        raise ValueError(f"the parabola of loss in log N opens downward (p2 = {p2:.3g} <= 0), so it has no minimum: "
                         f"this budget's sizes (N = {n.min():g} .. {n.max():g}) do not bracket the optimum")
    vertex = -p1 / (2 * p2)
    return {"n_opt": float(np.exp(vertex)), "loss_opt": float(p0 + p1 * vertex + p2 * vertex ** 2),
            "coefficients": [float(p0), float(p1), float(p2)]}


def fit_optimal_size(budgets: Values, n_opts: Values) -> dict:
    """N*(C) = k·C^beta: a least-squares line through (log C, log N*). Returns {"k", "beta"}."""
    budgets, n_opts = _checked_pair(("budgets", "n_opts"), budgets, n_opts, 2)
    beta, log_k = np.polyfit(np.log(budgets), np.log(n_opts), 1)
    return {"k": float(np.exp(log_k)), "beta": float(beta)}


# ----------------------------------------------------------------------------------------------- bootstrap


def _interval(value: float, draws: np.ndarray, level: float) -> dict:
    """The fit on all points with the central ``level`` percentile interval of its bootstrap draws."""
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return {"value": float(value), "low": float(low), "high": float(high)}


def _check_bootstrap(samples: int, level: float) -> None:
    """Fail on settings that would give no draws or a meaningless interval, before any refitting."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")


def bootstrap(fit: Callable[[np.ndarray, np.ndarray], dict], x: Values, y: Values, samples: int = 1000,
              seed: int = 0, level: float = 0.95) -> dict:
    """Percentile intervals for every parameter ``fit`` returns (all its keys but "rss"), from refits on
    ``samples`` resamples of the points with replacement.

    A resample with fewer than 3 distinct x cannot determine a three-parameter law and is skipped, as is one
    that ``fit`` rejects with ValueError; "samples_used" counts the rest. Returns {name: {"value", "low", "high"}
    per parameter, "samples_used", "level", "draws": {name: array of the used resamples' values}}, the draws
    being what ``curve_band`` turns into a confidence band. Deterministic for a given seed."""
    _check_bootstrap(samples, level)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    full = fit(x, y)
    names = [name for name in full if name != "rss"]
    draws: dict[str, list[float]] = {name: [] for name in names}
    rng = np.random.default_rng(seed)
    for picks in rng.integers(0, len(x), size=(samples, len(x))):
        if len(np.unique(x[picks])) < MIN_DISTINCT:
            continue
        try:
            refit = fit(x[picks], y[picks])
        except ValueError:
            continue
        for name in names:
            draws[name].append(refit[name])
    used = len(draws[names[0]])
    if used == 0:
        raise ValueError(f"none of the {samples} resamples could be fitted")
    arrays = {name: np.asarray(values) for name, values in draws.items()}
    result: dict = {name: _interval(full[name], arrays[name], level) for name in names}
    result.update(samples_used=used, level=level, draws=arrays)
    return result


def _by_budget(points: Sequence[dict]) -> tuple[list[float], list[tuple[np.ndarray, np.ndarray]]]:
    """Sorted budgets and each one's (sizes, losses); points belong to a budget by exact equality of C."""
    budgets = sorted({float(point["budget"]) for point in points})
    groups = [(np.array([p["n"] for p in points if float(p["budget"]) == budget], dtype=float),
               np.array([p["loss"] for p in points if float(p["budget"]) == budget], dtype=float))
              for budget in budgets]
    return budgets, groups


def bootstrap_isoflop(points: Sequence[dict], samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Intervals for each budget's minimum and for N*(C) = k·C^beta, from an IsoFLOP sweep's points
    ({"budget": C, "n": N, "loss": L} each).

    Each resample draws every budget's points with replacement within that budget (the sweep's design: the
    budgets are fixed, the runs are noisy), refits every parabola and then the N*(C) line. A resample is skipped
    when a budget keeps fewer than 3 distinct sizes or its parabola opens downward. Returns {"budgets": [{"budget",
    "n_opt": {"value", "low", "high"}, "loss_opt": {...}}, ...], "k": {...}, "beta": {...}, "samples_used",
    "level", "draws": {"k": array, "beta": array}}."""
    _check_bootstrap(samples, level)
    budgets, groups = _by_budget(points)
    if len(budgets) < 2:
        raise ValueError(f"need at least 2 compute budgets to fit N*(C), got {len(budgets)}")
    full_minima = [isoflop_minimum(n, loss) for n, loss in groups]
    full_fit = fit_optimal_size(budgets, [minimum["n_opt"] for minimum in full_minima])

    n_draws, loss_draws, k_draws, beta_draws = [], [], [], []
    rng = np.random.default_rng(seed)
    for _ in range(samples):
        picks = [rng.integers(0, len(n), size=len(n)) for n, _ in groups]
        try:   # isoflop_minimum rejects a budget left with fewer than 3 distinct sizes, or opening downward
            minima = [isoflop_minimum(n[pick], loss[pick]) for (n, loss), pick in zip(groups, picks)]
        except ValueError:
            continue
        optimal = fit_optimal_size(budgets, [minimum["n_opt"] for minimum in minima])
        n_draws.append([minimum["n_opt"] for minimum in minima])
        loss_draws.append([minimum["loss_opt"] for minimum in minima])
        k_draws.append(optimal["k"])
        beta_draws.append(optimal["beta"])
    if not k_draws:
        raise ValueError(f"none of the {samples} resamples could be fitted")

    n_array, loss_array = np.asarray(n_draws), np.asarray(loss_draws)
    draws = {"k": np.asarray(k_draws), "beta": np.asarray(beta_draws)}
    per_budget = [{"budget": budget,
                   "n_opt": _interval(minimum["n_opt"], n_array[:, i], level),
                   "loss_opt": _interval(minimum["loss_opt"], loss_array[:, i], level)}
                  for i, (budget, minimum) in enumerate(zip(budgets, full_minima))]
    return {"budgets": per_budget, "k": _interval(full_fit["k"], draws["k"], level),
            "beta": _interval(full_fit["beta"], draws["beta"], level),
            "samples_used": len(k_draws), "level": level, "draws": draws}


# ----------------------------------------------------------------------------------------------- plots


def curve_band(draws: dict, x: Values, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise central ``level`` interval of the curves of all bootstrap draws at x: the shaded band."""
    curves = curve({name: np.asarray(values)[:, None] for name, values in draws.items()},
                   np.asarray(x, dtype=float)[None, :])
    low, high = np.quantile(curves, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return low, high


def _describe(params: dict) -> str:
    """The legend entry: which law, with its fitted values."""
    if "k" in params:
        return rf"fit $k\,x^{{\beta}}$: k = {params['k']:.3g}, β = {params['beta']:.3f}"
    return rf"fit $a\,x^{{-\alpha}} + c$: a = {params['a']:.3g}, α = {params['alpha']:.3f}, c = {params['c']:.3g}"


def plot_fit(path: str | Path, x: Values, y: Values, fit_result: dict, band: dict | None, xlabel: str,
             ylabel: str, title: str) -> Path:
    """Log-log PNG of the points, the fitted curve and, when ``band`` (a ``bootstrap`` or ``bootstrap_isoflop``
    result) is given, the band its draws span at its level. Returns the path written."""
    from pipeline.measure.plots import plt, save_figure   # matplotlib only when plotting: the fits need numpy alone

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    grid = np.geomspace(x.min(), x.max(), 200)
    fig, ax = plt.subplots(figsize=(6, 4))
    if band is not None:
        low, high = curve_band(band["draws"], grid, band["level"])
        ax.fill_between(grid, low, high, alpha=0.25, label=f"{band['level']:.0%} bootstrap band")
    ax.plot(grid, curve(fit_result, grid), label=_describe(fit_result))
    ax.scatter(x, y, color="black", s=16, zorder=3, label="points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, Path(path))
