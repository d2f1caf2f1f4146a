# covers: BAE-4
"""The budget-aware learning rate against BAE-4 written out, over many T, τ, ‖θ_Low‖ and η:

    μ_τ = max(η_t, β_τ),  β_τ = p(τ)·(2σ(‖θ_Low‖₂) − 1)·η_0,  p(τ) = (2T − 2τ)/(2T − τ).

The shape properties alone (p(0) = 1, decreasing, p(T) = 0) also hold for other curves, e.g.
(T − τ)/T, so the oracle here is the formula itself, never ``bae.progress_factor``."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refimpl.fl import bae


def literal_p(tau: int, T: int) -> float:
    return (2 * T - 2 * tau) / (2 * T - tau)


@st.composite
def schedule(draw):
    T = draw(st.integers(1, 500))
    return T, draw(st.integers(0, T))


@given(schedule())
def test_progress_factor_is_the_spec_curve(ttau):
    T, tau = ttau
    assert bae.progress_factor(tau, T) == pytest.approx(literal_p(tau, T), rel=1e-15, abs=0)


@given(schedule(), st.floats(0, 50), st.floats(1e-4, 1.0), st.floats(0.01, 1.0))
def test_budget_lr_is_the_spec_formula(ttau, norm, lr0, frac):
    T, tau = ttau
    lr_t = lr0 * frac  # η_t <= η_0 (LT-1)
    beta = literal_p(tau, T) * (2.0 / (1.0 + math.exp(-norm)) - 1.0) * lr0
    mu = bae.budget_lr(lr_t, lr0, norm, tau, T)
    assert mu == pytest.approx(max(lr_t, beta), rel=1e-13, abs=0)
    assert mu >= lr_t


def test_progress_factor_by_hand():
    """BAE-4 with T = 4: p = 1, 6/7, 2/3, 2/5, 0 (not the linear 1, 3/4, 1/2, 1/4, 0)."""
    got = [bae.progress_factor(tau, 4) for tau in range(5)]
    assert got == pytest.approx([1, 6 / 7, 2 / 3, 2 / 5, 0], rel=1e-15)
