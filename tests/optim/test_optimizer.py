"""nos.Optimizer: parity with torch.optim, TensorFlow's PowerSign/AddSign and Lion;
the two executors agree; torch conventions hold."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

import nos
from nos.compile.compiler import compile_rule

STEPS = 100


def make_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv1d(1, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 14, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3),
    ).double()


DATA = torch.Generator().manual_seed(1)
X = torch.randn(64, 1, 16, generator=DATA, dtype=torch.float64)
Y = torch.randint(0, 3, (64,), generator=DATA)


def loss_of(model: torch.nn.Module, step: int) -> torch.Tensor:
    rows = slice(step % 4 * 16, step % 4 * 16 + 16)
    return torch.nn.functional.cross_entropy(model(X[rows]), Y[rows])


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int = STEPS, sched=None):
    for step in range(steps):
        opt.zero_grad()
        loss_of(model, step).backward()
        opt.step()
        if sched is not None:
            sched.step()
    return model


def max_rel_error(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(((p - q).abs().max() / p.abs().max()).item()
               for p, q in zip(a.parameters(), b.parameters(), strict=False))


# name, torch class, torch kwargs, nos hyperparameters: one registry drives the parity tests.
# The torch names take torch's keywords as they are; the older names keep their own.
TORCH_CASES = [
    ("sgd", torch.optim.SGD, {"lr": 0.1}, {}),
    ("sgd", torch.optim.SGD, {"lr": 0.05, "weight_decay": 0.01}, {"weight_decay": 0.01}),
    ("momentum", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}, {}),
    ("momentum", torch.optim.SGD, {"lr": 0.05, "momentum": 0.5, "weight_decay": 1e-3},
     {"momentum": 0.5, "wd": 1e-3}),
    ("nesterov", torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}, {}),
    ("nesterov", torch.optim.SGD, {"lr": 0.05, "momentum": 0.7, "nesterov": True,
                                   "weight_decay": 1e-2}, {"momentum": 0.7, "wd": 1e-2}),
    ("adam", torch.optim.Adam, {"lr": 1e-2}, {}),
    ("adam", torch.optim.Adam, {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6,
                                "weight_decay": 0.1}, {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6,
                                                       "weight_decay": 0.1}),
    ("adamw", torch.optim.AdamW, {"lr": 1e-2}, {}),
    ("adamw", torch.optim.AdamW, {"lr": 3e-3, "betas": (0.85, 0.995), "weight_decay": 0.2},
     {"betas": (0.85, 0.995), "weight_decay": 0.2}),
    ("amsgrad", torch.optim.Adam, {"lr": 1e-2, "amsgrad": True}, {}),
    ("amsgrad", torch.optim.Adam, {"lr": 3e-3, "amsgrad": True, "betas": (0.5, 0.9),
                                   "eps": 1e-5}, {"beta1": 0.5, "beta2": 0.9, "eps": 1e-5}),
    ("rmsprop", torch.optim.RMSprop, {"lr": 1e-2}, {}),
    ("rmsprop", torch.optim.RMSprop, {"lr": 3e-3, "alpha": 0.9, "eps": 1e-6, "momentum": 0.5,
                                      "weight_decay": 1e-3},
     {"alpha": 0.9, "eps": 1e-6, "momentum": 0.5, "weight_decay": 1e-3}),
    ("adagrad", torch.optim.Adagrad, {"lr": 0.1}, {}),
    ("adagrad", torch.optim.Adagrad, {"lr": 0.05, "lr_decay": 0.01, "eps": 1e-8,
                                      "weight_decay": 1e-3},
     {"lr_decay": 0.01, "eps": 1e-8, "weight_decay": 1e-3}),
    ("adamax", torch.optim.Adamax, {"lr": 1e-2}, {}),
    ("adamax", torch.optim.Adamax, {"lr": 5e-3, "betas": (0.8, 0.99), "eps": 1e-6,
                                    "weight_decay": 1e-2},
     {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 1e-2}),
]


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "reference"])
@pytest.mark.parametrize("name,cls,torch_kwargs,hyper", TORCH_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(TORCH_CASES)])
def test_parity_with_torch_optim(name, cls, torch_kwargs, hyper, foreach):
    ref = make_net()
    expected = train(ref, cls(ref.parameters(), **torch_kwargs))
    model = make_net()
    train(model, nos.Optimizer(model.parameters(), name, lr=torch_kwargs["lr"],
                               foreach=foreach, **hyper))
    assert max_rel_error(expected, model) < 1e-6


# --- TensorFlow's PowerSign / AddSign, and Lion, as small NumPy references ---------

def tf_sign_decay(kind: str | None, s: int, total: int) -> float:
    """tf.contrib.opt.sign_decay at the 0-based global step s (s clamped to T)."""
    s = min(s, total)
    if kind is None:
        return 1.0
    if kind == "ld":
        return max(0.0, (total - s) / total)
    if kind == "cd":
        return 0.5 * (1.0 + math.cos(2.0 * math.pi * 0.5 * s / total))
    return 0.5 * (1.0 + math.cos(math.pi * ((1.0 * s) % total) / total))


def numpy_reference(step_fn, steps: int = STEPS) -> torch.nn.Module:
    """Train with an update written in NumPy; torch only computes the gradients."""
    model = make_net()
    weights = [p.detach().numpy().copy() for p in model.parameters()]
    slots = [dict() for _ in weights]
    for step in range(steps):
        with torch.no_grad():
            for p, w in zip(model.parameters(), weights, strict=False):
                p.copy_(torch.from_numpy(w))
        model.zero_grad()
        loss_of(model, step).backward()
        for i, p in enumerate(model.parameters()):
            weights[i] = step_fn(weights[i], p.grad.numpy().copy(), slots[i], step)
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights, strict=False):
            p.copy_(torch.from_numpy(w))
    return model


def tf_sign_optimizer(kind: str, decay: str | None, lr: float, total: int, beta=0.9):
    def step(w, g, slot, s):
        m = beta * slot.get("m", np.zeros_like(w)) + (1 - beta) * g
        slot["m"] = m
        d = tf_sign_decay(decay, s, total)
        if kind == "powersign":
            update = np.exp(math.log(math.e) * d * np.sign(g) * np.sign(m)) * g
        else:
            update = (1.0 + d * np.sign(g) * np.sign(m)) * g
        return w - lr * update

    return step


@pytest.mark.parametrize("total", [STEPS, 60], ids=["T=steps", "T<steps"])
@pytest.mark.parametrize("decay", [None, "ld", "cd", "rd"])
@pytest.mark.parametrize("kind", ["powersign", "addsign"])
def test_parity_with_tensorflow_sign_optimizers(kind, decay, total):
    name = kind + (f"_{decay}" if decay else "")
    lr = 0.05
    expected = numpy_reference(tf_sign_optimizer(kind, decay, lr, total))
    model = make_net()
    train(model, nos.Optimizer(model.parameters(), name, lr=lr, total_steps=total))
    assert max_rel_error(expected, model) < 1e-6


def test_parity_with_lion():
    lr, beta1, beta2, weight_decay = 3e-3, 0.9, 0.99, 0.1

    def lion(w, g, slot, s):
        m = slot.get("m", np.zeros_like(w))
        c = np.sign(beta1 * m + (1 - beta1) * g)
        slot["m"] = beta2 * m + (1 - beta2) * g
        return w - lr * (c + weight_decay * w)

    expected = numpy_reference(lion)
    model = make_net()
    train(model, nos.Optimizer(model.parameters(), "lion", lr=lr, weight_decay=weight_decay))
    assert max_rel_error(expected, model) < 1e-6


# --- the two executors ---------------------------------------------------------------

# Muon steps 2-D parameters only (this network has a convolution and biases): its two
# executors are compared in tests/optim/test_torch_parity.py.
VECTOR_BASELINES = sorted(name for name in nos.baselines() if name != "muon")


@pytest.mark.parametrize("name", VECTOR_BASELINES)
def test_foreach_and_reference_paths_are_identical(name):
    models, opts = [], []
    for foreach in (True, False):
        model = make_net()
        opt = nos.Optimizer(model.parameters(), name, lr=1e-2, foreach=foreach, total_steps=50)
        train(model, opt, steps=20)
        models.append(model)
        opts.append(opt)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=False):
        assert torch.equal(p, q)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=False):
        sa, sb = opts[0].state[p], opts[1].state[q]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key


@pytest.mark.parametrize("text", ["g + noise", "drop(g, 0.3) + annealed_noise * m",
                                  "drop(adam, 0.5) * exp(noise)"])
def test_random_rules_are_reproducible_and_identical_across_paths(text):
    results = []
    for foreach in (True, False, True):
        model = make_net()
        train(model, nos.Optimizer(model.parameters(), text, lr=1e-2, seed=7, foreach=foreach),
              steps=10)
        results.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    other = make_net()
    train(other, nos.Optimizer(other.parameters(), text, lr=1e-2, seed=8), steps=10)
    assert not torch.equal(results[0], torch.cat([p.flatten() for p in other.parameters()]))


# --- torch conventions ----------------------------------------------------------------

def test_only_used_buffers_are_allocated():
    assert compile_rule(nos.parse("g * sign(m)")).buffers == ("m",)
    assert compile_rule(nos.parse("adam")).buffers == ("m", "v")
    unused = nos.parse("state u = u + g\nstate m2 = 0.9 * m2 + g\nupdate = sign(m2) * g")
    assert compile_rule(unused).buffers == ("m2",)
    model = make_net()
    opt = nos.Optimizer(model.parameters(), "exp(sign(g) * sign(m)) * g")
    train(model, opt, steps=1)
    assert all(set(s) == {"step", "m"} for s in opt.state.values())


def test_state_dict_round_trip_mid_training():
    a = make_net()
    opt_a = nos.Optimizer(a.parameters(), "adam", lr=1e-2)
    train(a, opt_a, steps=10)
    buffer = io.BytesIO()
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    b = make_net(seed=3)
    b.load_state_dict(saved["model"])
    opt_b = nos.Optimizer(b.parameters(), "adam", lr=1e-2)
    opt_b.load_state_dict(saved["opt"])
    assert set(saved["opt"]["state"][0]) == {"step", "m", "v"}
    assert saved["opt"]["state"][0]["step"] == 10
    for step in range(10, 20):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            loss_of(model, step).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=False):
        assert torch.equal(p, q)


def test_param_groups_hyperparameters_and_skipped_parameters():
    model = make_net()
    first, rest = list(model.parameters())[:2], list(model.parameters())[2:]
    opt = nos.Optimizer([{"params": first, "beta1": 0.5}, {"params": rest}], "adam", lr=1e-2)
    assert opt.param_groups[0]["beta1"] == 0.5 and opt.param_groups[1]["beta1"] == 0.9
    frozen = rest[-1]
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    train(model, opt, steps=3)
    assert torch.equal(frozen, before)
    assert frozen not in opt.state
    extra = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt.add_param_group({"params": [extra], "lr": 0.1})
    extra.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    assert opt.state[extra]["step"] == 1


def test_closure_is_called_and_loss_returned():
    model = make_net()
    opt = nos.Optimizer(model.parameters(), "sgd", lr=0.1)

    def closure():
        opt.zero_grad()
        loss = loss_of(model, 0)
        loss.backward()
        return loss

    assert opt.step(closure).item() > 0


@pytest.mark.parametrize("scheduler", [
    lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2),
    lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
    lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=30),
    lambda o: torch.optim.lr_scheduler.CyclicLR(o, 1e-3, 1e-2, step_size_up=4),
])
def test_torch_schedulers_drive_the_lr(scheduler):
    results = []
    for make_opt in (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                     lambda p: nos.Optimizer(p, "momentum", lr=0.05)):
        model = make_net()
        opt = make_opt(model.parameters())
        train(model, opt, steps=30, sched=scheduler(opt))
        results.append(model)
    assert max_rel_error(*results) < 1e-12


@pytest.mark.parametrize("kwargs,message", [
    ({"lr": -1.0}, "Invalid lr: -1.0, must be >= 0"),
    ({"beta1": 1.5}, "Invalid beta1: 1.5, must be in [0, 1)"),
    ({"eps": -1e-8}, "Invalid eps: -1e-8, must be in [0, inf)"),
    ({"beta": 0.9}, "unknown keyword 'beta'"),
])
def test_constructor_rejects_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError) as info:
        nos.Optimizer(make_net().parameters(), "adam", **kwargs)
    assert message in str(info.value)


def test_constructor_rejects_bad_group_values_and_missing_total_steps():
    with pytest.raises(ValueError, match="Invalid beta2: 2"):
        nos.Optimizer([{"params": make_net().parameters(), "beta2": 2.0}], "adam")
    with pytest.raises(ValueError, match="total_steps"):
        nos.Optimizer(make_net().parameters(), "powersign_ld")
    with pytest.raises(nos.RuleSyntaxError):
        nos.Optimizer(make_net().parameters(), "adma * g")


def test_sparse_and_complex_gradients_raise():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = nos.Optimizer(emb.parameters(), "sgd")
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    z = torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))
    z.grad = torch.ones(2, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="complex"):
        nos.Optimizer([z], "sgd").step()


def test_rule_object_text_and_baseline_name_are_accepted():
    for rule in (nos.parse("sign(g)"), "sign(g)", "signsgd"):
        model = make_net()
        opt = nos.Optimizer(model.parameters(), rule, lr=1e-3)
        train(model, opt, steps=2)
        assert str(opt.rule) == "sign(g)"
    assert nos.Optimizer(make_net().parameters(), "lion").defaults["lr"] == 1e-4


def test_baselines_have_docs_and_compile():
    names = {"sgd", "momentum", "nesterov", "adam", "adamw", "amsgrad", "rmsprop", "adagrad",
             "adamax", "adadelta", "rprop", "asgd", "nadam", "radam", "adafactor", "muon",
             "sgdw", "lion", "signsgd", "powersign", "powersign_ld", "powersign_cd",
             "powersign_rd", "addsign", "addsign_ld", "addsign_cd", "addsign_rd",
             "adan", "lamb", "lars", "adabelief", "ademamix", "mars", "prodigy",
             "schedulefree_adamw", "yellowfin"}
    assert set(nos.baselines()) == names
    for baseline in nos.baselines().values():
        assert "(" in baseline.doc and len(baseline.doc) > 30
        assert nos.parse(str(baseline.rule)) == baseline.rule
        compile_rule(baseline.rule)


# --- the optimised program against the plain one --------------------------------------

SAFE_LEAVES = ["g", "w", "m", "v", "t", "0.5", "2", "beta1", "m_hat", "sign(g)", "momentum"]
SAFE_BINARY = ["{} + {}", "{} - {}", "{} * {}", "{} / (abs({}) + 1)", "max({}, {})",
               "min({}, {})", "clip({}, abs({}) + 0.1)"]
SAFE_UNARY = ["-{}", "sign({})", "abs({})", "sqrt(abs({}))", "exp(clip({}, 3))", "0.9 * {}",
              "{} / 3"]


def _safe_expressions():
    from hypothesis import strategies as st

    leaves = st.sampled_from(SAFE_LEAVES)

    def extend(inner):
        return st.one_of(
            st.tuples(st.sampled_from(SAFE_BINARY), inner, inner).map(
                lambda t: "(" + t[0].format(t[1], t[2]) + ")"),
            st.tuples(st.sampled_from(SAFE_UNARY), inner).map(
                lambda t: "(" + t[0].format(t[1]) + ")"))

    return st.recursive(leaves, extend, max_leaves=8)


def _safe_rules():
    from hypothesis import strategies as st

    return st.tuples(_safe_expressions(), _safe_expressions()).map(
        lambda t: f"param momentum = 0.5\nstate buf = momentum * buf + {t[0]}\n"
                  f"update = {t[1]} + 0.1 * buf")


def _step_with(program, params, grads, foreach: bool) -> list[torch.Tensor]:
    from nos.compile.executors import Bucket, run_foreach, run_reference

    params = [p.clone() for p in params]
    buffers = {name: [torch.zeros_like(p) for p in params] for name in program.buffers}
    hyper = {name: s.default for name, s in program.params.items()}
    for t in (1, 2, 3):
        group = Bucket(params, grads, buffers, hyper, 0.01, t, None)
        (run_foreach if foreach else run_reference)(program, group, lambda device: None)
    return params + [b for name in program.buffers for b in buffers[name]]


def test_optimised_programs_agree_with_plain_ones_on_random_rules():
    from hypothesis import given, settings

    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 3, generator=gen, dtype=torch.float64),
              torch.randn(5, generator=gen, dtype=torch.float64)]
    grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]

    @settings(max_examples=150, deadline=None)
    @given(_safe_rules())
    def check(text):
        rule = nos.parse(text)
        plain = compile_rule(rule, optimize=False)
        fast = compile_rule(rule)
        expected = _step_with(plain, params, grads, foreach=False)
        by_foreach = _step_with(fast, params, grads, foreach=True)
        by_reference = _step_with(fast, params, grads, foreach=False)
        for a, b, c in zip(expected, by_foreach, by_reference):
            assert torch.equal(b, c), text
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=text)

    check()


def test_adam_compiles_to_what_torch_does_by_hand():
    from nos.compile.compiler import describe

    # torch.optim.Adam's single-tensor step: exp_avg.lerp_, exp_avg_sq.mul_().addcmul_(),
    # sqrt, div_, add_(eps), param.addcdiv_; the flags at their defaults leave no trace
    zeros = frozenset({"weight_decay", "amsgrad", "decoupled_weight_decay"})
    program = compile_rule(nos.baselines()["adam"].rule, zeros)
    ops = [(i.op, i.inplace) for i in program.tensor_code]
    assert ops == [("lerp", True), ("axpbxz", True), ("sqrt", False), ("div", True),
                   ("add", True)], describe(program)
    assert program.buffers == ("m", "v")
    assert [t.kind for t in program.terms] == ["addcdiv"]


def test_fused_path_matches_the_reference():
    results = []
    for fused in (False, True):
        model = make_net()
        opt = nos.Optimizer(model.parameters(), "adamw", lr=1e-2, fused=fused)
        train(model, opt, steps=20)
        results.append(model)
    assert max_rel_error(*results) < 1e-12
    with pytest.raises(ValueError, match="random"):
        nos.Optimizer(make_net().parameters(), "g + noise", fused=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", VECTOR_BASELINES)
def test_fused_path_matches_the_reference_for_every_baseline(name):
    results = []
    for fused in (False, True):
        model = make_net()
        opt = nos.Optimizer(model.parameters(), name, lr=1e-2, fused=fused, total_steps=40)
        train(model, opt, steps=20)
        results.append(model)
    assert max_rel_error(*results) < 1e-10


def test_a_term_reading_w_sees_the_parameters_before_the_step():
    rule = nos.parse("param momentum = 0.5\nstate buf = momentum * buf + g\n"
                     "update = (g + (g * w)) + 0.1 * buf")
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(3, 4, generator=gen, dtype=torch.float64)]
    grads = [torch.randn(3, 4, generator=gen, dtype=torch.float64)]
    plain = _step_with(compile_rule(rule, optimize=False), params, grads, foreach=False)
    fast = _step_with(compile_rule(rule), params, grads, foreach=True)
    for a, b in zip(plain, fast):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kwargs", [{}, {"foreach": False}, {"fused": True}],
                         ids=["foreach", "reference", "fused"])
def test_buffers_that_copy_each_other_own_their_tensors(kwargs):
    """``state p = m`` once made p and m one tensor, so the update m_t - m_(t-1) became 0."""
    rule = "param beta = 0.9 in [0, 1)\nstate m = beta * m + (1 - beta) * g\nupdate = m - p\n" \
           "state p = m"
    w = torch.zeros(64, 8, dtype=torch.float64, requires_grad=True)
    opt = nos.Optimizer([w], rule, lr=1.0, **kwargs)
    gen = torch.Generator().manual_seed(1)
    m, p, expected = (torch.zeros(64, 8, dtype=torch.float64) for _ in range(3))
    for _ in range(5):
        g = torch.randn(64, 8, generator=gen, dtype=torch.float64)
        w.grad = g.clone()
        opt.step()
        m = 0.9 * m + 0.1 * g
        expected -= m - p
        p = m.clone()
    torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=1e-14)
    state = opt.state[w]
    assert state["m"].data_ptr() != state["p"].data_ptr()
