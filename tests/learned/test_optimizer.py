"""The learned optimizer as a torch optimizer: the paper's preprocessing, the same steps as
meta-training's unroll, ``nos.Optimizer`` on a checkpoint, state_dict round trips."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

import nos
from nos.learned import (
    Architecture,
    CoordinateLSTM,
    LearnedOptimizer,
    load_checkpoint,
    save_checkpoint,
)
from nos.learned.lstm import preprocess
from nos.learned.meta import Episode
from tests.learned.tiny_task import Blobs


@pytest.fixture(scope="module")
def network() -> CoordinateLSTM:
    """A network with random weights of a usual size, so that its steps are not tiny."""
    torch.manual_seed(3)
    net = CoordinateLSTM()
    torch.nn.init.uniform_(net.head.weight, -0.5, 0.5)
    return net.requires_grad_(False)


@pytest.fixture
def checkpoint(tmp_path, network) -> str:
    path = str(tmp_path / "lstm.pt")
    save_checkpoint(path, network, {"task": "blobs", "seed": 3, "meta_steps": 0})
    return path


def test_preprocessing_is_the_papers():
    p = 10.0
    g = torch.tensor([2.0, -0.5, 1e-3, -1e-3, 1e-6, -2e-5, 0.0], dtype=torch.float64)
    expected = []
    for x in g.tolist():
        if abs(x) >= math.exp(-p):
            expected.append([math.log(abs(x)) / p, math.copysign(1.0, x)])
        else:
            expected.append([-1.0, math.exp(p) * x])
    assert torch.allclose(preprocess(g, p), torch.tensor(expected, dtype=torch.float64))
    assert torch.isfinite(preprocess(torch.zeros(3), p)).all()


def test_the_state_is_80_numbers_per_coordinate_with_the_papers_sizes():
    net = CoordinateLSTM()
    assert net.architecture == Architecture(hidden_size=20, layers=2, preprocess_p=10.0,
                                            output_scale=0.1)
    assert net.architecture.state_floats == 80
    assert net.initial_state(7).shape == (2, 2, 7, 20)


def test_the_optimizer_steps_as_meta_trainings_unroll_does(network):
    """The unroll (all coordinates in one call, differentiable) and the optimizer (one tensor
    at a time, in place) are two implementations of one step: the same child, the same
    minibatches, the same weights after 6 steps."""
    task = Blobs()
    data = task.load(torch.device("cpu"))
    episode = Episode(task, data, network, seed=5, batch_size=32, device=torch.device("cpu"))
    episode.unroll(network, 6)

    torch.manual_seed(5)
    model = task.build_model()
    optimizer = LearnedOptimizer(model.parameters(), network)
    order = torch.Generator().manual_seed(5)
    for _ in range(6):
        index = torch.randint(len(data.train_x), (32,), generator=order)
        optimizer.zero_grad()
        task.loss(model(data.train_x[index]), data.train_y[index]).backward()
        optimizer.step()
    for name, param in model.named_parameters():
        assert torch.allclose(param, episode.params[name], atol=1e-5), name
    start = dict(task.build_model().named_parameters())
    assert any(not torch.allclose(p, start[n]) for n, p in model.named_parameters())


def test_nos_optimizer_on_a_checkpoint_is_the_learned_optimizer(checkpoint):
    model = torch.nn.Linear(4, 3)
    opt = nos.Optimizer(model.parameters(), checkpoint, lr=0.5, total_steps=10, seed=0)
    assert isinstance(opt, LearnedOptimizer)
    assert opt.param_groups[0]["lr"] == 0.5
    before = [p.detach().clone() for p in model.parameters()]

    def closure():
        opt.zero_grad()
        loss = model(torch.ones(2, 4)).square().sum()
        loss.backward()
        return loss

    assert opt.step(closure) is not None
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.state[model.weight]["lstm"].shape == (2, 2, 12, 20)
    assert isinstance(nos.Optimizer(model.parameters(), "adam"), nos.Optimizer)


def test_lr_scales_the_update_and_maximize_flips_it(network):
    def first_step(**kwargs) -> torch.Tensor:
        w = torch.nn.Parameter(torch.zeros(5))
        w.grad = torch.tensor([1.0, -2.0, 0.1, 0.0, 3.0])
        LearnedOptimizer([w], network, **kwargs).step()
        return w.detach()

    unit = first_step()
    assert torch.allclose(first_step(lr=0.25), 0.25 * unit)
    assert torch.allclose(first_step(lr=torch.tensor(0.25)), 0.25 * unit)
    w = torch.nn.Parameter(torch.zeros(5))
    w.grad = -torch.tensor([1.0, -2.0, 0.1, 0.0, 3.0])
    LearnedOptimizer([w], network, maximize=True).step()
    assert torch.allclose(w.detach(), unit)


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": -1.0}, "Invalid learning rate"),
    ({"lr": math.nan}, "Invalid learning rate"),
    ({"beta1": 0.9}, "takes no keyword 'beta1'"),
])
def test_bad_keywords_are_refused(network, kwargs, message):
    with pytest.raises(ValueError, match=message):
        LearnedOptimizer([torch.nn.Parameter(torch.zeros(2))], network, **kwargs)


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 4, generator=generator)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def test_state_dict_round_trip_resumes_bit_identically(checkpoint):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    opt = nos.Optimizer([{"params": model[0].parameters()},
                         {"params": model[2].parameters(), "lr": 0.5}], checkpoint)
    _train(model, opt, 3, seed=1)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain tensors and values only

    resumed_model = copy.deepcopy(model)
    resumed_model.load_state_dict(saved["model"])
    resumed = nos.Optimizer([{"params": resumed_model[0].parameters()},
                             {"params": resumed_model[2].parameters()}], checkpoint)
    resumed.load_state_dict(saved["opt"])
    assert resumed.param_groups[1]["lr"] == 0.5
    _train(model, opt, 2, seed=2)
    _train(resumed_model, resumed, 2, seed=2)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(opt.state[model[0].weight]["lstm"],
                       resumed.state[resumed_model[0].weight]["lstm"])


def test_a_state_of_another_shape_is_refused(checkpoint):
    wide = torch.nn.Linear(3, 2)
    stepped = nos.Optimizer(wide.parameters(), checkpoint)
    wide(torch.ones(1, 3)).sum().backward()
    stepped.step()
    narrow = nos.Optimizer(torch.nn.Linear(2, 2).parameters(), checkpoint)
    with pytest.raises(ValueError, match="state of parameter 0 has shape"):
        narrow.load_state_dict(stepped.state_dict())
    assert not narrow.state


def test_a_pickled_optimizer_keeps_its_network(checkpoint):
    model = torch.nn.Linear(3, 2)
    opt = nos.Optimizer(model.parameters(), checkpoint)
    clone = copy.deepcopy(opt)
    assert isinstance(clone, LearnedOptimizer) and clone.checkpoint == checkpoint
    network, training = load_checkpoint(checkpoint)
    assert training == {"task": "blobs", "seed": 3, "meta_steps": 0}
    assert all(torch.equal(a, b) for a, b in zip(clone.network.state_dict().values(),
                                                  network.state_dict().values()))


def test_a_scheduler_sets_the_rate_of_the_next_step(network):
    def run(schedule: bool) -> torch.Tensor:
        w = torch.nn.Parameter(torch.zeros(3))
        opt = LearnedOptimizer([w], network, lr=1.0)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        for step in range(3):
            if not schedule:
                opt.param_groups[0]["lr"] = 0.5 ** step
            w.grad = torch.tensor([1.0, -0.5, 0.01]) * (step + 1)
            opt.step()
            if schedule:
                scheduler.step()
        return w.detach()

    assert torch.equal(run(schedule=True), run(schedule=False))
