"""nos.Optimizer as a drop-in for torch.optim: resuming random rules, refusing a step
before it changes anything, tensor learning rates, low-precision parameters, and the
schedulers that cycle momentum or beta1."""

from __future__ import annotations

import io

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import nos
from tests.optim.test_optimizer import TORCH_CASES, loss_of, make_net, max_rel_error, train

PATHS = pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "reference"])


def steps(model: torch.nn.Module, opt: torch.optim.Optimizer, start: int, stop: int) -> None:
    for step in range(start, stop):
        opt.zero_grad()
        loss_of(model, step).backward()
        opt.step()


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def saved_and_loaded(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# --- 1. the generator of a random rule is part of the state -------------------------

RANDOM_RULES = ["g + noise", "drop(adam, 0.5) * exp(noise)", "drop(g, 0.3) + annealed_noise * m"]


@PATHS
@pytest.mark.parametrize("text", RANDOM_RULES)
def test_a_seeded_random_rule_resumes_bit_identically(text, foreach):
    whole = make_net()
    steps(whole, nos.Optimizer(whole.parameters(), text, lr=1e-2, seed=7, foreach=foreach), 0, 20)

    first = make_net()
    opt = nos.Optimizer(first.parameters(), text, lr=1e-2, seed=7, foreach=foreach)
    steps(first, opt, 0, 10)
    checkpoint = {"model": first.state_dict(), "opt": opt.state_dict()}
    generators = saved_and_loaded(checkpoint)["opt"]["generators"]
    assert set(generators) == {"seed", "states"} and generators["seed"] == 7
    assert generators["states"]["cpu"].dtype == torch.uint8

    resumed = []
    for new_seed, keep_generators in ((7, True), (None, True), (7, False)):
        saved = saved_and_loaded(checkpoint)  # loaded state tensors are stepped in place
        model = make_net(seed=3)
        model.load_state_dict(saved["model"])
        fresh = nos.Optimizer(model.parameters(), text, lr=1e-2, seed=new_seed, foreach=foreach)
        if not keep_generators:
            del saved["opt"]["generators"]
        fresh.load_state_dict(saved["opt"])
        torch.manual_seed(123)  # the global generator plays no part
        steps(model, fresh, 10, 20)
        resumed.append(flat(model))
    assert torch.equal(resumed[0], flat(whole))
    assert torch.equal(resumed[1], flat(whole))  # the checkpoint's seed and states win
    assert not torch.equal(resumed[2], flat(whole))  # without them the draws restart


def test_generators_are_saved_only_with_a_seed_and_load_into_a_rule_without_draws():
    model = make_net()
    unseeded = nos.Optimizer(model.parameters(), "g + noise", lr=1e-2)
    steps(model, unseeded, 0, 2)
    assert "generators" not in unseeded.state_dict()  # torch's global generator: the caller's

    opt = nos.Optimizer(model.parameters(), "drop(adam, 0.5)", lr=1e-2, seed=5)
    steps(model, opt, 0, 3)
    state = saved_and_loaded(opt.state_dict())
    plain = nos.Optimizer(model.parameters(), "m_hat / (sqrt(v_hat) + eps)", lr=1e-2)
    plain.load_state_dict(state)  # extra key: no error, state and groups as saved
    assert plain.state_dict()["state"][0]["step"] == 3
    steps(model, plain, 3, 4)
    torch_adam = torch.optim.Adam(model.parameters())
    torch.optim.Optimizer.load_state_dict(torch_adam, state)  # torch's validation accepts it

    again = nos.Optimizer(model.parameters(), "drop(adam, 0.5)", lr=1e-2, seed=5)
    again.load_state_dict(state)  # not yet drawn from: the loaded states are saved as loaded
    for name, value in state["generators"]["states"].items():
        assert torch.equal(again.state_dict()["generators"]["states"][name], value)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_an_optimizer_copied_mid_run_continues_as_the_original(how):
    import copy
    import pickle

    model = make_net()
    opt = nos.Optimizer(model.parameters(), "drop(adam, 0.5) * exp(noise)", lr=1e-2, seed=7)
    steps(model, opt, 0, 5)
    pair = (copy.deepcopy((model, opt)) if how == "deepcopy" else
            pickle.loads(pickle.dumps((model, opt))))
    steps(model, opt, 5, 10)
    steps(*pair, 5, 10)
    assert torch.equal(flat(model), flat(pair[0]))
    pair[1].param_groups[0]["betas"] = (0.5, 0.9)
    assert pair[1].param_groups[0]["beta1"] == 0.5


# --- 2. a step the optimizer cannot take changes nothing ------------------------------

@pytest.mark.parametrize("kind", ["sparse", "complex"])
@pytest.mark.parametrize("groups", [1, 2])
def test_a_refused_step_changes_no_state_and_no_parameter(kind, groups):
    torch.manual_seed(0)
    dense = torch.nn.Linear(3, 2)
    if kind == "sparse":
        odd = torch.nn.Embedding(10, 3, sparse=True)
        odd_params = list(odd.parameters())
    else:
        odd_params = [torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))]
    params = list(dense.parameters()) + odd_params
    spec = params if groups == 1 else [{"params": list(dense.parameters())},
                                       {"params": odd_params}]
    opt = nos.Optimizer(spec, "adam", lr=0.1)
    dense(torch.randn(4, 3)).sum().backward()
    opt.step()  # the odd parameter has no gradient yet: a good step
    before = [p.detach().clone() for p in params]
    state_before = {p: {k: torch.as_tensor(v).clone() for k, v in opt.state[p].items()}
                    for p in params if p in opt.state}
    dense(torch.randn(4, 3)).sum().backward()
    if kind == "sparse":
        odd(torch.tensor([1, 2])).sum().backward()
    else:
        odd_params[0].grad = torch.ones(2, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match=kind):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert set(opt.state) == set(state_before) and odd_params[0] not in opt.state
    for p, saved in state_before.items():
        assert opt.state[p]["step"] == 1
        assert all(torch.equal(torch.as_tensor(opt.state[p][k]), v) for k, v in saved.items())


