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


_FLAG = "in [0, 1]"
# torch.optim's weight decay: added to the gradient, or (decoupled) applied to the weights
_L2 = "let d = g + weight_decay * w"
_SWITCHED = """param decoupled_weight_decay = 0 in [0, 1]
let d = where(decoupled_weight_decay, g, g + weight_decay * w)"""
_DECOUPLED = "where(decoupled_weight_decay, weight_decay * w, 0)"

# --- torch.optim, keyword for keyword ------------------------------------------------
# Each rule's params are the torch class's keywords (its tuples are split: betas is
# beta1, beta2); flags are params in [0, 1] that switch a where, so a group's program
# holds only the branch its flags take.  ``maximize`` is nos.Optimizer's, for every rule.

_baseline("sgd", 1e-3, f"""
param momentum = 0 {_POS}
param dampening = 0 in [-inf, inf)
param weight_decay = 0 {_POS}
param nesterov = 0 {_FLAG}
{_L2}
state buf = momentum * buf + where(t == 1, 1, 1 - dampening) * d
update = where(momentum != 0, where(nesterov, d + momentum * buf, buf), d)
""", """Stochastic gradient descent, with torch.optim.SGD's keywords: weight_decay added to
g, momentum buf <- momentum buf + (1 - dampening) g (buf = g at the first step), nesterov
update = g + momentum buf. (Robbins & Monro, 1951; Polyak, 1964; torch.optim.SGD)""")

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


def _adam(decoupled: bool) -> str:
    return f"""
param beta1 = 0.9 {_BETA}
param beta2 = 0.999 {_BETA}
param eps = 1e-8 {_POS}
param weight_decay = {0.01 if decoupled else 0} {_POS}
param amsgrad = 0 {_FLAG}
{"let d = g" if decoupled else _SWITCHED}
state m = lerp(m, d, 1 - beta1)
state v = beta2 * v + (1 - beta2) * d^2
state vmax = where(amsgrad, max(vmax, v), 0)
let denom = sqrt(where(amsgrad, vmax, v)) / (1 - beta2^t)^0.5 + eps
update = m / (1 - beta1^t) / denom + {"weight_decay * w" if decoupled else _DECOUPLED}
"""


_baseline("adam", 1e-3, _adam(False), """Adam, with torch.optim.Adam's keywords: m, v running
averages of g and g^2; update = m_hat / (sqrt(v_hat) + eps); amsgrad takes the running
maximum of v; decoupled_weight_decay decays the weights (AdamW). (Kingma & Ba, 2015;
torch.optim.Adam)""")

