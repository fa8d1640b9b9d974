"""Functional fingerprints: equivalent rules fall together, different ones do not;
pruning of invalid and degenerate rules."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from nos.search.fingerprint import fingerprint
from nos.search.space import Space

EQUIVALENT = [
    ["g", "g * 1", "g + 0", "(g + g) / 2", "1 * g - 0", "--g", "g / 1", "g^1"],
    ["adam", "m_hat / (sqrt(v_hat) + eps)", "m / (1 - beta1^t) / (sqrt(v_hat) + 1e-8)"],
    ["exp(sign(g) * sign(m)) * g", "g * exp(sign(m) * sign(g))", "powersign_text"],
    ["g + noise", "noise + g"],
    ["sign(g) + sign(m)", "sign(m) + sign(rmsprop)", "sign(sign(g)) + sign(m)"],
]
DIFFERENT = ["g", "2 * g", "sign(g)", "clip(g, 1e-4)", "clip(g, 1e-3)", "clip(g, 1e-5)",
             "m", "m_hat", "v_hat * g", "adam", "rmsprop", "g + noise", "drop(g, 0.3)",
             "drop(g, 0.5)", "ld * g", "cd(1) * g", "rd(1) * g", "g^3", "g + 1e-4 * w",
             "g + 1e-3 * w", "sqrt(abs(g))", "log(abs(g))", "exp(g) - exp(m_hat)"]


@pytest.mark.parametrize("group", EQUIVALENT, ids=[g[0] for g in EQUIVALENT])
def test_equivalent_rules_share_a_fingerprint(group):
    texts = [("param base = 2.718281828459045\nupdate = exp(log(base) * sign(g) * sign(m)) * g"
              if t == "powersign_text" else t) for t in group]
    prints = [fingerprint(t) for t in texts]
    assert all(p.status == "ok" for p in prints)
    assert len({p.digest for p in prints}) == 1, [(t, p.digest) for t, p in zip(texts, prints)]


def test_different_rules_have_different_fingerprints():
    prints = {t: fingerprint(t) for t in DIFFERENT}
    assert all(p.status == "ok" for p in prints.values())
    for (a, pa), (b, pb) in itertools.combinations(prints.items(), 2):
        assert pa.digest != pb.digest, (a, b)


@pytest.mark.parametrize("text,status", [
    ("g ^ g", "invalid"), ("exp(exp(g * 100))", "invalid"), ("log(abs(g)) / 0 * g", "invalid"),
    ("0 * g", "degenerate"), ("exp(g) * 0", "degenerate"), ("1 + 0 * g", "degenerate"),
    ("w", "degenerate"), ("noise", "degenerate"), ("1e-4 * w - clip(0 * g, 1)", "degenerate"),
    ("drop(g, 1)", "degenerate"), ("foo(g)", "invalid"), ("drop(g, g)", "invalid"),
])
def test_pruning_statuses(text, status):
    result = fingerprint(text)
    assert result.status == status, result
    assert result.digest is None and result.reason


def _sample_prints(seed: int, n: int) -> list:
    space = Space()
    rng = np.random.default_rng(seed)
    return [fingerprint(space.to_text(space.sample(rng))) for _ in range(n)]


def test_default_space_sample_counts_are_stable():
    """200 rules of the default space drawn with seed 0: how many are pruned, and how many
    behave like one drawn before.  A change in these counts is a change in what the probe
    calls invalid, degenerate or equal (see the cache savings in the README)."""
    prints = _sample_prints(0, 200)
    counts = Counter(p.status for p in prints)
    assert counts == {"ok": 121, "degenerate": 51, "invalid": 28}
    digests = [p.digest for p in prints if p.status == "ok"]
    assert len(digests) - len(set(digests)) == 2  # repeats the cache would not train
    assert _sample_prints(0, 200) == prints  # the same draws, the same verdicts


@pytest.mark.parametrize("group", [
    # a comparison mask, a where and a clamp at zero are one rule
    ["max(g, 0)", "where(g > 0, g, 0)", "g * (g > 0)"],
    # a number kept per tensor and the same number computed from t
    ["state c = where(t == 1, 1, c) * 0.5\nupdate = c * g", "0.5^t * g"],
    # a switch at its default and the branch it takes
    ["param flag = 0 in [0, 1]\nupdate = where(flag, sign(g), g)", "g"],
    # Adafactor's factored average of one matrix, row and column states against the formula
    ["state r = lerp(r, rowmean(g^2), 0.5)\nstate c = lerp(c, colmean(g^2), 0.5)\n"
     "update = g / sqrt(where(ndim >= 2, r * c / colmean(r), r) + 1)",
     "state r = 0.5 * r + 0.5 * rowmean(g^2)\nstate c = 0.5 * c + 0.5 * colmean(g^2)\n"
     "update = g / sqrt(where(ndim >= 2, r * c / colmean(r), r) + 1)"],
])
def test_tensor_level_rules_that_agree_share_a_fingerprint(group):
    prints = {fingerprint(text) for text in group}
    assert len(prints) == 1 and next(iter(prints)).status == "ok", prints


def test_tensor_level_rules_that_differ_do_not():
    texts = ["g / (rms(g) + 1e-8)", "g / (norm(g) + 1e-8)", "g * norm(w) / norm(g)",
             "lerp(g, sign(g), 0.5)", "g - rowmean(g)", "g - colmean(g)", "g - mean(g)"]
    digests = [fingerprint(t).digest for t in texts]
    assert None not in digests and len(set(digests)) == len(texts)


@pytest.mark.parametrize("group", [
    # a reduction over both probe tensors, written three ways
    ["g / gnorm(g)", "g / sqrt(gsum(g^2))", "g / (grms(g) * sqrt(22))"],
    ["clip_gnorm(g, 1e-3)", "g * min(1e-3 / (gnorm(g) + 1e-6), 1)"],
    # the parameter's new value and the step that gives it
    ["w = w - g", "g"],
    ["w = w - lr * m", "m"],
    # a buffer from a number and the number added
    ["state s = s + g from 1\nupdate = s", "state s = s + g\nupdate = s + 1"],
    # a window of one value is the value
    ["winmax(norm(g), 1) * g", "norm(g) * g", "winmin(norm(g), 1) * g"],
])
def test_rules_with_the_later_constructs_that_agree_share_a_fingerprint(group):
    prints = {fingerprint(text) for text in group}
    assert len(prints) == 1 and next(iter(prints)).status == "ok", prints


def test_rules_with_the_later_constructs_that_differ_do_not():
    """A global reduction reads both probe tensors (not each its own), a from value and a
    window change the steps, and w = expr is not update = expr."""
    texts = ["g / gnorm(g)", "g / norm(g)", "gsum(g) * g", "sum(g) * g", "gamax(g) * g",
             "amax(g) * g", "state s = s + g from w\nupdate = s", "state s = s + g\nupdate = s",
             "winmax(norm(g), 3) * g", "winmin(norm(g), 3) * g", "w = w - 2 * g",
             "w = lerp(w, g, 0.5)", "cosine(g, w) * g", "dot(g, w) * g"]
    digests = [fingerprint(t).digest for t in texts]
    assert None not in digests and len(set(digests)) == len(texts), list(zip(texts, digests))


def test_a_rule_that_sets_w_to_what_ignores_the_gradient_is_degenerate():
    assert fingerprint("w = 0.5 * w").status == "degenerate"
    assert fingerprint("w = w + 0 * gnorm(g)").status == "degenerate"
    assert fingerprint("w = w / gsum(g - g)").status == "invalid"
