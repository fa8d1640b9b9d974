"""Controllers: the ask/tell interface, checkpoints, and that the searches learn."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from nos import controllers
from nos.search.space import Space, SpaceConfig

NAMES = ["rnn", "random", "evolution"]
SPACE = Space()
TWO_UNITS = Space(SpaceConfig(units=2, decay_operands=True))


def planted_reward(space: Space, seed: int = 123):
    """The fraction of positions equal to a fixed random target token list."""
    target = space.sample(np.random.default_rng(seed))

    def reward(tokens) -> float:
        return sum(a == b for a, b in zip(tokens, target, strict=True)) / len(target)

    return reward, target


def search(controller, reward, batches: int, batch: int) -> list[float]:
    """Mean reward of each batch."""
    means = []
    for _ in range(batches):
        proposals = controller.ask(batch)
        rewards = [reward(p.tokens) for p in proposals]
        controller.tell(proposals, rewards)
        means.append(float(np.mean(rewards)))
    return means


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_registry():
    assert sorted(controllers.controller_names()) == sorted(NAMES + ["program"])
    with pytest.raises(ValueError, match=r"unknown controller 'ppo'.*'rnn'.*") as err:
        controllers.make_controller("ppo", SPACE)
    assert all(repr(n) in str(err.value) for n in NAMES)


@pytest.mark.parametrize("name, allowed", [
    ("rnn", "hidden, tanh_c, temperature"),
    ("evolution", "population, sample_size, seeds"),
    ("random", "none"),
])
def test_unknown_setting_is_named(name, allowed):
    with pytest.raises(ValueError, match=f"unknown setting 'hiden'; allowed: {allowed}"):
        controllers.make_controller(name, SPACE, hiden=3)


@pytest.mark.parametrize("name, settings, key", [
    ("rnn", {"hidden": 0}, "hidden"),
    ("rnn", {"lr": -1.0}, "lr"),
    ("rnn", {"baseline_decay": 1.5}, "baseline_decay"),
    ("rnn", {"temperature": "hot"}, "temperature"),
    ("evolution", {"population": 0}, "population"),
    ("evolution", {"population": 4, "sample_size": 5}, "sample_size"),
    ("evolution", {"seeds": [[0, 0, 0]]}, r"seeds\[0\]: expected 5 tokens"),
    ("evolution", {"seeds": [["g", "g", "x", "x", "cube"]]}, r"seeds\[0\]: unknown binary"),
])
def test_bad_setting_values_are_named(name, settings, key):
    with pytest.raises(ValueError, match=key):
        controllers.make_controller(name, SPACE, **settings)


@pytest.mark.parametrize("space", [SPACE, TWO_UNITS], ids=["one_unit", "two_units"])
@pytest.mark.parametrize("name", NAMES)
def test_ask_tell_round_trip(name, space):
    controller = controllers.make_controller(name, space, seed=1)
    assert controller.ask(0) == []
    for _ in range(4):  # past the evolution's initial population of 20
        proposals = controller.ask(7)
        assert len(proposals) == 7
        for p in proposals:
            assert isinstance(p, controllers.Proposal)
            assert space.validate(p.tokens) == p.tokens
            assert all(isinstance(t, int) for t in p.tokens)
            assert p.text == space.to_text(p.tokens)
        stats = controller.tell(proposals, [float(i) / 7 for i in range(7)])
        assert isinstance(stats, dict)
        assert all(isinstance(v, (int, float)) for v in stats.values())
    assert stats["told"] == 28 and controller.asked == 28


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_proposals(name):
    first = controllers.make_controller(name, SPACE, seed=5).ask(10)
    again = controllers.make_controller(name, SPACE, seed=5).ask(10)
    other = controllers.make_controller(name, SPACE, seed=6).ask(10)
    assert first == again
    assert first != other


@pytest.mark.parametrize("name", NAMES)
def test_tell_checks_its_input(name):
    controller = controllers.make_controller(name, SPACE)
    proposals = controller.ask(2)
    with pytest.raises(ValueError, match="2 proposals but 1 rewards"):
        controller.tell(proposals, [0.5])
    with pytest.raises(ValueError, match="finite"):
        controller.tell(proposals, [0.5, math.nan])
    bad = controllers.Proposal((0, 0, 0, 0, 9), "?")
    with pytest.raises(ValueError, match="position 4"):
        controller.tell([bad], [0.5])
    assert controller.tell([], [])["told"] == 0


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trips_and_continues_identically(name):
    reward, _ = planted_reward(TWO_UNITS)
    original = controllers.make_controller(name, TWO_UNITS, seed=3)
    search(original, reward, batches=3, batch=8)
    pending = original.ask(4)  # asked, not yet told: the state must carry that too

    state = roundtrip(original.state_dict())
    restored = controllers.make_controller(name, TWO_UNITS, seed=99)
    restored.load_state_dict(state)

    assert restored.ask(8) == original.ask(8)
    rewards = [reward(p.tokens) for p in pending]
    assert restored.tell(pending, rewards) == original.tell(pending, rewards)
    assert restored.ask(8) == original.ask(8)


@pytest.mark.parametrize("name", NAMES)
def test_load_state_dict_refuses_a_foreign_state(name):
    state = controllers.make_controller(name, SPACE).state_dict()
    with pytest.raises(ValueError, match="decisions"):
        controllers.make_controller(name, TWO_UNITS).load_state_dict(state)
    other = next(n for n in NAMES if n != name)
    with pytest.raises(ValueError, match=f"state is of controller '{name}'"):
        controllers.make_controller(other, SPACE).load_state_dict(state)


def test_load_state_dict_refuses_other_settings():
    state = controllers.make_controller("rnn", SPACE).state_dict()
    with pytest.raises(ValueError, match="other settings: hidden"):
        controllers.make_controller("rnn", SPACE, hidden=16).load_state_dict(state)


# --- the RNN policy and its training ---------------------------------------------------


def test_policy_sample_and_teacher_forced_log_prob_agree():
    policy = controllers.RNNPolicy(TWO_UNITS.decisions, controllers.RNNConfig(),
                                   torch.Generator().manual_seed(0))
    tokens, log_probs, entropies = policy.sample(6, torch.Generator().manual_seed(1))
    positions = len(TWO_UNITS.decisions)
    assert tokens.shape == log_probs.shape == entropies.shape == (6, positions)
    assert all(0 <= t < n for row in tokens.tolist()
               for t, n in zip(row, TWO_UNITS.decisions, strict=True))
    again, entropies_again = policy.log_prob(tokens)
    torch.testing.assert_close(again, log_probs)
    torch.testing.assert_close(entropies_again, entropies)
    # fresh policy: close to uniform at every position
    uniform = torch.tensor([math.log(n) for n in TWO_UNITS.decisions])
    assert (entropies > 0.95 * uniform).all()


def test_logits_are_squashed_to_tanh_c():
    config = controllers.RNNConfig(tanh_c=1.5, init_range=3.0)
    policy = controllers.RNNPolicy(SPACE.decisions, config, torch.Generator().manual_seed(0))
    hidden = torch.randn(32, config.hidden) * 100
    for position in range(len(SPACE.decisions)):
        logits = policy.logits(hidden, position)
        assert logits.abs().max() <= 1.5
        assert logits.abs().max() > 1.4  # saturated, not merely small


def test_reinforce_raises_the_probability_of_rewarded_tokens():
    controller = controllers.make_controller("rnn", SPACE, seed=0)
    proposals = controller.ask(8)
    tokens = torch.tensor([p.tokens for p in proposals])
    before, _ = controller.policy.log_prob(tokens)
    rewards = [1.0] + [0.0] * 7
    stats = controller.tell(proposals, rewards)
    after, _ = controller.policy.log_prob(tokens)
    assert after[0].sum() > before[0].sum()
    assert stats["baseline"] == pytest.approx(1 / 8)  # the first batch's mean
    assert {"loss", "entropy", "reward_mean", "grad_norm"} <= set(stats)
    stats = controller.tell(proposals, [1.0] * 8)
    assert stats["baseline"] == pytest.approx(1 - (1 - 1 / 8) * 0.95 ** 8)


def test_reinforce_loss():
    log_probs = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)
    entropies = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    advantages = torch.tensor([1.0, -2.0])
    loss = controllers.reinforce_loss(log_probs, entropies, advantages, entropy_weight=0.1)
    # -mean(1 * -3, -2 * -1) - 0.1 * mean(2, 4)
    assert float(loss.detach()) == pytest.approx(-(-3.0 + 2.0) / 2 - 0.1 * 3.0)


def test_rnn_learns_a_planted_target():
    reward, _ = planted_reward(SPACE)
    rnn = search(controllers.make_controller("rnn", SPACE, seed=0), reward, 40, 16)
    rand = search(controllers.make_controller("random", SPACE, seed=0), reward, 40, 16)
    first, last = np.mean(rnn[:5]), np.mean(rnn[-5:])
    assert first < 0.2  # uniform expectation is (2/17 + 2/12 + 1/6) / 5 = 0.09
    assert last > first + 0.4
    assert last > np.mean(rand[-5:]) + 0.4


def test_rnn_learns_with_two_units():
    reward, _ = planted_reward(TWO_UNITS, seed=7)
    rnn = search(controllers.make_controller("rnn", TWO_UNITS, seed=1), reward, 40, 16)
    assert np.mean(rnn[-5:]) > np.mean(rnn[:5]) + 0.3


# --- evolution --------------------------------------------------------------------------


def test_evolution_improves_on_a_planted_target():
    reward, _ = planted_reward(SPACE)
    evo = search(controllers.make_controller("evolution", SPACE, seed=0), reward, 40, 16)
    rand = search(controllers.make_controller("random", SPACE, seed=0), reward, 40, 16)
    assert np.mean(evo[-5:]) > np.mean(evo[:2]) + 0.2
    assert np.mean(evo[-5:]) > np.mean(rand[-5:]) + 0.2


def test_evolution_ages_out_the_oldest():
    controller = controllers.make_controller("evolution", SPACE, seed=0, population=5,
                                             sample_size=2)
    proposals = controller.ask(12)
    rewards = [100.0] + [float(i) for i in range(11)]  # the best comes first
    for p, r in zip(proposals, rewards, strict=True):
        stats = controller.tell([p], [r])
        assert stats["population"] == min(controller.told, 5)
    assert list(controller.population) == [(p.tokens, r) for p, r in
                                           zip(proposals[-5:], rewards[-5:], strict=True)]
    assert stats["best_reward"] == 100.0 and stats["population_best"] == 10.0


def test_evolution_starts_from_seeds():
    seeds = [["g", "m_hat", "exp(x)", "x", "x * y"], [1, 2, 3, 4, 5]]  # as TOML gives them
    controller = controllers.make_controller("evolution", SPACE, seed=0, population=4,
                                             sample_size=2, seeds=seeds)
    first = controller.ask(3)
    assert first[0].text == "exp(g) * m_hat"
    assert first[1].tokens == (1, 2, 3, 4, 5)
    assert first[2].tokens not in (first[0].tokens, first[1].tokens)


def test_evolution_children_are_one_token_mutations_of_tournament_winners():
    controller = controllers.make_controller("evolution", SPACE, seed=2, population=6,
                                             sample_size=6)
    parents = controller.ask(6)
    controller.tell(parents, [0.1, 0.2, 0.9, 0.3, 0.0, 0.5])
    best = parents[2].tokens
    for child in controller.ask(30):
        assert sum(a != b for a, b in zip(child.tokens, best, strict=True)) == 1


def test_evolution_asks_ahead_of_tell():
    controller = controllers.make_controller("evolution", SPACE, seed=0, population=10,
                                             sample_size=3)
    early = controller.ask(25)  # nothing told: all random, none fails
    assert len({p.tokens for p in early}) > 20
    controller.tell(early[:4], [0.1, 0.2, 0.3, 0.4])  # a partial population
    told = {p.tokens for p in early[:4]}
    for child in controller.ask(12):
        distances = [sum(a != b for a, b in zip(child.tokens, t, strict=True)) for t in told]
        assert min(distances) == 1
    controller.tell(early[4:], [0.0] * 21)
    assert len(controller.population) == 10


def test_random_counts_and_remembers_the_best():
    controller = controllers.make_controller("random", SPACE, seed=0)
    proposals = controller.ask(3)
    assert controller.tell(proposals, [0.1, 0.7, 0.2])["best_reward"] == 0.7
    assert controller.tell(proposals[:1], [0.3]) == {"told": 4, "reward_mean": 0.3,
                                                     "best_reward": 0.7}
