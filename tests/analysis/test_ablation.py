"""Ablation curves: units found in dense, convolutional and recurrent children, the curve's
ends (the network as trained; chance once every unit is zeroed), its area, and that the
model is left as it was."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from torch import nn

from nos.analysis.ablation import ablated, ablation_curve, count_units


def accuracy_on(x: torch.Tensor, y: torch.Tensor):
    def score(model: nn.Module) -> float:
        with torch.no_grad():
            return float((model(x).argmax(-1) == y).float().mean())
    return score


@cache
def trained_mlp(classes: int = 4, per_class: int = 25):
    """A 2-32-32-4 ReLU classifier fitted to four well separated, equally sized clusters
    (trained once per test session: the tests leave it as they found it)."""
    torch.manual_seed(0)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0], [0.0, -3.0]])[:classes]
    y = torch.arange(classes).repeat_interleave(per_class)
    x = centres[y] + 0.5 * torch.randn(len(y), 2)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, classes))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def test_units_of_dense_convolutional_and_recurrent_layers_are_counted():
    mlp, x, _ = trained_mlp()
    assert [n for _, n in count_units(mlp, x[:1])] == [32, 32]
    conv = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Conv1d(4, 6, 3), nn.Tanh(),
                         nn.Flatten(), nn.Linear(6 * 6, 3))
    assert [n for _, n in count_units(conv, torch.randn(1, 1, 10))] == [4, 6]

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(3, 7, batch_first=True)
            self.head = nn.Linear(7, 2)

        def forward(self, x):
            return self.head(self.lstm(x)[0])

    assert [n for _, n in count_units(Recurrent(), torch.randn(1, 5, 3))] == [7]


def test_an_ablated_feature_map_outputs_zero_and_the_others_do_not_change():
    conv = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU())
    x = torch.randn(2, 1, 10)
    before = conv(x)
    with ablated(conv, {conv[1]: torch.tensor([False, True, False, False])}):
        after = conv(x)
    assert torch.equal(after[:, 1], torch.zeros_like(after[:, 1]))
    assert torch.equal(after[:, [0, 2, 3]], before[:, [0, 2, 3]])
    assert torch.equal(conv(x), before)  # the hook is gone


def test_the_curve_runs_from_the_trained_network_to_chance():
    model, x, y = trained_mlp()
    score = accuracy_on(x, y)
    trained = score(model)
    curve = ablation_curve(model, score, x[:1], orders=3, points=None, seed=0)
    assert curve.units == 64 and curve.ablated == list(range(65))
    assert curve.scores[0] == trained > 0.9
    # no unit left: the output is the last layer's bias, one class for every input,
    # and with four equal classes that is exactly chance
    assert curve.scores[-1] == 0.25
    assert 0 <= curve.area <= 1
    assert 0.25 < curve.area < trained
    assert score(model) == trained  # the model is left as it was


def test_points_thin_the_curve_without_changing_the_orders():
    model, x, y = trained_mlp()
    score = accuracy_on(x, y)
    thin = ablation_curve(model, score, x[:1], orders=2, points=5, seed=1)
    assert thin.ablated == [0, 16, 32, 48, 64] and thin.fractions == [0, 0.25, 0.5, 0.75, 1]
    full = ablation_curve(model, score, x[:1], orders=2, points=None, seed=1)
    assert thin.scores == [full.scores[k] for k in thin.ablated]
    assert thin.to_dict()["area"] == thin.area


def test_a_network_without_units_and_a_curve_without_both_ends_are_refused():
    with pytest.raises(ValueError, match="no units to ablate"):
        ablation_curve(nn.Linear(2, 3), lambda m: 1.0, torch.randn(1, 2))
    model, x, y = trained_mlp()
    with pytest.raises(ValueError, match="points must be at least 2"):
        ablation_curve(model, accuracy_on(x, y), x[:1], points=1)
