"""The hand-written optimizers, written in the language.

Reading this module is reading the list of what nos offers by name.  Each
rule's formula and reference is in its docstring; ``nos.baselines()``
returns them all.  The step is always ``w <- w - lr * update``; ``wd`` is
L2 weight decay added to the gradient unless the docstring says decoupled.
Adam's family divides by ``(1 - beta2^t)^0.5`` after the square root, in the
order torch.optim computes it, so that float16 and bfloat16 runs round as
torch's do.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Baseline:
    name: str
    text: str
    lr: float
    doc: str

    @property
    def rule(self):
        from nos.lang.rule import parse

        return parse(self.text)


_BETA = "in [0, 1)"
_POS = "in [0, inf)"

_REGISTRY: list[Baseline] = []


def _baseline(name: str, lr: float, text: str, doc: str) -> None:
    _REGISTRY.append(Baseline(name, text.strip() + "\n", lr, " ".join(doc.split())))


_baseline("sgd", 1e-2, f"""
param wd = 0 {_POS}
update = g + wd * w
""", "Stochastic gradient descent: update = g + wd w. (Robbins & Monro, 1951; torch.optim.SGD)")

_baseline("momentum", 1e-2, f"""
param momentum = 0.9 {_POS}
param wd = 0 {_POS}
let d = g + wd * w
state buf = momentum * buf + d
update = buf
""", """SGD with heavy-ball momentum: buf <- momentum buf + g; update = buf.
(Polyak, 1964; torch.optim.SGD(momentum=0.9), dampening 0)""")

_baseline("nesterov", 1e-2, f"""
param momentum = 0.9 {_POS}
param wd = 0 {_POS}
let d = g + wd * w
state buf = momentum * buf + d
update = d + momentum * buf
""", """SGD with Nesterov momentum: buf <- momentum buf + g; update = g + momentum buf.
(Sutskever et al., 2013; torch.optim.SGD(nesterov=True))""")

_baseline("adam", 1e-3, f"""
param beta1 = 0.9 {_BETA}
param beta2 = 0.999 {_BETA}
param eps = 1e-8 {_POS}
param wd = 0 {_POS}
let d = g + wd * w
state m = beta1 * m + (1 - beta1) * d
state v = beta2 * v + (1 - beta2) * d^2
update = m / (1 - beta1^t) / (sqrt(v) / (1 - beta2^t)^0.5 + eps)
""", """Adam: m, v running averages of g and g^2; update = m_hat / (sqrt(v_hat) + eps)
with bias-corrected m_hat, v_hat. (Kingma & Ba, 2015; torch.optim.Adam)""")

_baseline("adamw", 1e-3, f"""
param beta1 = 0.9 {_BETA}
param beta2 = 0.999 {_BETA}
param eps = 1e-8 {_POS}
param wd = 0.01 {_POS}
state m = beta1 * m + (1 - beta1) * g
state v = beta2 * v + (1 - beta2) * g^2
update = m / (1 - beta1^t) / (sqrt(v) / (1 - beta2^t)^0.5 + eps) + wd * w
""", """Adam with decoupled weight decay: update = adam + wd w, the decay applied to the
weights rather than added to the gradient. (Loshchilov & Hutter, 2019; torch.optim.AdamW)""")

_baseline("amsgrad", 1e-3, f"""
param beta1 = 0.9 {_BETA}
param beta2 = 0.999 {_BETA}
param eps = 1e-8 {_POS}
param wd = 0 {_POS}
let d = g + wd * w
state m = beta1 * m + (1 - beta1) * d
state v = beta2 * v + (1 - beta2) * d^2
state vmax = max(vmax, v)
update = m / (1 - beta1^t) / (sqrt(vmax) / (1 - beta2^t)^0.5 + eps)
""", """AMSGrad: Adam whose denominator uses the running maximum of v.
(Reddi et al., 2018; torch.optim.Adam(amsgrad=True))""")

_baseline("rmsprop", 1e-2, f"""
param alpha = 0.99 {_BETA}
param eps = 1e-8 {_POS}
param momentum = 0 {_POS}
param wd = 0 {_POS}
let d = g + wd * w
state sq = alpha * sq + (1 - alpha) * d^2
state buf = momentum * buf + d / (sqrt(sq) + eps)
update = buf
""", """RMSProp: sq running average of g^2; update = g / (sqrt(sq) + eps), with optional
momentum on that ratio. (Tieleman & Hinton, 2012; torch.optim.RMSprop, not centered)""")

_baseline("adagrad", 1e-2, f"""
param lr_decay = 0 {_POS}
param eps = 1e-10 {_POS}
param wd = 0 {_POS}
let d = g + wd * w
state acc = acc + d^2
update = d / (sqrt(acc) + eps) / (1 + (t - 1) * lr_decay)
""", """Adagrad: acc sum of g^2; update = g / (sqrt(acc) + eps), the step size divided by
1 + (t - 1) lr_decay. (Duchi et al., 2011; torch.optim.Adagrad)""")

_baseline("adamax", 2e-3, f"""
param beta1 = 0.9 {_BETA}
param beta2 = 0.999 {_BETA}
param eps = 1e-8 {_POS}
param wd = 0 {_POS}
let d = g + wd * w
state m = beta1 * m + (1 - beta1) * d
state u = max(beta2 * u, abs(d) + eps)
update = m / (1 - beta1^t) / u
""", """Adamax: Adam with the infinity norm, u <- max(beta2 u, |g| + eps);
update = m_hat / u. (Kingma & Ba, 2015; torch.optim.Adamax)""")

_baseline("sgdw", 1e-2, f"""
param momentum = 0.9 {_POS}
param wd = 1e-4 {_POS}
state buf = momentum * buf + g
update = buf + wd * w
""", """SGD with momentum and decoupled weight decay (SGDW): buf <- momentum buf + g;
update = buf + wd w, the decay kept out of the momentum. (Loshchilov & Hutter, 2019)""")

_baseline("lion", 1e-4, f"""
param beta1 = 0.9 {_BETA}
param beta2 = 0.99 {_BETA}
param wd = 0 {_POS}
let c = sign(beta1 * m + (1 - beta1) * g)
state m = beta2 * m + (1 - beta2) * g
update = c + wd * w
""", """Lion: update = sign(beta1 m + (1 - beta1) g) + wd w, then m <- beta2 m + (1 - beta2) g
(the old m is read first). (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms")""")

