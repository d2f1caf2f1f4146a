# covers: SAP-2, CONV-6
"""SAP-2's keep count with CONV-6's exact rational, exhaustively where floats go wrong.

For γ = 0.29, 0.35, 0.57, 0.58, 0.7 the float product γ·numel falls just below an integer for
some numel ≤ 5000 (0.29·100 = 28.999999999999996), so n_drop = floor(γ·numel) computed in
floats drops one entry too few. A property drawing a few numel values rarely meets them; this
test checks every numel from 0 to 5000 against the decimal as written."""

from fractions import Fraction

import pytest

from refimpl import sap as S

HARD_GAMMAS = ("0.29", "0.35", "0.57", "0.58", "0.7")


@pytest.mark.parametrize("gamma", HARD_GAMMAS)
def test_keep_count_exact_for_every_numel(gamma):
    g = Fraction(gamma)
    for numel in range(5001):
        expect = numel - (g.numerator * numel) // g.denominator
        assert S.keep_count(numel, float(gamma)) == expect, (gamma, numel)
        assert S.keep_count(numel, gamma) == expect, (gamma, numel)


def test_keep_count_by_hand():
    """100 entries at γ = 0.29: drop exactly 29, keep 71 (floats would keep 72)."""
    assert S.keep_count(100, 0.29) == 71