_baseline("adamw", 1e-3, _adam(True), """Adam with decoupled weight decay, with
torch.optim.AdamW's keywords: update = adam + weight_decay w, the decay applied to the
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

_baseline("adamax", 2e-3, f"""
param beta1 = 0.9 {_BETA}
param beta2 = 0.999 {_BETA}
param eps = 1e-8 {_POS}
param weight_decay = 0 {_POS}
{_L2}
state m = lerp(m, d, 1 - beta1)
state u = max(beta2 * u, abs(d) + eps)
update = m / (1 - beta1^t) / u
""", """Adamax, with torch.optim.Adamax's keywords: Adam with the infinity norm,
u <- max(beta2 u, |g| + eps); update = m_hat / u. (Kingma & Ba, 2015; torch.optim.Adamax)""")

_baseline("adagrad", 1e-2, f"""
param lr_decay = 0 {_POS}
param weight_decay = 0 {_POS}
param initial_accumulator_value = 0 {_POS}
param eps = 1e-10 {_POS}
{_L2}
state acc = acc + d^2 + where(t == 1, initial_accumulator_value, 0)
update = d / (sqrt(acc) + eps) / (1 + (t - 1) * lr_decay)
""", """Adagrad, with torch.optim.Adagrad's keywords: acc sum of g^2 (from
initial_accumulator_value); update = g / (sqrt(acc) + eps), the step divided by
1 + (t - 1) lr_decay. (Duchi et al., 2011; torch.optim.Adagrad)""")

_baseline("adadelta", 1.0, f"""
param rho = 0.9 in [0, 1]
param eps = 1e-6 {_POS}
param weight_decay = 0 {_POS}
{_L2}
state sq = rho * sq + (1 - rho) * d^2
let delta = sqrt(acc + eps) / sqrt(sq + eps) * d
state acc = rho * acc + (1 - rho) * delta^2
update = delta
""", """Adadelta, with torch.optim.Adadelta's keywords: sq running average of g^2,
delta = sqrt(acc + eps) / sqrt(sq + eps) g, acc running average of delta^2 (the old acc is
read first). (Zeiler, 2012; torch.optim.Adadelta)""")

_baseline("rmsprop", 1e-2, f"""
param alpha = 0.99 {_POS}
param eps = 1e-8 {_POS}
param weight_decay = 0 {_POS}
param momentum = 0 {_POS}
param centered = 0 {_FLAG}
{_L2}
state sq = alpha * sq + (1 - alpha) * d^2
state grad_avg = where(centered, lerp(grad_avg, d, 1 - alpha), 0)
let avg = sqrt(where(centered, sq - grad_avg * grad_avg, sq)) + eps
state buf = where(momentum > 0, momentum * buf + d / avg, 0)
update = where(momentum > 0, buf, d / avg)
""", """RMSProp, with torch.optim.RMSprop's keywords: sq running average of g^2;
update = g / (sqrt(sq) + eps), centered subtracting the square of g's running mean, with
optional momentum on that ratio. (Tieleman & Hinton, 2012; torch.optim.RMSprop)""")

_baseline("rprop", 1e-2, f"""
param etaminus = 0.5 in (0, 1)
param etaplus = 1.2 in (1, inf)
param step_size_min = 1e-6 {_POS}
param step_size_max = 50 {_POS}
let agree = sign(g * prev)
let factor = where(agree > 0, etaplus, where(agree < 0, etaminus, 1))
state size = min(max((size + where(t == 1, lr, 0)) * factor, step_size_min), step_size_max)
let kept = where(agree < 0, 0, g)
state prev = kept
update = sign(kept) * size * where(lr > 0, 1 / lr, 0)
""", """Rprop, with torch.optim.Rprop's keywords: each element's step size (lr at first)
grows by etaplus where g keeps its sign and shrinks by etaminus where it flips (that
gradient then counts as 0), within step_sizes; w <- w - sign(g) size, whatever the lr
later. (Riedmiller & Braun, 1993; torch.optim.Rprop)""")

_baseline("asgd", 1e-2, f"""
param lambd = 1e-4 {_POS}
param alpha = 0.75 {_POS}
param t0 = 1e6 {_POS}
param weight_decay = 0 {_POS}
{_L2}
let eta = 1 / (1 + lambd * lr * (t - 1))^alpha
update = eta * d + eta * lambd * w
""", """ASGD, with torch.optim.ASGD's keywords: the step size lr / (1 + lambd lr s)^alpha
(s = t - 1) on g + lambd w. torch's average ax (from step t0) does not change the
parameters and is not kept. (Polyak & Juditsky, 1992; torch.optim.ASGD)""")

_baseline("nadam", 2e-3, f"""
param beta1 = 0.9 {_BETA}
param beta2 = 0.999 {_BETA}
param eps = 1e-8 {_POS}
param weight_decay = 0 {_POS}
param momentum_decay = 4e-3 {_POS}
{_SWITCHED}
let mu = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))
let mu_next = beta1 * (1 - 0.5 * 0.96^((t + 1) * momentum_decay))
state mu_product = where(t == 1, 1, mu_product) * mu
state m = lerp(m, d, 1 - beta1)
state v = beta2 * v + (1 - beta2) * d^2
let denom = sqrt(v / (1 - beta2^t)) + eps
let now = (1 - mu) / (1 - mu_product) * d / denom
let ahead = mu_next / (1 - mu_product * mu_next) * m / denom
update = now + ahead + {_DECOUPLED}
""", """NAdam, with torch.optim.NAdam's keywords: Adam with Nesterov momentum whose
coefficient mu_t warms up with momentum_decay; mu_product, the running product of the
mu_t, is a number kept per tensor. (Dozat, 2016; torch.optim.NAdam)""")

_baseline("radam", 1e-3, f"""
param beta1 = 0.9 {_BETA}
param beta2 = 0.999 {_BETA}
param eps = 1e-8 {_POS}
param weight_decay = 0 {_POS}
{_SWITCHED}
state m = lerp(m, d, 1 - beta1)
state v = beta2 * v + (1 - beta2) * d^2
let m_corrected = m / (1 - beta1^t)
let rho_inf = 2 / (1 - beta2) - 1
let rho = rho_inf - 2 * t * beta2^t / (1 - beta2^t)
let rect = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))^0.5
let adaptive = (1 - beta2^t)^0.5 / (sqrt(v) + eps)
update = where(rho > 5, m_corrected * adaptive * rect, m_corrected) + {_DECOUPLED}
""", """RAdam, with torch.optim.RAdam's keywords: Adam whose adaptive step is switched on
(rho > 5) and rectified once the variance of its estimate is tractable.
(Liu et al., 2020; torch.optim.RAdam)""")

_baseline("adafactor", 1e-2, f"""
param beta2_decay = -0.8 in (-inf, 0]
param eps1 = 0 {_POS}
param eps2 = 1e-3 {_POS}
param d = 1 {_POS}
param weight_decay = 0 {_POS}
let e1 = where(eps1 > 0, eps1, machine_eps)
let beta = t^beta2_decay
state row = lerp(row, rowmean(g^2), beta)
state col = lerp(col, colmean(g^2), beta)
let variance = where(ndim >= 2, row * col / max(colmean(row), e1), row)
let u = g / sqrt(max(variance, e1 * e1))
update = min(1, 1 / (lr * t^0.5)) * max(eps2, rms(w)) * u / max(1, rms(u) / d) + weight_decay * w
""", """Adafactor, with torch.optim.Adafactor's keywords (eps is the pair eps1, eps2; eps1 0,
torch's None, is the dtype's machine epsilon): the second moment of a matrix factored into
a row and a column average (a vector keeps it whole), the update clipped to rms d and
scaled by max(eps2, rms(w)) min(lr, 1/sqrt(t)). (Shazeer & Stern, 2018;
torch.optim.Adafactor)""")

_baseline("muon", 1e-3, f"""
param weight_decay = 0.1 {_POS}
param momentum = 0.95 {_BETA}
param nesterov = 1 {_FLAG}
param ns_a = 3.4445 in [-inf, inf)
param ns_b = -4.775 in [-inf, inf)
param ns_c = 2.0315 in [-inf, inf)
param eps = 1e-7 {_POS}
param ns_steps = 5 in [0, 100)
param ns_bits = 16 in [0, 64]
param adjust_lr_fn = 0 {_FLAG}
state buf = lerp(buf, g, 1 - momentum)
let direction = where(nesterov, lerp(g, buf, momentum), buf)
let ratio = where(adjust_lr_fn, 0.2 * sqrt(max(rows, cols)), sqrt(max(1, rows / cols)))
let orthogonal = newton_schulz(direction, ns_a, ns_b, ns_c, ns_steps, eps, ns_bits)
update = ratio * orthogonal + weight_decay * w
""", """Muon, with torch.optim.Muon's keywords (ns_coefficients is the triple ns_a, ns_b,
ns_c; adjust_lr_fn 'match_rms_adamw' is 1): momentum, then the Newton-Schulz
orthogonalisation of the 2-D update in bfloat16 (ns_bits 16), the step scaled by
sqrt(max(1, rows / cols)). 2-D parameters only. (Jordan et al., 2024; torch.optim.Muon)""")

_baseline("sgdw", 1e-2, f"""
param momentum = 0.9 {_POS}
param wd = 1e-4 {_POS}
state buf = momentum * buf + g
update = buf + wd * w
""", """SGD with momentum and decoupled weight decay (SGDW): buf <- momentum buf + g;
update = buf + wd w, the decay kept out of the momentum. (Loshchilov & Hutter, 2019)""")

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

# --- the optimizers people install, keyword for keyword ---------------------------------
# lion_pytorch's Lion and pytorch_optimizer's (4.1.0) Adan, Lamb, LARS, AdaBelief, AdEMAMix
# and MARS: each rule's params are the class's keywords, with its defaults, and the
# options its param groups read (adanorm, adam_debias, cautious, ...).  A keyword the rule
# cannot follow (global gradient clipping) is a param whose default is the only value
# accepted: nos.optim.keywords.REFUSED says why.  These classes decay the weights before
# the step (w <- w (1 - lr weight_decay), or w (1 - weight_decay) with fixed_decay), which
# the update carries as weight_decay w (weight_decay / lr w).


def _pto_decay(decouple: int) -> str:
    """pytorch_optimizer's weight decay: added to g, or (weight_decouple) to the update."""
    return f"""param weight_decay = 0 {_POS}
param weight_decouple = {decouple} {_FLAG}
param fixed_decay = 0 {_FLAG}"""