_baseline("signsgd", 1e-3, """
update = sign(g)
""", "signSGD: update = sign(g). (Bernstein et al., 2018)")

_SIGN_DECAYS = {  # suffix: (declaration, factor d, description)
    "": ("", "", ""),
    "_ld": ("", "ld * ", "linear sign decay ld = max(0, (T - s) / T)"),
    "_cd": ("param periods = 0.5 in (0, inf)\n", "cd(periods) * ",
            "cosine sign decay cd = 0.5 (1 + cos(2 pi periods s / T)), periods = 0.5"),
    "_rd": ("param periods = 1 in (0, inf)\n", "rd(periods) * ",
            "restart sign decay rd = 0.5 (1 + cos(pi ((periods s) mod T) / T)), periods = 1"),
}

for _suffix, (_decl, _d, _what) in _SIGN_DECAYS.items():
    _with = f", with the {_what} (s = t - 1, T = total_steps)" if _what else ""
    _baseline(f"powersign{_suffix}", 0.1, f"""
param base = 2.718281828459045 in (0, inf)
{_decl}update = exp(log(base) * {_d}sign(g) * sign(m)) * g
""", f"""PowerSign: update = base^(d sign(g) sign(m)) g, m <- beta1 m + (1 - beta1) g without
bias correction{_with}. (Bello et al., 2017; tf.contrib.opt.PowerSignOptimizer)""")
    _baseline(f"addsign{_suffix}", 0.1, f"""
param alpha = 1 in [0, inf)
{_decl}update = (alpha + {_d}sign(g) * sign(m)) * g
""", f"""AddSign: update = (alpha + d sign(g) sign(m)) g, m <- beta1 m + (1 - beta1) g without
bias correction{_with}. (Bello et al., 2017; tf.contrib.opt.AddSignOptimizer)""")

BASELINES: dict[str, Baseline] = {b.name: b for b in _REGISTRY}


def baselines() -> dict[str, Baseline]:
    """Every named rule, by name: ``nos.baselines()["adam"].text``."""
    return dict(BASELINES)
