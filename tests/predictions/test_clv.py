"""The lifetime-value models against the published answers on CDNOW (Fader, Hardie & Lee 2005;
shared/data/SOURCES.md), and their behaviour at the edges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from predictions import clv

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "cdnow"
if not DATA.exists():
    DATA = Path("/work/shared/data/cdnow")


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    return pd.read_csv(DATA / "cdnow_customers_summary.csv")


@pytest.fixture(scope="module")
def repeat() -> pd.DataFrame:
    return pd.read_csv(DATA / "cdnow_customers_summary_with_transactions.csv")


def test_bgnbd_on_cdnow_reproduces_the_published_parameters(summary):
    params = clv.fit_bgnbd(summary.frequency, summary.recency, summary["T"])
    assert len(summary) == 2357
    assert (round(params.r, 4), round(params.alpha, 4), round(params.a, 4), round(params.b, 4)) == (
        0.2426,
        4.4135,
        0.7929,
        2.4258,
    )
    assert round(params.log_likelihood, 2) == -9582.43


def test_gamma_gamma_on_the_946_cdnow_repeat_customers_reproduces_the_published_parameters(repeat):
    assert int((repeat.x > 0).sum()) == 946
    params = clv.fit_gamma_gamma(repeat.x, repeat.zbar)
    assert (round(params.p, 3), round(params.q, 3), round(params.v, 3)) == (6.249, 3.745, 15.448)


def test_expected_purchases_and_probability_alive_follow_the_paper(summary):
    params = clv.fit_bgnbd(summary.frequency, summary.recency, summary["T"])
    x, t_x, T = np.array([0, 2, 2, 7]), np.array([0, 30.43, 5.0, 35.0]), np.full(4, 38.86)
    alive = clv.probability_alive(params, x, t_x, T)
    expected = clv.expected_purchases(params, 39, x, t_x, T)
    # Never came back: certainly "alive" in the model's sense; the same two purchases long ago
    # (t_x 5) make death likelier than recently (t_x 30.43), and more purchases, more expected.
    assert alive[0] == 1.0 and alive[2] < alive[1]
    assert expected[2] < expected[1] < expected[3]
    # The whole base's expected purchases in the next 39 weeks against the model's population
    # expectation: same order of magnitude as the 1,788 repeat purchases the paper's holdout saw.
    total = clv.expected_purchases(params, 39, summary.frequency, summary.recency, summary["T"]).sum()
    assert 1500 < total < 2100


def test_expected_spend_moves_from_the_population_mean_towards_the_customers_own(repeat):
    params = clv.fit_gamma_gamma(repeat.x, repeat.zbar)
    population = params.p * params.v / (params.q - 1)
    spend = clv.expected_spend(params, np.array([0, 1, 20]), np.array([0.0, 100.0, 100.0]))
    assert spend[0] == pytest.approx(population)
    assert population < spend[1] < spend[2] < 100


def test_a_handful_of_customers_is_not_enough_data():
    with pytest.raises(clv.NotEnoughData, match="at least 50"):
        clv.fit_bgnbd([1, 0, 2], [3, 0, 5], [10, 10, 10])


def test_customers_who_never_came_back_are_not_enough_data():
    zeros = np.zeros(200)
    with pytest.raises(clv.NotEnoughData, match="no customer bought twice"):
        clv.fit_bgnbd(zeros, zeros, np.full(200, 30.0))


def test_too_few_repeat_customers_to_fit_spend():
    with pytest.raises(clv.NotEnoughData, match="repeat customers"):
        clv.fit_gamma_gamma([1, 2, 0, 0], [10.0, 12.0, 0.0, 0.0])


def test_fitting_in_whole_weeks_gives_parameters_in_days_close_to_the_exact_fit(summary):
    exact = clv.fit_bgnbd(summary.frequency, summary.recency, summary["T"])
    days = clv.fit_bgnbd_in_periods(summary.frequency, summary.recency * 7, summary["T"] * 7, period=7)
    assert days.alpha / 7 == pytest.approx(exact.alpha, rel=0.05)
    assert (days.r, days.a, days.b) == pytest.approx((exact.r, exact.a, exact.b), rel=0.05)


def test_the_answer_does_not_depend_on_where_the_search_starts(summary):
    exact = clv.fit_bgnbd(summary.frequency, summary.recency, summary["T"])
    far = clv.BgNbdParams(r=2.0, alpha=40.0, a=0.1, b=9.0, log_likelihood=0.0)
    again = clv.fit_bgnbd(summary.frequency, summary.recency, summary["T"], start=far)
    assert (again.r, again.alpha, again.a, again.b) == pytest.approx((exact.r, exact.alpha, exact.a, exact.b), abs=5e-5)


def _shop_without_dropout(customers: int, orders: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orders at uniformly random days of the last 400, customers drawn with a skew, nobody ever
    leaving: the likelihood's maximum lies far out on the ridge a -> 0, b -> infinity."""
    rng = np.random.default_rng(seed)
    who = np.floor(rng.random(orders) ** 1.5 * customers).astype(int)
    age = np.floor(rng.random(orders) * 400)
    days = np.unique(np.column_stack([who, age]), axis=0)  # by customer, then age ascending
    _, first, count = np.unique(days[:, 0], return_index=True, return_counts=True)
    T, recency = days[first + count - 1, 1], days[first, 1]
    return count - 1.0, T - recency, T


@pytest.fixture(scope="module")
def no_dropout():
    x, t_x, T = _shop_without_dropout(100_000, 500_000, seed=0)
    return (x, t_x, T), clv.fit_bgnbd_in_periods(x, t_x, T, period=7.0)


@pytest.mark.parametrize(
    ("r", "a", "b"),
    # Points out on the ridge, where one night's fit on such a shop can end: a search starting at
    # each of these crawled along the ridge until it gave up (and the run kept an older model).
    [(5.3, 1e-3, 1e6), (5.0, 1e-3, 1e7), (5.3, 1e-3, 1e7), (5.0, 1e-4, 1e6)],
)
def test_a_start_out_on_the_ridge_of_a_shop_without_dropout_still_fits(no_dropout, r, a, b):
    (x, t_x, T), fresh = no_dropout
    again = clv.fit_bgnbd_in_periods(
        x, t_x, T, period=7.0, start=clv.BgNbdParams(r=r, alpha=r * 57.4, a=a, b=b, log_likelihood=0.0)
    )
    assert again.a < 0.01 and again.b > 1000  # the shop's customers do not drop out
    # On a flat ridge the parameters may differ a little; the fit is as good.
    assert (again.r, again.alpha) == pytest.approx((fresh.r, fresh.alpha), rel=1e-2)
    assert again.log_likelihood == pytest.approx(fresh.log_likelihood, rel=1e-6)