# the decoupled decay as a term of the update (times w); fixed_decay is lr-free
_PTO_DECOUPLED = ("where(weight_decouple, where(fixed_decay, where(lr > 0, weight_decay / lr, 0),"
                  " weight_decay), 0)")


def _adanorm(x: str) -> str:
    """AdaNorm (pytorch_optimizer's adanorm, adanorm_r): x scaled up to the running average
    of its norm, where its norm is below it; s is the result."""
    return f"""param adanorm = 0 {_FLAG}
param adanorm_r = 0.95 in [0, 1]
let grad_norm = norm({x})
state norm_avg = where(adanorm, adanorm_r * norm_avg + (1 - adanorm_r) * grad_norm, 0)
let scaled = where((grad_norm > 0) * (norm_avg > grad_norm), {x} * norm_avg / grad_norm, {x})
let s = where(adanorm, scaled, {x})"""


def _rectify(degenerated: int) -> str:
    """pytorch_optimizer's RAdam rectification: rt scales the step where rho reaches
    n_sma_threshold; below it rt is 1 (degenerated_to_sgd) or -1 (no step)."""
    return f"""param rectify = 0 {_FLAG}
param n_sma_threshold = 5 {_POS}
param degenerated_to_sgd = {degenerated} {_FLAG}
let rho_inf = 2 / (1 - beta2) - 1
let rho = rho_inf - 2 * t * beta2^t / (1 - beta2^t)
let rect = (1 - beta2^t) * (rho - 4) / (rho_inf - 4) * (rho - 2) / rho * rho_inf / (rho_inf - 2)
let rt = where(rho >= n_sma_threshold, rect^0.5, where(degenerated_to_sgd, 1, -1))"""