# --- 3. a tensor lr stays a tensor ------------------------------------------------------

TERM_RULES = ["sgd", "adam", "adamw", "nesterov", "g * sign(m) + 0.01", "sign(g) * m + 0.1 * w"]


@pytest.mark.parametrize("rule", TERM_RULES)  # every kind of term: add, addcdiv, scale, ...
def test_a_tensor_lr_matches_a_float_lr(rule):
    results = {}
    for foreach in (True, False):
        for lr in (1e-2, torch.tensor(1e-2, dtype=torch.float64)):
            model = make_net()
            train(model, nos.Optimizer(model.parameters(), rule, lr=lr, foreach=foreach), steps=50)
            results[foreach, isinstance(lr, torch.Tensor)] = model
    assert torch.equal(flat(results[True, True]), flat(results[False, True]))
    assert max_rel_error(results[True, False], results[True, True]) < 1e-15


class _NoHostReads(TorchDispatchMode):
    """Fails on ``aten._local_scalar_dense``: what .item(), float() and bool() of a tensor,
    or a tensor passed where torch wants a number, all come down to."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("a tensor was read on the host during the step")
        return func(*args, **(kwargs or {}))


@PATHS
@pytest.mark.parametrize("rule", ["adamw", "g * sign(m) + 0.01"])
def test_a_tensor_lr_is_never_read_on_the_host(rule, foreach):
    model = make_net()
    lr = torch.tensor([1e-2])  # one element, float32, beside float64 parameters
    opt = nos.Optimizer(model.parameters(), rule, lr=lr, foreach=foreach)
    for step in range(3):
        opt.zero_grad()
        loss_of(model, step).backward()
        with _NoHostReads():
            opt.step()
    with pytest.raises(AssertionError, match="on the host"), _NoHostReads():
        float(lr)  # the check has teeth


def test_a_tensor_lr_is_filled_in_place_by_a_scheduler():
    results = []
    lr = torch.tensor(0.05, dtype=torch.float64)
    for make_opt in (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                     lambda p: nos.Optimizer(p, "momentum", lr=lr)):
        model = make_net()
        opt = make_opt(model.parameters())
        train(model, opt, steps=12, sched=torch.optim.lr_scheduler.StepLR(opt, 3, gamma=0.5))
        results.append(model)
    assert opt.param_groups[0]["lr"] is lr and lr.item() == 0.05 * 0.5 ** 4
    assert max_rel_error(*results) < 1e-12


def test_a_tensor_lr_on_the_fused_path():
    results = []
    for lr in (1e-2, torch.tensor(1e-2, dtype=torch.float64)):
        model = make_net()
        train(model, nos.Optimizer(model.parameters(), "adamw", lr=lr, fused=True), steps=5)
        results.append(model)
    assert max_rel_error(*results) < 1e-15


@pytest.mark.parametrize("lr,message", [
    (torch.tensor([0.1, 0.2]), "Tensor lr must be 1-element, got shape (2,)"),
    (torch.tensor(-1.0), "Invalid lr: -1.0, must be >= 0"),
])
def test_a_bad_tensor_lr_is_refused(lr, message):
    with pytest.raises(ValueError) as info:
        nos.Optimizer(make_net().parameters(), "adam", lr=lr)
    assert message in str(info.value)


# --- 4. float16, bfloat16 and float32 parameters --------------------------------------

BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2^-7: one rounding step relative to a value
LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}


def low_net(dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """The test net with weights that bfloat16 holds exactly (the same start for all dtypes)."""
    return make_net(seed).to(torch.bfloat16).to(dtype)


def train_in(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int = 20):
    dtype = next(model.parameters()).dtype
    from tests.optim.test_optimizer import X, Y

    for step in range(steps):
        rows = slice(step % 4 * 16, step % 4 * 16 + 16)
        opt.zero_grad()
        out = model(X[rows].to(dtype)).double()
        torch.nn.functional.cross_entropy(out, Y[rows]).backward()
        opt.step()
    return model


@pytest.mark.parametrize("dtype", LOW.values(), ids=LOW.keys())
@pytest.mark.parametrize("name,cls,kwargs,state_key", [
    ("adam", torch.optim.Adam, {}, "exp_avg"),
    ("momentum", torch.optim.SGD, {"momentum": 0.9}, "momentum_buffer"),
])
def test_low_precision_state_has_the_dtype_torch_keeps(name, cls, kwargs, state_key, dtype):
    model = low_net(dtype)
    reference = low_net(dtype)
    torch_opt = cls(reference.parameters(), lr=1e-3, **kwargs)
    train_in(reference, torch_opt, steps=1)
    opt = nos.Optimizer(model.parameters(), name, lr=1e-3)
    train_in(model, opt, steps=1)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        expected = torch_opt.state[q][state_key].dtype
        assert expected == dtype
        assert all(v.dtype == expected for v in opt.state[p].values() if torch.is_tensor(v))


BF16_CASES = [c for c in TORCH_CASES if c[0] in ("amsgrad", "adamax")
              or c[0] == "adam" and "weight_decay" not in c[2]]


@PATHS
@pytest.mark.parametrize("name,cls,torch_kwargs,hyper", BF16_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BF16_CASES)])
def test_bfloat16_adam_family_matches_torch(name, cls, torch_kwargs, hyper, foreach):
    """Written as torch computes them (``sqrt(v) / (1 - beta2^t)^0.5``), Adam, AMSGrad and
    Adamax round as torch's do: after 20 steps in bfloat16 no weight differs by more than
    one rounding at the scale of the largest (measured: bit-identical, but for AMSGrad with
    betas (0.5, 0.9): 0.71 of that).  With weight decay the rounding differs (the decay and the step
    are one sum, rounded once): see the accuracy test below."""
    reference = low_net(torch.bfloat16)
    train_in(reference, cls(reference.parameters(), **torch_kwargs))
    model = low_net(torch.bfloat16)
    train_in(model, nos.Optimizer(model.parameters(), name, lr=torch_kwargs["lr"],
                                  foreach=foreach, **hyper))
    assert max_rel_error(reference, model) <= BF16_EPS


@torch.no_grad()
def rms_distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    num = sum(((p.double() - q.double()) ** 2).sum() for p, q in zip(a.parameters(),
                                                                      b.parameters()))
    den = sum((q.double() ** 2).sum() for q in b.parameters())
    return float((num / den).sqrt())


LOW_CASES = [c for c in TORCH_CASES if c[0] in ("sgd", "momentum", "nesterov", "adam", "adamw",
                                                  "rmsprop", "adagrad")]


@pytest.mark.parametrize("dtype", LOW.values(), ids=LOW.keys())
@pytest.mark.parametrize("name,cls,torch_kwargs,hyper", LOW_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(LOW_CASES)])
def test_low_precision_steps_are_as_accurate_as_torchs(name, cls, torch_kwargs, hyper, dtype):
    """Against a float64 run from the same start, nos in float16/bfloat16 strays no further
    than torch does (a step of several terms is summed, then rounded once)."""
    if dtype == torch.float16 and name in ("adam", "adamw", "rmsprop", "adagrad"):
        # 1e-8 is 0 in float16, where (1 - beta2) g^2 underflows too: a larger eps for both
        torch_kwargs = {**torch_kwargs, "eps": 1e-3}
        hyper = {**hyper, "eps": 1e-3}
    errors = {"torch": 0.0, "nos": 0.0}
    for seed in range(3):
        truth = low_net(torch.float64, seed)
        train_in(truth, cls(truth.parameters(), **torch_kwargs))
        for who in errors:
            model = low_net(dtype, seed)
            opt = (cls(model.parameters(), **torch_kwargs) if who == "torch" else
                   nos.Optimizer(model.parameters(), name, lr=torch_kwargs["lr"], **hyper))
            errors[who] += rms_distance(train_in(model, opt), truth)
    assert errors["nos"] <= 1.25 * errors["torch"], errors


def test_low_precision_foreach_and_reference_are_identical():
    for name, lr in (("nesterov", torch.tensor(0.05)), ("sgdw", 0.05), ("adamw", 1e-2)):
        results = []
        for path in (True, False):
            model = low_net(torch.bfloat16)
            train_in(model, nos.Optimizer(model.parameters(), name, lr=lr, foreach=path))
            results.append(flat(model))
        assert torch.equal(*results), name


FP32_CASES = [c for c in TORCH_CASES if c[0] in ("sgd", "momentum", "adam", "adamw", "rmsprop")]


@pytest.mark.parametrize("name,cls,torch_kwargs,hyper", FP32_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(FP32_CASES)])
def test_float32_parity_with_torch(name, cls, torch_kwargs, hyper):
    reference = make_net().float()
    train_in(reference, cls(reference.parameters(), **torch_kwargs), steps=100)
    model = make_net().float()
    train_in(model, nos.Optimizer(model.parameters(), name, lr=torch_kwargs["lr"], **hyper),
             steps=100)
    assert max_rel_error(reference, model) < 1e-5


# --- 5. schedulers that cycle momentum or beta1 ----------------------------------------

CYCLING = [
    ("momentum", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), "cyclic"),
    ("nesterov", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True), "onecycle"),
    ("rmsprop", lambda p: torch.optim.RMSprop(p, lr=1e-2), "cyclic"),
    ("adam", lambda p: torch.optim.Adam(p, lr=1e-2), "onecycle"),
    ("adamw", lambda p: torch.optim.AdamW(p, lr=1e-2), "cyclic"),
    ("adamax", lambda p: torch.optim.Adamax(p, lr=1e-2), "onecycle"),
]


def cycling_scheduler(kind: str, opt: torch.optim.Optimizer):
    if kind == "cyclic":
        return torch.optim.lr_scheduler.CyclicLR(opt, 1e-3, 1e-2, step_size_up=5)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=50)


@pytest.mark.parametrize("name,make_torch,kind", CYCLING, ids=[c[0] for c in CYCLING])
def test_schedulers_cycle_momentum_and_beta1_as_for_torch(name, make_torch, kind):
    results, momenta = [], []
    for make_opt in (make_torch, lambda p: nos.Optimizer(p, name, lr=1e-2)):
        model = make_net()
        opt = make_opt(model.parameters())
        sched = cycling_scheduler(kind, opt)
        seen = []
        for step in range(50):
            steps(model, opt, step, step + 1)
            if step < 49 or kind == "cyclic":
                sched.step()
            group = opt.param_groups[0]
            seen.append(group["betas"][0] if "betas" in group else group["momentum"])
        results.append(model)
        momenta.append(seen)
    assert momenta[0] == momenta[1] and len(set(momenta[1])) > 5
    group = opt.param_groups[0]
    if "betas" in group:
        assert group["betas"] == (group["beta1"], group["beta2"])
    assert max_rel_error(*results) < 1e-10


def test_betas_is_one_value_with_beta1_and_beta2():
    model = make_net()
    opt = nos.Optimizer(model.parameters(), "adam", betas=(0.8, 0.99))
    group = opt.param_groups[0]
    assert (group["beta1"], group["beta2"], group["betas"]) == (0.8, 0.99, (0.8, 0.99))
    assert opt.defaults["betas"] == (0.8, 0.99)
    group["betas"] = (0.7, 0.95)
    assert (group["beta1"], group["beta2"]) == (0.7, 0.95)
    group["beta2"] = 0.9
    assert group["betas"] == (0.7, 0.9)
    steps(model, opt, 0, 1)
    state = saved_and_loaded(opt.state_dict())
    fresh = nos.Optimizer(model.parameters(), "adam")
    fresh.load_state_dict(state)
    loaded = fresh.param_groups[0]
    assert loaded["betas"] == (0.7, 0.9) and loaded["beta1"] == 0.7
    loaded["betas"] = (0.5, 0.9)
    assert loaded["beta1"] == 0.5
    fresh.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "beta1": 0.6})
    assert fresh.param_groups[1]["betas"] == (0.6, 0.999)
    assert nos.Optimizer(make_net().parameters(), "powersign").defaults["betas"] == (0.9,)
    assert "betas" not in nos.Optimizer(make_net().parameters(), "momentum").defaults


@pytest.mark.parametrize("rule,kwargs,message", [
    ("adam", {"betas": (0.9,)}, "Invalid betas: (0.9,), must be a tuple of 2 (beta1, beta2)"),
    ("adam", {"betas": (0.9, 0.99), "beta1": 0.9}, "give betas or beta1, beta2, not both"),
    ("adam", {"betas": (0.9, 1.5)}, "Invalid beta2: 1.5, must be in [0, 1)"),
    ("momentum", {"betas": (0.9, 0.99)}, "unknown keyword 'betas'"),
])
def test_bad_betas_are_refused(rule, kwargs, message):
    with pytest.raises(ValueError) as info:
        nos.Optimizer(make_net().parameters(), rule, **kwargs)
    assert message in str(info.value)
