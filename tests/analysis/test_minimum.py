"""A rule trained and its network measured: the network measured is the one the evaluation
scored, and the gap is training minus test accuracy."""

from __future__ import annotations

import pytest

from nos.analysis.minimum import MeasureSettings, train_and_measure

CHEAP = MeasureSettings(steps=3, iterations=3, orders=1, points=3, examples=64)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NOS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def test_the_measured_network_is_the_one_the_evaluation_scored():
    measured = train_and_measure("adam", "digits", seed=1, epochs=0.5, lr=0.01, settings=CHEAP)
    result, minimum = measured.evaluation, measured.minimum
    assert result.status == "ok" and minimum is not None
    assert minimum.test_metric == result.test_metric  # trained again: the same network
    assert minimum.gap == minimum.train_metric - minimum.test_metric
    assert minimum.ablation is not None and minimum.ablation.ablated == [0, 24, 48]
    assert minimum.ablation.scores[0] == minimum.test_metric
    assert set(minimum.to_dict()) >= {"gap", "sharpness", "eigenvalue", "ablation_area"}


def test_a_rule_that_does_not_train_is_not_measured():
    measured = train_and_measure("exp(g * 1e4)", "digits", epochs=0.5, lr=1.0, settings=CHEAP)
    assert measured.evaluation.status == "diverged" and measured.minimum is None