def _cautious(x: str, grad: str) -> str:
    """pytorch_optimizer's cautious mask: x where it agrees in sign with the gradient, 0
    elsewhere, scaled by numel / (the count kept + 1)."""
    return f"{x} * ({x} * {grad} > 0) * (numel / (sum({x} * {grad} > 0) + 1))"

_baseline("lion", 1e-4, f"""
param beta1 = 0.9 in [0, 1]
param beta2 = 0.99 in [0, 1]
param weight_decay = 0 {_POS}
param decoupled_weight_decay = 0 {_FLAG}
param use_triton = 0 in [0, 0]
state lr0 = where(lr0 > 0, lr0, lr)
let c = sign(beta1 * m + (1 - beta1) * g)
state m = beta2 * m + (1 - beta2) * g
let decay = where(decoupled_weight_decay, where(lr0 > 0, weight_decay / lr0, 0), weight_decay)
update = c + decay * w
""", """Lion, with lion_pytorch.Lion's keywords: update = sign(beta1 m + (1 - beta1) g) +
weight_decay w, then m <- beta2 m + (1 - beta2) g (the old m is read first);
decoupled_weight_decay divides weight_decay by the first lr (lion_pytorch: the
constructor's). (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms";
lion_pytorch.Lion)""")

_baseline("adan", 1e-3, f"""
param beta1 = 0.98 {_BETA}
param beta2 = 0.92 {_BETA}
param beta3 = 0.99 in [0, 1]
param weight_decay = 0 {_POS}
param weight_decouple = 0 {_FLAG}
param max_grad_norm = 0 in [0, 0]
param eps = 1e-8 {_POS}
param use_gc = 0 in [0, 0]
{_adanorm("g")}
let diff = where(t == 1, 0, g - prev)
state prev = g
state m = lerp(m, s, 1 - beta1)
state n = lerp(n, diff, 1 - beta2)
state v = beta3 * v + (1 - beta3) * (beta2 * diff + g)^2
let denom = sqrt(v) / (1 - beta3^t)^0.5 + eps
let direction = m / (1 - beta1^t) / denom + beta2 * n / (1 - beta2^t) / denom
update = (direction + weight_decay * w) / where(weight_decouple, 1, 1 + lr * weight_decay)
""", """Adan, with pytorch_optimizer.Adan's keywords (betas is beta1, beta2, beta3): m, n, v
running averages of g, of the difference of successive gradients (0 at the first step) and
of (g + beta2 diff)^2; update = (m_hat + beta2 n_hat) / (sqrt(v_hat) + eps); weight decay
divides the weights by 1 + lr weight_decay, or (weight_decouple) decays them.
(Xie et al., 2024, "Adan: Adaptive Nesterov Momentum Algorithm"; pytorch_optimizer.Adan)""")

