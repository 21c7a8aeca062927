"""The promotion gate's pure rules: the decision table (base, significance, champion margin) and the registration
blockers."""

from __future__ import annotations

import pytest
from helpers import G, M, g, m

from medloc_core.registry import gate
from medloc_core.registry.gate import PromotionDecision, decide_promotion

DECISIONS = [
    # (candidate, champion, base, margin, require_base, promote, reason fragment)
    (g(60), None, m(20), 0.0, True, True, "there is no current champion"),
    (m(60), None, None, 0.0, True, False, "base model has no value"),
    (m(60), None, None, 0.0, False, True, "there is no current champion"),
    (m(20), None, m(20), 0.0, True, False, "does not beat the base model"),  # tie with base
    (m(10), None, m(20), 0.0, False, True, "there is no current champion"),  # base check off
    (m(None), None, m(20), 0.0, True, False, "candidate has no value"),
    (m(float("nan")), None, m(20), 0.0, True, False, "candidate has a non-finite value (nan)"),
    (m(float("inf")), m(90), m(20), 0.0, True, False, "candidate has a non-finite value (inf)"),
    (m(float("-inf")), None, m(20), 0.0, False, False, "non-finite"),
    (g(60), m(float("nan")), m(20), 0.0, True, False, "champion has no value"),
    (m(60), None, m(float("inf")), 0.0, True, False, "base model has no value"),
    (g(60), m(50), m(20), 0.0, True, True, "beats the champion (50) by 10 > margin 0"),
    (g(60), m(60), m(20), 0.0, True, False, "does not beat the champion"),  # tie with champion
    (g(60), m(59.5), m(20), 1.0, True, False, "by more than margin 1"),  # below margin
    (g(60), m(59), m(20), 1.0, True, False, "difference 1"),  # exactly the margin is not enough
    (g(60.5), m(59), m(20), 1.0, True, True, "by 1.5 > margin 1"),
    (g(60), m(70), m(20), 0.0, True, False, "does not beat the champion (70)"),
    (g(60), m(None, **{"eval/mIoU": 0.5}), m(20), 0.0, True, False, "champion has no value"),
    (m(15), m(10), m(20), 0.0, True, False, "does not beat the base model"),  # beats champion, not base
    # the paired gain over the base must be significant (lower bound > 0); the reason states the interval
    (
        g(60, 3.4, -5.0, 12.6),
        None,
        m(56.6),
        0.0,
        True,
        False,
        "not significant: eval/gain/A@0.5 = +3.4 [-5, +12.6]",
    ),
    (g(60, 3.4, 0.0, 12.6), None, m(56.6), 0.0, True, False, "the interval reaches 0"),  # 0 is not above 0
    (
        g(60, 3.4, 0.1, 12.6),
        None,
        m(56.6),
        0.0,
        True,
        True,
        "significant: eval/gain/A@0.5 = +3.4 [+0.1, +12.6]",
    ),
    (
        g(60, 3.4, -5.0, 12.6),
        m(50),
        m(56.6),
        0.0,
        True,
        False,
        "not significant",
    ),  # beats champion, noise vs base
    (m(60), None, m(20), 0.0, True, False, "no paired-bootstrap interval"),  # no interval: cannot tell
    (
        m(60, **{G: 40.0, f"{G}_ci_low": float("nan"), f"{G}_ci_high": 50.0}),
        None,
        m(20),
        0.0,
        True,
        False,
        "no paired",
    ),
    (
        g(60, 3.4, -5.0, 12.6),
        None,
        m(56.6),
        0.0,
        False,
        True,
        "there is no current champion",
    ),  # base check off
]


@pytest.mark.parametrize("candidate,champion,base,margin,require_base,promote,fragment", DECISIONS)
def test_decide_promotion_table(candidate, champion, base, margin, require_base, promote, fragment):
    decision = decide_promotion(candidate, champion, base, margin=margin, require_beats_base=require_base)
    assert isinstance(decision, PromotionDecision)
    assert decision.promote is promote
    assert any(fragment in r for r in decision.reasons), decision.reasons


def test_significance_check_can_be_turned_off():
    cand, base = g(60, 3.4, -5.0, 12.6), m(56.6)
    assert not decide_promotion(cand, None, base).promote  # on by default
    assert decide_promotion(cand, None, base, require_significant_gain=False).promote


def test_decide_promotion_other_metric_and_bad_margin():
    cand = {"eval/A@0.8": 40.0, M: 10.0, "eval/gain/A@0.8": 35.0, "eval/gain/A@0.8_ci_low": 20.0}
    cand["eval/gain/A@0.8_ci_high"] = 50.0
    champ = {"eval/A@0.8": 30.0, M: 50.0}
    base = {"eval/A@0.8": 5.0, M: 5.0}
    assert decide_promotion(cand, champ, base, metric="eval/A@0.8").promote is True
    assert decide_promotion(cand, champ, base).promote is False
    with pytest.raises(ValueError, match="margin"):
        decide_promotion(cand, champ, base, margin=-1)


@pytest.mark.parametrize(
    ("metrics", "history", "fragment"),
    [
        ({"eval/parse_failure_rate": 0.95}, [], "failed to parse on 95%"),
        ({"eval/parse_failure_rate": 0.90}, [], "failed to parse on 90%"),
        (
            {"eval/parse_failure_rate": 0.0},
            [{"train/frac_reward_zero_std": 1.0}] * 12,
            "every GRPO group was dead",
        ),
        ({"eval/parse_failure_rate": 0.89}, [{"train/frac_reward_zero_std": 0.5}] * 12, None),
        # one live step among the last ten is enough: some group still had a gradient
        (
            {"eval/parse_failure_rate": 0.0},
            [{"train/frac_reward_zero_std": 1.0}] * 9 + [{"train/frac_reward_zero_std": 0.75}],
            None,
        ),
        # dead only before the last ten steps
        (
            {"eval/parse_failure_rate": 0.0},
            [{"train/frac_reward_zero_std": 1.0}] * 5 + [{"train/frac_reward_zero_std": 0.0}] * 10,
            None,
        ),
    ],
)
def test_registration_blockers(metrics, history, fragment) -> None:
    reasons = gate.registration_blockers(metrics, history)
    if fragment is None:
        assert reasons == []
    else:
        assert len(reasons) == 1 and fragment in reasons[0], reasons
