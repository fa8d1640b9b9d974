"""How the compiler's instructions run: out of place, or in place on their first operand.

:mod:`nos.lang.ops` says what each operation means.  This table adds what the
compiler needs to make a rule as fast as a hand-written optimizer: the fused
instructions it forms (``axpby`` is ``a*x + b*y``, computed in two passes instead
of three, or as one ``lerp`` when ``a + b = 1`` in float16 and bfloat16) and an
in-place form of every instruction, used
when the first operand is a temporary (or a buffer being replaced) that
nothing reads afterwards.  Each kernel has a per-tensor form (the reference
executor) and a multi-tensor form (``torch._foreach_*``); both give
bit-identical results on the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from nos.lang.ops import OPS, exponent_tensor, square_root_exponent

F = torch  # short alias for the _foreach_ calls below


def _is_list(a) -> bool:
    return isinstance(a, (list, tuple))


@dataclass(frozen=True)
class Kernel:
    tensor: Callable  # per tensor, returns a new tensor
    foreach: Callable  # over lists, returns new tensors
    tensor_: Callable | None = None  # per tensor, writes into the first argument
    foreach_: Callable | None = None  # over lists, writes into the first argument
    commutative: bool = False
    # The in-place form makes several passes (clip: max then min; axpby: mul then add), so
    # it is wrong when another operand is the first one: clip(x, x) would clip x to |x|.
    several_passes: bool = False


# --- in-place forms of the base operations ----------------------------------------


def _f_unary_(name: str) -> Callable:
    fn = getattr(F, f"_foreach_{name}_")

    def apply(a):
        fn(a)
        return a

    return apply


def _t_unary_(name: str) -> Callable:
    return lambda a: getattr(a, f"{name}_")()


def _f_binary_(name: str) -> Callable:
    fn = getattr(F, f"_foreach_{name}_")

    def apply(a, b):
        fn(a, b)
        return a

    return apply


def _t_binary_(name: str) -> Callable:
    return lambda a, b: getattr(a, f"{name}_")(b)


def _f_max_(a, b):
    (F._foreach_maximum_ if _is_list(b) else F._foreach_clamp_min_)(a, b)
    return a


def _t_max_(a, b):
    return torch.maximum(a, b, out=a) if isinstance(b, torch.Tensor) else a.clamp_min_(b)


def _f_min_(a, b):
    (F._foreach_minimum_ if _is_list(b) else F._foreach_clamp_max_)(a, b)
    return a


def _t_min_(a, b):
    return torch.minimum(a, b, out=a) if isinstance(b, torch.Tensor) else a.clamp_max_(b)


def _f_clip_(x, c):
    return _f_min_(_f_max_(x, F._foreach_neg(c) if _is_list(c) else -c), c)


def _t_clip_(x, c):
    return _t_min_(_t_max_(x, torch.neg(c) if isinstance(c, torch.Tensor) else -c), c)


def _f_sign_(x):
    nan = F._foreach_clamp_max(x, -1.0)  # sign(x) <= max(sign(x), nan) keeps a nan of x
    F._foreach_sign_(x)
    F._foreach_maximum_(x, nan)
    return x


def _t_sign_(x):
    nan = torch.clamp_max(x, -1.0)
    return torch.maximum(x.sign_(), nan, out=x)


def _f_pow_(a, b):
    if square_root_exponent(b):  # as nos.lang.ops: pow, not sqrt or rsqrt
        for x in a:
            x.pow_(exponent_tensor(x, b))
    else:
        F._foreach_pow_(a, b)
    return a


def _t_pow_(a, b):
    if square_root_exponent(b):
        b = exponent_tensor(a, b)
    return a.pow_(b)


# s - x and s / x, written into x (the forms nos.lang.ops uses: -x + s and (1/x) * s)
def _f_rsub_(x, s):
    F._foreach_neg_(x)
    F._foreach_add_(x, s)
    return x


def _t_rsub_(x, s):
    return x.neg_().add_(s)


def _f_rdiv_(x, s):
    F._foreach_reciprocal_(x)
    F._foreach_mul_(x, s)
    return x


def _t_rdiv_(x, s):
    return x.reciprocal_().mul_(s)


# --- fused instructions ------------------------------------------------------------


# In float16 and bfloat16 a running average ``beta * m + (1 - beta) * g`` is the one-pass
# ``m.lerp_(g, 1 - beta)``, as torch.optim writes it: one rounding (the multiply and the
# add would round twice), the same as torch's (bit-identical Adam in bfloat16).  In
# float32 and float64 it is the formula: lerp differs from it where m or g is infinite
# (nan, not inf: min(m, 1) is then nan, not 1) and where beta is small (lerp's weight on m
# is 1 - (1 - beta), whose rounding is large beside beta: beta = 1e-8 loses 8 digits).
LERP_DTYPES = (torch.float16, torch.bfloat16)


def _lerp_ok(a: float, b: float, x) -> bool:
    like = x[0] if _is_list(x) else x
    return a + b == 1.0 and like.dtype in LERP_DTYPES


def _f_axpby(x, y, a, b):
    if _lerp_ok(a, b, x):
        return F._foreach_lerp(x, y, b)
    out = F._foreach_mul(x, a)
    F._foreach_add_(out, y, alpha=b)
    return out


def _f_axpby_(x, y, a, b):
    if _lerp_ok(a, b, x):
        F._foreach_lerp_(x, y, b)
    else:
        F._foreach_mul_(x, a)
        F._foreach_add_(x, y, alpha=b)
    return x


def _t_axpby(x, y, a, b):
    return torch.lerp(x, y, b) if _lerp_ok(a, b, x) else torch.mul(x, a).add_(y, alpha=b)


def _t_axpby_(x, y, a, b):
    return x.lerp_(y, b) if _lerp_ok(a, b, x) else x.mul_(a).add_(y, alpha=b)


def _f_axpy(x, y, b):
    return F._foreach_add(x, y, alpha=b)


def _f_axpy_(x, y, b):
    F._foreach_add_(x, y, alpha=b)
    return x


def _f_axpbxz(v, x, z, a, b):
    out = F._foreach_mul(v, a)
    F._foreach_addcmul_(out, x, z, value=b)
    return out


def _f_axpbxz_(v, x, z, a, b):
    F._foreach_mul_(v, a)
    F._foreach_addcmul_(v, x, z, value=b)
    return v


KERNELS: dict[str, Kernel] = {
    "add": Kernel(OPS["add"].tensor, OPS["add"].foreach, _t_binary_("add"), _f_binary_("add"),
                  commutative=True),
    "sub": Kernel(OPS["sub"].tensor, OPS["sub"].foreach, _t_binary_("sub"), _f_binary_("sub")),
    "mul": Kernel(OPS["mul"].tensor, OPS["mul"].foreach, _t_binary_("mul"), _f_binary_("mul"),
                  commutative=True),
    "div": Kernel(OPS["div"].tensor, OPS["div"].foreach, _t_binary_("div"), _f_binary_("div")),
    "pow": Kernel(OPS["pow"].tensor, OPS["pow"].foreach, _t_pow_, _f_pow_),
    "max": Kernel(OPS["max"].tensor, OPS["max"].foreach, _t_max_, _f_max_, commutative=True),
    "min": Kernel(OPS["min"].tensor, OPS["min"].foreach, _t_min_, _f_min_, commutative=True),
    "clip": Kernel(OPS["clip"].tensor, OPS["clip"].foreach, _t_clip_, _f_clip_,
                   several_passes=True),
    "rsub": Kernel(lambda x, s: OPS["sub"].tensor(s, x), lambda x, s: OPS["sub"].foreach(s, x),
                   _t_rsub_, _f_rsub_),
    "rdiv": Kernel(lambda x, s: OPS["div"].tensor(s, x), lambda x, s: OPS["div"].foreach(s, x),
                   _t_rdiv_, _f_rdiv_),
    "axpby": Kernel(_t_axpby, _f_axpby, _t_axpby_, _f_axpby_, several_passes=True),
    "axpy": Kernel(lambda x, y, b: torch.add(x, y, alpha=b), _f_axpy,
                   lambda x, y, b: x.add_(y, alpha=b), _f_axpy_),
    "axpbxz": Kernel(lambda v, x, z, a, b: torch.mul(v, a).addcmul_(x, z, value=b), _f_axpbxz,
                     lambda v, x, z, a, b: v.mul_(a).addcmul_(x, z, value=b), _f_axpbxz_,
                     several_passes=True),
    "drop": Kernel(torch.mul, F._foreach_mul, _t_binary_("mul"), _f_binary_("mul")),
}
for _name in ("neg", "exp", "log", "sqrt", "abs"):
    KERNELS[_name] = Kernel(OPS[_name].tensor, OPS[_name].foreach, _t_unary_(_name),
                            _f_unary_(_name))
KERNELS["sign"] = Kernel(OPS["sign"].tensor, OPS["sign"].foreach, _t_sign_, _f_sign_)
def _t_lerp_(a, b, w):
    return a.lerp_(b if isinstance(b, torch.Tensor) else torch.as_tensor(b, dtype=a.dtype), w)


def _f_lerp_(a, b, w):
    if _is_list(b) and not _is_list(w):
        F._foreach_lerp_(a, b, w)
    else:
        for i, x in enumerate(a):
            _t_lerp_(x, b[i] if _is_list(b) else b, w[i] if _is_list(w) else w)
    return a


def _f_lerp(a, b, w):
    if _is_list(a) and _is_list(b) and not _is_list(w):
        return F._foreach_lerp(a, b, w)
    return OPS["lerp"].foreach(a, b, w)


def _into_second(fn):
    """``fn(s, x)`` written into x, one pass (``torch.div(s, x, out=x)``): s - x and s / x
    for two tensors, the same rounding as the out-of-place form."""

    def tensor_(x, s):
        return fn(s, x, out=x)

    def foreach_(x, s):
        for a, b in zip(x, s, strict=True):
            fn(b, a, out=a)
        return x

    return tensor_, foreach_


for _name, _fn in (("tsub", torch.sub), ("tdiv", torch.div)):
    KERNELS[_name] = Kernel(lambda x, s, fn=_fn: fn(s, x),
                            lambda x, s, op=_name[1:]: OPS[op].foreach(s, x),
                            *_into_second(_fn))

KERNELS["lerp"] = Kernel(OPS["lerp"].tensor, _f_lerp, _t_lerp_, _f_lerp_)

# Operations without an in-place form: the comparisons, where, lerp, the reductions and the
# matrix functions (their multi-tensor form is nos.lang.ops's, a loop where torch has no
# _foreach_ form).
for _name, _op in OPS.items():
    if _name not in KERNELS and _op.tensor is not None and not _op.random:
        KERNELS[_name] = Kernel(_op.tensor, _op.foreach)