_baseline("lamb", 1e-3, f"""
param beta1 = 0.9 {_BETA}
param beta2 = 0.999 {_BETA}
{_pto_decay(1)}
{_rectify(0)}
param grad_averaging = 1 {_FLAG}
param max_grad_norm = 1 {_POS}
param adam = 0 {_FLAG}
param pre_norm = 0 in [0, 0]
param eps = 1e-6 {_POS}
param adam_debias = 0 {_FLAG}
{_adanorm("g")}
state m = beta1 * m + where(grad_averaging, 1 - beta1, 1) * s
state v = beta2 * v + (1 - beta2) * g^2
let kept = where(fixed_decay, 1 - weight_decay, 1 - weight_decay * lr)
let decayed = w * where(weight_decouple, kept, 1)
let ratio = m / (sqrt(v) + eps)
let rectified = where(rho >= n_sma_threshold, ratio, m)
let x = where(rectify, rectified, ratio + where(weight_decouple, 0, weight_decay * w))
let scale = where(rectify, rt, 1) / where(adam_debias, 1, 1 - beta1^t)
let w_norm = min(norm(decayed), 10)
let x_norm = norm(where(rectify, decayed - lr * scale * x, x))
let trust = where(adam, 1, where(w_norm == 0, 1, where(x_norm == 0, 1, w_norm / (x_norm + eps))))
update = {_PTO_DECOUPLED} * w + where(scale > 0, scale * trust * x, 0)
""", """LAMB, with pytorch_optimizer.Lamb's keywords: Adam's ratio m / (sqrt(v) + eps) (v not
bias-corrected) times the trust ratio min(norm(w), 10) / (norm(ratio) + eps) of each
tensor, the step lr / (1 - beta1^t); rectify as RAdam, adam a trust ratio of 1. max_grad_norm
is read only with pre_norm, which nos refuses (a global gradient norm). (You et al., 2020,
"Large Batch Optimization for Deep Learning"; pytorch_optimizer.Lamb)""")

_baseline("lars", 1e-3, f"""
param weight_decay = 0 {_POS}
param momentum = 0.9 {_BETA}
param dampening = 0 {_BETA}
param trust_coefficient = 1e-3 {_POS}
param nesterov = 0 {_FLAG}
let w_norm = norm(w)
let denom = norm(g) + weight_decay * w_norm
let trust = where(w_norm > 0, where(denom > 0, trust_coefficient * w_norm / denom, 1), 1)
let d = where(ndim > 1, (g + weight_decay * w) * trust, g)
state buf = where(momentum > 0, momentum * buf + (1 - dampening) * d, 0)
update = where(momentum > 0, where(nesterov, d + momentum * buf, buf), d)
""", """LARS, with pytorch_optimizer.LARS's keywords: for a tensor of two or more dimensions,
(g + weight_decay w) times the trust ratio trust_coefficient norm(w) / (norm(g) +
weight_decay norm(w)); plain g for the others; then momentum buf <- momentum buf +
(1 - dampening) g (Nesterov with nesterov). (You et al., 2017, "Large Batch Training of
Convolutional Networks"; pytorch_optimizer.LARS)""")

_baseline("adabelief", 1e-3, f"""
param beta1 = 0.9 {_BETA}
param beta2 = 0.999 {_BETA}
{_pto_decay(1)}
{_rectify(1)}
param ams_bound = 0 {_FLAG}
param eps = 1e-16 {_POS}
param adam_debias = 0 {_FLAG}
let d = where(weight_decouple, g, g + weight_decay * w)
{_adanorm("d")}
state m = lerp(m, s, 1 - beta1)
state belief = beta2 * belief + (1 - beta2) * (d - m)^2 + eps
state belief_max = where(ams_bound, max(belief_max, belief), 0)
let root = sqrt(where(ams_bound, belief_max, belief))
let rectified = where(rho >= n_sma_threshold, m / (root + eps), m)
let x = where(rectify, rectified, m / (root / (1 - beta2^t)^0.5 + eps))
let scale = where(rectify, rt, 1) / where(adam_debias, 1, 1 - beta1^t)
update = {_PTO_DECOUPLED} * w + where(scale > 0, scale * x, 0)
""", """AdaBelief, with pytorch_optimizer.AdaBelief's keywords: Adam whose second moment is
the running average of (g - m)^2 + eps, the belief in the gradient; ams_bound keeps its
running maximum, rectify steps as RAdam. (Zhuang et al., 2020, "AdaBelief Optimizer";
pytorch_optimizer.AdaBelief)""")

