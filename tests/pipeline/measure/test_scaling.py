"""Scaling-law fits: known laws are recovered, intervals cover the truth and shrink with data, bad input is named."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.measure.scaling import (bootstrap, bootstrap_isoflop, curve, curve_band, fit_optimal_size, fit_power_law,
                                      isoflop_minimum, plot_fit)

TRUE = {"a": 5.0, "alpha": 0.3, "c": 1.5}


def law(x, a=TRUE["a"], alpha=TRUE["alpha"], c=TRUE["c"]):
    return a * np.asarray(x, dtype=float) ** -alpha + c


def noisy(x, noise, seed):
    """The true law with multiplicative Gaussian noise of relative size ``noise``."""
    return law(x) * (1 + noise * np.random.default_rng(seed).standard_normal(len(x)))


# ----------------------------------------------------------------------------------------------- power law


@pytest.mark.parametrize("params, x", [
    (TRUE, np.geomspace(1e1, 1e5, 12)),
    ({"a": 2.0, "alpha": 0.5, "c": 0.0}, np.geomspace(1e1, 1e5, 12)),          # no floor
    ({"a": 0.4, "alpha": 0.9, "c": 3.0}, np.geomspace(1e1, 1e5, 12)),          # ends 4e-6 (relative) above c
    # coarse and steep: a linear grid of c alone would land at c = 0
    ({"a": 4.0, "alpha": 1.5, "c": 2.5}, np.geomspace(1, 1e3, 6)),
])
def test_power_law_recovers_exact_parameters(params, x):
    fit = fit_power_law(x, law(x, **params))
    for name, value in params.items():
        assert fit[name] == pytest.approx(value, rel=1e-6, abs=1e-8), name
    assert fit["rss"] < 1e-12


def test_power_law_with_noise_is_close_to_the_truth():
    x = np.geomspace(1e1, 1e5, 16)
    y = noisy(x, 0.015, seed=3)
    fit = fit_power_law(x, y)
    assert fit["alpha"] == pytest.approx(TRUE["alpha"], abs=0.05)
    assert fit["c"] == pytest.approx(TRUE["c"], abs=0.15)
    assert fit["a"] == pytest.approx(TRUE["a"], rel=0.5)
    assert fit["rss"] == pytest.approx(np.sum((y - curve(fit, x)) ** 2))
    assert 0 <= fit["c"] < y.min() and fit["a"] > 0 and fit["alpha"] > 0
    # the curve fits the points about as well as the law that generated them
    assert fit["rss"] < 2 * np.sum((y - law(x)) ** 2)


def test_power_law_refuses_rising_data():
    x = np.geomspace(1, 100, 5)
    with pytest.raises(ValueError, match="does not fall with x"):
        fit_power_law(x, 1 + x ** 0.2)


# ----------------------------------------------------------------------------------------------- bootstrap


def width(result, name):
    return result[name]["high"] - result[name]["low"]


def test_bootstrap_interval_covers_truth_and_value_is_the_full_fit():
    x = np.geomspace(1e1, 1e5, 16)
    y = noisy(x, 0.015, seed=3)
    result = bootstrap(fit_power_law, x, y, samples=200, seed=0)
    full = fit_power_law(x, y)
    for name in ("a", "alpha", "c"):
        assert result[name]["value"] == full[name]
        assert result[name]["low"] <= result[name]["high"]
        assert len(result["draws"][name]) == result["samples_used"]
    assert "rss" not in result and "rss" not in result["draws"]
    assert result["alpha"]["low"] == pytest.approx(np.quantile(result["draws"]["alpha"], 0.025))
    assert result["alpha"]["high"] == pytest.approx(np.quantile(result["draws"]["alpha"], 0.975))
    for name in ("alpha", "c"):
        assert result[name]["low"] <= TRUE[name] <= result[name]["high"], name
    assert 150 < result["samples_used"] <= 200 and result["level"] == 0.95


def test_bootstrap_narrows_with_more_points_and_less_noise():
    few, many = np.geomspace(1e1, 1e5, 8), np.geomspace(1e1, 1e5, 64)
    base = bootstrap(fit_power_law, few, noisy(few, 0.02, seed=1), samples=150, seed=0)
    more = bootstrap(fit_power_law, many, noisy(many, 0.02, seed=1), samples=150, seed=0)
    quieter = bootstrap(fit_power_law, few, noisy(few, 0.002, seed=1), samples=150, seed=0)
    for name in ("alpha", "c"):
        assert width(more, name) < width(base, name), name
        assert width(quieter, name) < 0.5 * width(base, name), name


def test_bootstrap_is_deterministic_given_the_seed():
    x = np.geomspace(1e1, 1e4, 8)
    y = noisy(x, 0.02, seed=2)
    first, again = (bootstrap(fit_power_law, x, y, samples=40, seed=7) for _ in range(2))
    other = bootstrap(fit_power_law, x, y, samples=40, seed=8)
    assert np.array_equal(first["draws"]["alpha"], again["draws"]["alpha"])
    assert first["alpha"] == again["alpha"]
    assert not np.array_equal(first["draws"]["alpha"], other["draws"]["alpha"])


def test_bootstrap_skips_resamples_with_fewer_than_three_distinct_x():
    # with three points the only usable resamples are permutations, which refit to the same law
    x = np.array([10.0, 100.0, 1000.0])
    result = bootstrap(fit_power_law, x, law(x), samples=200, seed=0)
    assert 0 < result["samples_used"] < 100   # about 2/9 of resamples are permutations
    assert result["alpha"]["low"] == pytest.approx(result["alpha"]["high"])


def test_bootstrap_never_refits_fewer_than_three_distinct_x():
    seen = []

    def line(x, y):                                   # a fit that would accept two distinct x
        seen.append(len(np.unique(x)))
        return fit_optimal_size(x, y)

    x = np.geomspace(1e18, 1e21, 4)
    result = bootstrap(line, x, 0.1 * x ** 0.5, samples=100, seed=0)
    assert min(seen) >= 3 and result["samples_used"] == len(seen) - 1 < 100
    assert result["beta"]["low"] == pytest.approx(0.5) == result["beta"]["high"]


def test_bootstrap_checks_its_settings():
    x = np.geomspace(1, 100, 5)
    with pytest.raises(ValueError, match="level"):
        bootstrap(fit_power_law, x, law(x), samples=10, level=1.5)
    with pytest.raises(ValueError, match="samples"):
        bootstrap(fit_power_law, x, law(x), samples=0)


# ----------------------------------------------------------------------------------------------- IsoFLOP


def test_isoflop_minimum_is_the_vertex_of_a_known_parabola():
    p0, p1, p2 = 5.0, -0.8, 0.05                     # vertex at log N = 8, loss 5 − 0.64 / 0.2 = 1.8
    n = np.exp(np.linspace(6.5, 10.0, 5))
    result = isoflop_minimum(n, p0 + p1 * np.log(n) + p2 * np.log(n) ** 2)
    assert result["n_opt"] == pytest.approx(np.exp(8.0), rel=1e-9)
    assert result["loss_opt"] == pytest.approx(1.8, rel=1e-9)
    assert result["coefficients"] == pytest.approx([p0, p1, p2], rel=1e-9)


def test_isoflop_minimum_refuses_a_downward_parabola_and_too_few_sizes():
    n = np.array([1e6, 1e7, 1e8, 1e9])
    with pytest.raises(ValueError, match="opens downward.*do not bracket the optimum"):
        isoflop_minimum(n, 3.0 - 0.01 * (np.log(n) - 17) ** 2)
    with pytest.raises(ValueError, match="at least 3 points, got 2"):
        isoflop_minimum([1e6, 1e7], [3.0, 2.9])
    with pytest.raises(ValueError, match="at least 3 distinct n values, got 2"):
        isoflop_minimum([1e6, 1e6, 1e7], [3.0, 3.0, 2.9])


def test_fit_optimal_size_recovers_k_and_beta():
    budgets = np.geomspace(1e18, 1e22, 5)
    result = fit_optimal_size(budgets, 0.09 * budgets ** 0.5)
    assert result["k"] == pytest.approx(0.09, rel=1e-9)
    assert result["beta"] == pytest.approx(0.5, rel=1e-9)
    with pytest.raises(ValueError, match="at least 2 points, got 1"):
        fit_optimal_size([1e18], [1e8])


E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28     # Chinchilla's fitted L(N, D)
BUDGETS = [1e18, 1e19, 1e20]
SIZES = [np.geomspace(2e7, 8e8, 5), np.geomspace(1e8, 4e9, 5), np.geomspace(3e8, 1.2e10, 5)]


def chinchilla(n, budget):
    return E + A / n ** ALPHA + B / (budget / (6 * n)) ** BETA


def test_bootstrap_isoflop_covers_the_exponent_of_a_known_loss_surface():
    grid = np.geomspace(1e6, 1e12, 200_001)
    dense = [grid[np.argmin(chinchilla(grid, budget))] for budget in BUDGETS]
    reference = fit_optimal_size(BUDGETS, dense)["beta"]
    assert reference == pytest.approx(BETA / (ALPHA + BETA), abs=1e-3)   # the brute force is itself right

    rng = np.random.default_rng(0)
    points = [{"budget": budget, "n": n, "loss": chinchilla(n, budget) * (1 + 0.002 * rng.standard_normal())}
              for budget, sizes in zip(BUDGETS, SIZES) for n in sizes]
    result = bootstrap_isoflop(points, samples=300, seed=0)
    assert result["beta"]["low"] <= reference <= result["beta"]["high"]
    assert result["beta"]["high"] - result["beta"]["low"] < 0.3
    assert [row["budget"] for row in result["budgets"]] == BUDGETS
    for row, n_star in zip(result["budgets"], dense):
        assert row["n_opt"]["value"] == pytest.approx(n_star, rel=0.1)
        assert row["n_opt"]["low"] <= row["n_opt"]["value"] <= row["n_opt"]["high"]
        assert row["loss_opt"]["value"] == pytest.approx(chinchilla(n_star, row["budget"]), rel=0.01)
    assert len(result["draws"]["beta"]) == result["samples_used"] > 100


def test_bootstrap_isoflop_needs_two_budgets():
    points = [{"budget": 1e18, "n": n, "loss": chinchilla(n, 1e18)} for n in SIZES[0]]
    with pytest.raises(ValueError, match="at least 2 compute budgets"):
        bootstrap_isoflop(points, samples=10)


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("x, y, message", [
    ([1.0, 2.0], [3.0, 2.0], "at least 3 points, got 2"),
    ([1.0, 1.0, 1.0, 2.0], [3.0, 3.0, 3.0, 2.0], "at least 3 distinct x values, got 2"),
    ([0.0, 1.0, 2.0], [3.0, 2.0, 1.5], "x must be positive"),
    ([1.0, 2.0, 3.0], [3.0, -2.0, 1.5], "y must be positive"),
    ([1.0, 2.0, 3.0], [3.0, np.nan, 1.5], "y must be finite"),
    ([1.0, 2.0, 3.0], [3.0, 2.0], "differ in length: 3 and 2"),
])
def test_power_law_names_bad_input(x, y, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(x, y)


def test_non_positive_sizes_and_budgets_are_named():
    with pytest.raises(ValueError, match="n must be positive"):
        isoflop_minimum([-1.0, 1e6, 1e7], [3.0, 2.0, 2.5])
    with pytest.raises(ValueError, match="n_opts must be positive"):
        fit_optimal_size([1e18, 1e19], [1e8, 0.0])


# ----------------------------------------------------------------------------------------------- plots


def test_band_of_identical_draws_is_the_curve_and_plot_writes_a_png(tmp_path):
    x = np.geomspace(1e1, 1e5, 10)
    fit = fit_power_law(x, law(x))
    draws = {name: np.full(5, value) for name, value in TRUE.items()}
    low, high = curve_band(draws, x, 0.9)
    assert low == pytest.approx(law(x)) and high == pytest.approx(law(x))

    y = noisy(x, 0.02, seed=4)
    result = bootstrap(fit_power_law, x, y, samples=30, seed=0)
    low, high = curve_band(result["draws"], x, result["level"])
    assert np.all(low <= high) and np.any(low < high)
    path = plot_fit(tmp_path / "loss.png", x, y, fit, result, "parameters", "loss", "loss vs size")
    assert path == tmp_path / "loss.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