_baseline("ademamix", 1e-3, f"""
param beta1 = 0.9 {_BETA}
param beta2 = 0.999 {_BETA}
param beta3 = 0.9999 in [0, 1]
{_pto_decay(0)}
param alpha = 5 {_POS}
param t_alpha_beta3 = 0 {_POS}
param eps = 1e-8 {_POS}
param cautious = 0 {_FLAG}
param stable_adamw = 0 {_FLAG}
let d = where(weight_decouple, g, g + weight_decay * w)
let warm = t / t_alpha_beta3
let alpha_t = where(t_alpha_beta3 > 0, min(t * alpha / t_alpha_beta3, alpha), alpha)
let mix = log(beta1) * log(beta3) / ((1 - warm) * log(beta3) + warm * log(beta1))
let beta3_t = where(t_alpha_beta3 > 0, min(exp(mix), beta3), beta3)
state m = lerp(m, d, 1 - beta1)
state v = beta2 * v + (1 - beta2) * d^2
state slow = lerp(slow, d, 1 - beta3_t)
let denom = sqrt(v) / (1 - beta2^t)^0.5 + eps
let mixed = where(cautious, {_cautious("m", "d")}, m) / (1 - beta1^t) + alpha_t * slow
let stable_rms = max(sqrt(mean(d^2 / max(v, 1e-16))), 1)
update = where(stable_adamw, mixed / denom / stable_rms, mixed / denom) + {_PTO_DECOUPLED} * w
""", """AdEMAMix, with pytorch_optimizer.AdEMAMix's keywords (betas is beta1, beta2, beta3;
t_alpha_beta3 0 is None): Adam whose numerator adds alpha times a slow running average
of g (decay beta3), both warmed up over t_alpha_beta3 steps; cautious masks m where it
disagrees with g, stable_adamw divides by the RMS of g^2 / v. (Pagliardini et al., 2024,
"The AdEMAMix Optimizer"; pytorch_optimizer.AdEMAMix)""")

_MIXED = "max(optimize_1d, ndim >= 2)"  # MARS's own step, not AdamW's

_baseline("mars", 3e-3, f"""
param beta1 = 0.95 {_BETA}
param beta2 = 0.99 {_BETA}
param gamma = 0.025 {_POS}
param mars_type = 0 {_FLAG}
param optimize_1d = 0 {_FLAG}
param lr_1d = 3e-3 {_POS}
param beta1_1d = 0.9 {_BETA}
param beta2_1d = 0.95 {_BETA}
param weight_decay_1d = 0.1 {_POS}
{_pto_decay(1)}
param ams_bound = 0 {_FLAG}
param cautious = 0 {_FLAG}
param eps = 1e-8 {_POS}
let b1 = where({_MIXED}, beta1, beta1_1d)
let b2 = where({_MIXED}, beta2, beta2_1d)
let wd = where({_MIXED}, weight_decay, weight_decay_1d)
state lr0 = where(lr0 > 0, lr0, lr)
let factor = where({_MIXED}, 1, where(lr0 > 0, lr_1d / lr0, 0))
let c = (g - last) * (gamma * (beta1 / (1 - beta1))) + g
let x = where({_MIXED}, c / max(norm(c), 1), g)
state last = where({_MIXED}, where(weight_decouple, g, g + wd * w), 0)
state m = lerp(m, x, 1 - b1)
let u = where(cautious, {_cautious("m", "g")}, m)
state v = b2 * v + (1 - b2) * x^2
state vmax = where(ams_bound, max(vmax, v), 0)
let adamw = u / ((sqrt(where(ams_bound, vmax, v) + 1e-15) + eps) / (1 - b2^t)^0.5 * (1 - b1^t))
let direction = where(mars_type * {_MIXED}, sign(u), adamw)
let decay = where(weight_decouple, where(fixed_decay, where(lr > 0, wd / lr, 0), factor * wd), 0)
update = decay * w + factor * direction
""", """MARS, with pytorch_optimizer.MARS's keywords (mars_type 'adamw', or 'lion'): for
tensors of two or more dimensions (all with optimize_1d), AdamW on the variance-reduced
gradient c = g + gamma beta1 / (1 - beta1) (g - g_prev), scaled to norm at most 1 (the
sign of its average with 'lion'); AdamW on g with betas_1d and weight_decay_1d for the
others, at lr_1d / lr times the lr (lr: the first, the reference's constructor's).
(Yuan et al., 2024, "MARS: Unleashing the Power of Variance Reduction for Training Large
Models"; pytorch_optimizer.MARS)""")

# --- rules that read every parameter, set it, or show another point -------------------
# Prodigy estimates its step size from reductions over all the parameters (gsum) and keeps
# the initial ones (from w); Schedule-Free sets the parameter (w = ...) and evaluates at
# another point (eval_w); YellowFin tunes lr and momentum from global statistics and a
# window of curvature extremes.

_baseline("prodigy", 1.0, """param beta1 = 0.9 in [0, 1)
param beta2 = 0.999 in [0, 1)
param beta3 = -1 in [-1, 1)
param eps = 1e-8 in (0, inf)
param weight_decay = 0 in [0, inf)
param decouple = 1 in [0, 1]
param use_bias_correction = 0 in [0, 1]
param safeguard_warmup = 0 in [0, 1]
param d0 = 1e-6 in (0, inf)
param d_coef = 1 in [0, inf)
param growth_rate = inf in [0, inf]
param fsdp_in_use = 0 in [0, 0]
param slice_p = 1 in [1, 1]
let b3 = where(beta3 < 0, sqrt(beta2), beta3)
let grad = where(decouple, g, g + weight_decay * w)
let dlr = d * lr * where(use_bias_correction, sqrt(1 - beta2^t) / (1 - beta1^t), 1)
state x0 = x0 from w
state numerator = b3 * numerator + d / d0 * dlr * gsum(grad * (x0 - w))
state m = beta1 * m + d * (1 - beta1) * grad
state v = beta2 * v + d * d * (1 - beta2) * grad * grad
state s = b3 * s + d / d0 * where(safeguard_warmup, d, dlr) * grad
let d_hat = d_coef * numerator / gsum(abs(s))
state d_max = max(d_max, d_hat) from d0
state d = min(d_max, where(d == d0, max(d, d_hat), d) * growth_rate) from d0
let decay = where(decouple, weight_decay * w, 0)
w = w - dlr * decay - dlr * where(beta1 > 0, m, d * grad) / (sqrt(v) + d * eps)
""", """Prodigy, with prodigyopt.Prodigy's keywords: Adam scaled by an estimate d of the
distance to the solution, d_hat = d_coef sum(g (x0 - w)) d / d0 dlr (a running sum with
beta3) / sum(|s|), s a running sum of g d / d0 dlr, both over every parameter; d grows
to max(d, d_hat) at most growth_rate times a step; dlr = d lr (times Adam's bias
correction with use_bias_correction); beta3 None (-1) is sqrt(beta2); weight decay
decoupled (decouple) or added to g. fsdp_in_use and slice_p other than 1 are refused.
(Mishchenko & Defazio, 2024, "Prodigy: An Expeditiously Adaptive Parameter-Free
Learner"; prodigyopt.Prodigy)""")

_baseline("schedulefree_adamw", 0.0025, """param beta1 = 0.9 in [0, 1)
param beta2 = 0.999 in [0, 1)
param eps = 1e-8 in [0, inf)
param weight_decay = 0 in [0, inf)
param warmup_steps = 0 in [0, inf)
param r = 0 in [0, inf)
param weight_lr_power = 2 in [0, inf)
let scheduled_lr = lr * where(t <= warmup_steps, t / warmup_steps, 1)
state lr_max = max(scheduled_lr, lr_max) from -1
let weight = t^r * lr_max^weight_lr_power
state weight_sum = weight_sum + weight
let ckp1 = where(weight_sum == 0, 0, weight / weight_sum)
state v = beta2 * v + (1 - beta2) * g * g
let u = g / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * w
let y = lerp(w, z, ckp1) + scheduled_lr * (beta1 * (1 - ckp1) - 1) * u
state z = z - scheduled_lr * u from w
w = y
eval_w = lerp(w, z, 1 - 1 / beta1)
train_w = lerp(w, z, 1 - beta1)
""", """Schedule-Free AdamW, with schedulefree.AdamWScheduleFree's keywords: the gradient
is taken at y (the parameter while training); u = g / (sqrt(v / (1 - beta2^t)) + eps) +
weight_decay y; z <- z - lr u (z starts at w); y <- lerp(y, z, c) + lr (beta1 (1 - c) -
1) u with c = weight / weight_sum, weight = t^r lr_max^weight_lr_power (lr warmed up
over warmup_steps). optimizer.eval() sets the parameters to the average x = lerp(y, z,
1 - 1/beta1), optimizer.train() back to y. (Defazio et al., 2024, "The Road Less
Scheduled"; schedulefree.AdamWScheduleFree)""")

_baseline("yellowfin", 1e-4, """param mu = 0 in [0, 1)
param weight_decay = 0 in [0, inf)
param beta = 0.999 in [0, 1)
param clip_thresh = 0 in [0, inf)
param auto_clip_fac = 0 in [0, inf)
param zero_debias = 1 in [0, 1]
param h_max_log_smooth = 1 in [0, 1]
param h_min_log_smooth = 1 in [0, 1]
param adapt_clip = 1 in [0, 1]
param stat_protect_fac = 100 in (0, inf)
param catastrophic_move_thresh = 100 in (0, inf)
let e = 1e-6
let auto_clipped = where((auto_clip_fac > 0) * (t > 1), \
                        clip_gnorm(g, sqrt(h_max) * auto_clip_fac), g)
let g0 = where(clip_thresh > 0, clip_gnorm(g, clip_thresh), auto_clipped)
let g1 = where(adapt_clip * (t > 2), clip_gnorm(g0, sqrt(stat_protect_fac * h_max) + e), g0)
let G = gsum(g1 * g1)
let exploding = adapt_clip * (t > 1) * (G >= h_max)
let g2 = where(exploding, clip_gnorm(g1, sqrt(h_max) + e), g1)
state G_avg = beta * G_avg + (1 - beta) * G
let db = where(zero_debias, 1 - beta^t, 1)
let low = winmin(G, 20)
let high = winmax(G, 20)
state hmin_avg = beta * hmin_avg + (1 - beta) * where(h_min_log_smooth, log(low + e), low)
state hmax_avg = beta * hmax_avg + (1 - beta) * where(h_max_log_smooth, log(high + e), high)
let h_min = where(h_min_log_smooth, exp(hmin_avg / db), hmin_avg / db)
state h_max = where(h_max_log_smooth, exp(hmax_avg / db), hmax_avg / db)
state a = beta * a + (1 - beta) * g1
let grad_var = max(gsum(a * a) / -(db^2) + G_avg / db, e)
state gnorm_avg = beta * gnorm_avg + (1 - beta) * sqrt(G)
state dist_avg = beta * dist_avg + (1 - beta) * gnorm_avg / (G_avg + e)
let dist = dist_avg / db
let P = (dist + e)^2 * (h_min + e)^2 / 2 / (grad_var + e)
let w3 = (-sqrt(P^2 + 4 / 27 * P^3) - P) / 2
let root = sign(w3) * abs(w3)^(1 / 3)
let x = root - P / 3 / (root + e) + 1
let dr = max((h_max + e) / (h_min + e), 1 + e)
let mu_t = where(t > 1, max(x^2, ((sqrt(dr) - 1) / (sqrt(dr) + 1))^2), mu)
let lr_tuned = (1 - sqrt(mu_t))^2 / (h_min + e)
let lr_t = where(t > 1, min(lr_tuned, lr_tuned * t / (10 * 20)), lr)
let catastrophic = adapt_clip * (lr_t * sqrt(G) >= catastrophic_move_thresh)
let lr_sgd = where(catastrophic, catastrophic_move_thresh / sqrt(G + e), lr_t)
let d = g2 + weight_decay * w
let moving = mu_t != 0
state b = where(moving, where(started, mu_t * b + d, d), b)
state started = max(started, moving)
w = w - lr_sgd * where(moving, b, d)
param curv_win_width = 20 in [20, 20]
param sparsity_debias = 0 in [0, 0]
param force_non_inc_step = 0 in [0, 0]
param delta_mu = 0 in [-inf, inf)
param checkpoint_interval = 1000 in [1, inf)
param verbose = 0 in [0, 1]
""", """YellowFin, with the keywords of its authors' PyTorch YFOptimizer: momentum SGD whose
momentum and lr are tuned every step from statistics over every parameter: G = |g|^2
(global), the curvature range h_min, h_max from the extremes of log G over the last 20
steps (running averages, zero-debiased), the gradient variance and the distance to the
optimum; mu solves the paper's cubic (at least ((sqrt(h_max/h_min) - 1) / (sqrt(h_max/
h_min) + 1))^2), lr = (1 - sqrt(mu))^2 / h_min with a slow start; gradients clipped
against h_max (adapt_clip) and the step against catastrophic moves. lr is the first
step's. Not followed: the restore from a checkpoint when the statistics are not finite,
sparsity_debias, force_non_inc_step and a window other than 20 (refused). (Zhang &
Mitliagkas, 2019, "YellowFin and the Art of Momentum Tuning"; JianGoForIt/
YellowFin_Pytorch tuner_utils/yellowfin.py)""")


BASELINES: dict[str, Baseline] = {b.name: b for b in _REGISTRY}


def baselines() -> dict[str, Baseline]:
    """Every named rule, by name: ``nos.baselines()["adam"].text``."""
    return dict(BASELINES)
