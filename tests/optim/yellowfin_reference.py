"""YellowFin as its authors' PyTorch code steps it, transcribed to NumPy in float64.

Source: JianGoForIt/YellowFin_Pytorch, ``tuner_utils/yellowfin.py`` at master
(b87aed1, "adapt to pytorch 1.0", March 2019), class ``YFOptimizer``; paper: Zhang,
Mitliagkas & Ré, "YellowFin and the Art of Momentum Tuning" (arXiv:1706.03471). This
follows the code, step for step, wherever it and the paper might differ (see the end).
This file is a test oracle: it steps a list of NumPy arrays with a list of gradients and
keeps its own state::

    ref = YellowFinReference(params)          # params: arrays (or shapes), the keywords below
    ref.step(params, grads)                   # updates params in place; grads are not changed
    ref.lr_t, ref.mu_t                        # this step's tuned values
    ref.step_lr, ref.step_momentum            # what the momentum-SGD update used
    ref.lr, ref.mu                            # the beta-averaged values (the code's _lr, _mu)
    ref.h_min, ref.h_max, ref.grad_var, ref.dist_to_opt, ref.iter, ref.global_state,
    ref.state[i] ("grad_avg", "momentum_buffer"), ref.lr_factor (set_lr_factor), ref.restores

Notation
--------
t            the step counter, 0 at the first step, +1 after every successful step
beta         ``beta`` (0.999), W = ``curv_win_width`` (20), eps = 1e-6 (the module's
             constant, used everywhere below), C = ``catastrophic_move_thresh`` (100)
g_i          the gradient of parameter i as given, or None (then parameter i is skipped
             by every sum and by the update, as ``p.grad is None`` is in the code)
db_t         the zero-debias factor 1 - beta**(t+1); it is 1 where ``zero_debias=False``
             unless a step says "always debiased"
S = sum_i    a sum over ALL parameters that have a gradient (the code has one SGD param
             group: every statistic is global over the whole model)
clip(g, m)   torch.nn.utils.clip_grad_norm on all gradients at once:
             n = sqrt(S ||g_i||^2);  if m / (n + 1e-6) < 1: every g_i *= m / (n + 1e-6)

Every quantity below except the per-parameter arrays (g_i, the gradient average a_i, the
momentum buffer b_i, the parameter p_i) is a scalar. In the code the scalars are Python
floats, NumPy scalars or 0-d tensors, the window is a CPU tensor, and every decision
(clipping, the cubic solve, mu and lr) is taken in Python on the host: each step reads
||g||^2 and S ||a_i||^2 back from the device (the norms are device reductions over all
parameters; everything after them is host arithmetic on scalars).

One step, in the code's order
-----------------------------
0. Weight decay: the code's loop ``grad = grad.add(weight_decay, p)`` builds a new tensor
   and drops it, so the statistics never see weight decay; it only enters the SGD update
   (step 9), where torch.optim.SGD adds it.
1. Clipping before the statistics (h_max is the previous step's, step 4):
     if clip_thresh is not None:                  g = clip(g, clip_thresh)
     elif t != 0 and auto_clip_fac is not None:   g = clip(g, sqrt(h_max) * auto_clip_fac)
     if adapt_clip and t > 1:                     g = clip(g, sqrt(stat_protect_fac * h_max) + eps)
   These change the gradients the statistics and the update both see.
2. Gradient norm [global reduction]:  G_t = S sum(g_i * g_i)
   Exploding-gradient test, only if t >= 1, against the PREVIOUS step's h_max:
     exploding = (G_t >= h_max);  target = sqrt(h_max)
   (for t = 0 the flag keeps its last value: False at construction.)
   Running average:  Gbar = beta * Gbar + (1 - beta) * G_t          (Gbar = 0 at t = 0)
3. If sparsity_debias [global count]:
     s_avg = beta * s_avg + (1 - beta) * (number of nonzero entries of all g_i)
                                         / (number of entries of all g_i)
     s = s_avg / (1 - beta**(t+1))                  (always debiased)
4. Curvature range [window of the last W values of G]:
     win[t mod W] = G_t  (win = W zeros at t = 0; the valid part is win[:min(W, t+1)], i.e.
                          the last min(W, t+1) values of G, the current one included)
     m_min = min over the valid part of log(win + eps)   (of win itself if not h_min_log_smooth)
     m_max = max over the valid part of log(win + eps)   (of win itself if not h_max_log_smooth)
     hmin_avg = beta * hmin_avg + (1 - beta) * m_min     (0 at t = 0)
     hmax_avg = beta * hmax_avg + (1 - beta) * m_max     (0 at t = 0)
     h_min = exp(hmin_avg / db_t)  (or hmin_avg / db_t without log smoothing)
     h_max = exp(hmax_avg / db_t)  (or hmax_avg / db_t without log smoothing)
     if sparsity_debias: h_min *= s; h_max *= s
5. Gradient variance [per-parameter running average, then a global reduction]:
     a_i = beta * a_i + (1 - beta) * g_i                 (a_i = 0 at t = 0)
     A = S sum(a_i * a_i)
     grad_var = A / -(db_t**2) + Gbar / db_t
     grad_var = max(grad_var, eps)
     if sparsity_debias: grad_var *= s
6. Distance to the optimum:
     gnorm_avg = beta * gnorm_avg + (1 - beta) * sqrt(G_t)          (0 at t = 0)
     dist_avg  = beta * dist_avg + (1 - beta) * gnorm_avg / (Gbar + eps)   (0 at t = 0)
     dist = dist_avg / db_t
     if sparsity_debias: dist /= sqrt(s) + eps
   (gnorm_avg and Gbar are used without debiasing: their ratio cancels it.)
7. Tuning, only if t > 0 (at t = 0, lr_t and mu_t are the constructor's lr and mu):
   a. the cubic, if dist, h_min or grad_var is nan or inf the step fails (step 11):
        P  = (dist + eps)**2 * (h_min + eps)**2 / 2 / (grad_var + eps)
        w3 = (-sqrt(P**2 + 4/27 * P**3) - P) / 2
        w  = sign(w3) * |w3|**(1/3)
        y  = w - P / 3 / (w + eps)
        x  = y + 1              (nan or inf: the step fails; x = sqrt(mu) of the paper:
                                 y solves y**3 + P*y + P = 0, the stationarity condition of
                                 x**2 D**2 + (1-x)**4 C / h_min**2 with x = y + 1)
   b. dr = max((h_max + eps) / (h_min + eps), 1 + eps)
      mu_t = max(x**2, ((sqrt(dr) - 1) / (sqrt(dr) + 1))**2)
   c. lr_t = (1 - sqrt(mu_t))**2 / (h_min + eps)
      lr_t = min(lr_t, lr_t * (t + 1) / (10 * W))       (slow start over the first 10*W steps)
   d. lr = beta * lr + (1 - beta) * lr_t;  mu = beta * mu + (1 - beta) * mu_t
      (averages that start from the constructor's lr and mu; the update uses them only
       under force_non_inc_step)
8. The SGD group's hyperparameters:
     momentum = mu_t                                       (not the average mu)
     if not force_non_inc_step:
       lr_sgd = lr_t * lr_factor
       if adapt_clip and lr_sgd * sqrt(G_t) >= C:  lr_sgd = C / sqrt(G_t + eps)
     elif t > W:  (force_non_inc_step)
       L  = beta * L + (1 - beta) * log(G_t + eps)                      (L = 0 at first use)
       M  = beta * M + (1 - beta) * log(lr * sqrt(G_t) + eps)          (M = 0 at first use)
       Mmin = exp(M / (1 - beta**(t+1))) at first use, else min(Mmin, exp(M / (1 - beta**(t+1))))
       lr_sgd = min(lr * lr_factor, 2 * Mmin / (sqrt(exp(L / (1 - beta**(t+1)))) + eps))
       (both always debiased, with the factor of t although they start at t = W + 1)
     else: lr_sgd keeps its value (the constructor's lr until t > W)
   Every ``checkpoint_interval`` steps (t mod interval == 0) the state is saved here
   (after the statistics of step t, before its update) for step 11.
9. Exploding-gradient clip, after the statistics and before the update:
     if adapt_clip and exploding:  g = clip(g, target + eps)
   torch.optim.SGD (dampening 0, no Nesterov), for each parameter with a gradient:
     d_i = g_i + weight_decay * p_i                        (if weight_decay != 0)
     if momentum != 0:  b_i = d_i at its first use (b_i = copy of d_i), else
                        b_i = momentum * b_i + d_i;   d_i = b_i
                        (when momentum == 0 the buffer is neither used nor changed)
     p_i = p_i - lr_sgd * d_i
10. t = t + 1.
11. Failure (nan or inf at step 7a): the code catches it, reloads the last checkpoint
    (parameters, momentum buffers, a_i, the global statistics, t, lr, mu, h_min, h_max,
    lr_factor and the SGD group's lr and momentum as they were then) and adds 1e-8 to
    every parameter; t is not advanced and this step's update is not applied. lr_t, mu_t,
    grad_var, dist and the exploding flag are not part of the checkpoint and keep their
    current values.

State kept
----------
per parameter: a_i (gradient average), b_i (momentum buffer, created at the first step
whose momentum is nonzero); scalars: t, Gbar, G_t, the window win (W values),
hmin_avg, hmax_avg, h_min, h_max, gnorm_avg, dist_avg, lr, mu, lr_t, mu_t, lr_sgd,
momentum, the exploding flag and target, lr_factor, s_avg (sparsity_debias), L, M, Mmin
(force_non_inc_step); a checkpoint copy of all of that and of the parameters.

Precision: the original rounds to float32 in three places, whatever the parameters' dtype
(marked "float32 in the original" below): the window ``win`` is a torch.FloatTensor, so
G_t is stored, offset by eps and logged in float32, and hmin_avg / hmax_avg (and h_min,
h_max from them) are then float32 0-d tensors; the accumulator of A (and so grad_var)
is an np.float32; and lr_t, divided by the float32 h_min + eps, is a float32 tensor (and
so is lr_sgd = lr_t * lr_factor); whatever comes from h_min and h_max alone (dr, the
dynamic-range bound of mu_t, the exploding threshold) is float32 as well. Here
everything is float64. Measured on float64 parameters over 300 noisy steps, every option
above exercised: against the original with its window and accumulator made float64 this
agrees to 1e-14 (parameters and lr_t / mu_t, the failure path included); against the
original as it is, to about 1e-5 relative on the parameters.

Keywords (the code's, with its defaults): lr=0.0001, mu=0.0, clip_thresh=None,
weight_decay=0.0, beta=0.999, curv_win_width=20, zero_debias=True, sparsity_debias=False,
delta_mu=0.0, auto_clip_fac=None, force_non_inc_step=False, h_max_log_smooth=True,
h_min_log_smooth=True, checkpoint_interval=1000, verbose=False, adapt_clip=True,
stat_protect_fac=100.0, catastrophic_move_thresh=100.0, use_disk_checkpoint=False,
checkpoint_dir='./YF_workspace'. All are implemented except: ``delta_mu`` (stored and
never read by the code either), ``verbose`` (logging only), and ``use_disk_checkpoint`` /
``checkpoint_dir`` (the code pickles the same checkpoint to a file instead of keeping it
in memory; here it is always kept in memory, which restores the same values and writes
no files). ``set_lr_factor`` is the attribute ``lr_factor``.

Where the failure path differs: the code's bare ``except:`` restores on ANY exception
inside the step (also, e.g., a KeyError for a parameter whose gradient was None at t = 0
and is not later); here only the two nan/inf checks of step 7a restore, and any other
exception propagates.

Code versus paper: the paper states momentum SGD as the heavy ball,
x_{t+1} = x_t - lr grad + mu (x_t - x_{t-1}); the code uses torch's buffer form
(b = mu b + g, p -= lr b), which gives the same iterates only while lr is constant, and lr
changes every step here. The averages lr, mu of step 7d reach the update in this code
only through force_non_inc_step's lr (the authors' TensorFlow YFOptimizer, by contrast,
hands the beta-averaged lr and mu to its MomentumOptimizer unless use_unsmoothed_lr_mu).
The eps guards, the log-domain curvature averages with zero-debiasing, the slow start,
the clippings, the catastrophic-move clamp and the checkpoint restore are the code's
engineering around the paper's tuning rule (measure h_min, h_max, C = grad_var and
D = dist; solve the cubic for mu; lr from mu and h_min).
"""

from __future__ import annotations

import copy
import math

import numpy as np

EPS = 1e-6  # the module-level eps of the original
_TORCH_CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s own constant (max_norm / (norm + 1e-6))


class NumericalIssue(Exception):
    """What the original raises on a nan/inf input to, or output from, the cubic solve."""


def clip_by_global_norm(grads: list, max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm(parameters, max_norm), norm_type 2, in place."""
    present = [g for g in grads if g is not None]
    if not present:
        return
    # torch takes the norm of the per-tensor norms; the same value up to rounding
    total = math.sqrt(sum(float(np.sum(g * g)) for g in present))
    coef = max_norm / (total + _TORCH_CLIP_EPS)
    if coef < 1:
        for g in present:
            g *= coef


class YellowFinReference:
    """YFOptimizer's step on lists of NumPy arrays; see the module docstring."""

    def __init__(self, params, lr=0.0001, mu=0.0, clip_thresh=None, weight_decay=0.0,
                 beta=0.999, curv_win_width=20, zero_debias=True, sparsity_debias=False,
                 delta_mu=0.0, auto_clip_fac=None, force_non_inc_step=False,
                 h_max_log_smooth=True, h_min_log_smooth=True, checkpoint_interval=1000,
                 verbose=False, adapt_clip=True, stat_protect_fac=100.0,
                 catastrophic_move_thresh=100.0, use_disk_checkpoint=False,
                 checkpoint_dir="./YF_workspace"):
        shapes = [tuple(p) if isinstance(p, (tuple, list)) else np.shape(p) for p in params]
        self.shapes = shapes
        # the smoothed lr / mu (the original's _lr, _mu) and this step's tuned values
        self.lr = lr
        self.mu = mu
        self.lr_t = lr
        self.mu_t = mu
        self.clip_thresh = clip_thresh
        self.weight_decay = weight_decay
        self.beta = beta
        self.curv_win_width = curv_win_width
        self.zero_debias = zero_debias
        self.sparsity_debias = sparsity_debias
        self.delta_mu = delta_mu  # unused, as in the original
        self.auto_clip_fac = auto_clip_fac
        self.force_non_inc_step = force_non_inc_step
        self.h_max_log_smooth = h_max_log_smooth
        self.h_min_log_smooth = h_min_log_smooth
        self.checkpoint_interval = checkpoint_interval
        self.verbose = verbose  # logging only in the original
        self.adapt_clip = adapt_clip
        self.stat_protect_fac = stat_protect_fac
        self.catastrophic_move_thresh = catastrophic_move_thresh
        self.use_disk_checkpoint = use_disk_checkpoint  # kept in memory here either way
        self.checkpoint_dir = checkpoint_dir
        self.lr_factor = 1.0
        self.iter = 0
        # the wrapped torch.optim.SGD's single param group and its per-parameter state
        # ("grad_avg" lives in SGD's state too in the original, so it is checkpointed with it)
        self.step_lr = lr
        self.step_momentum = mu
        self.state: list[dict] = [{} for _ in shapes]
        self.global_state: dict = {}
        self.exploding_grad_clip_thresh = 1e3
        self.exploding_grad_clip_target_value = 1e3
        self.exploding_grad_detected = False
        self.h_min = None  # set at the first step
        self.h_max = None
        self.grad_var = None
        self.dist_to_opt = None
        self.sparsity_avg = None
        self.restores = 0  # how many times the failure path reloaded the checkpoint
        self._checkpoint = None

    # ------------------------------------------------------------------ helpers
    def zero_debias_factor(self) -> float:
        return 1.0 - self.beta ** (self.iter + 1)

    def auto_clip_thresh(self) -> float:
        return math.sqrt(self.h_max) * self.auto_clip_fac

    # ------------------------------------------------------------- statistics
    def _curvature_range(self) -> None:
        gs = self.global_state
        beta = self.beta
        width = self.curv_win_width
        if self.iter == 0:
            gs["curv_win"] = np.zeros(width)  # torch.FloatTensor(W, 1): float32 in the original
        win = gs["curv_win"]
        win[self.iter % width] = gs["grad_norm_squared"]  # stored as float32 in the original
        valid = win[: min(width, self.iter + 1)]
        if self.iter == 0:
            gs["h_min_avg"] = 0.0
            gs["h_max_avg"] = 0.0
            self.h_min = 0.0
            self.h_max = 0.0
        # log(win + eps), its min / max, and from here on the averages: float32 in the original
        if self.h_min_log_smooth:
            gs["h_min_avg"] = gs["h_min_avg"] * beta + (1 - beta) * np.min(np.log(valid + EPS))
        else:
            gs["h_min_avg"] = gs["h_min_avg"] * beta + (1 - beta) * np.min(valid)
        if self.h_max_log_smooth:
            gs["h_max_avg"] = gs["h_max_avg"] * beta + (1 - beta) * np.max(np.log(valid + EPS))
        else:
            gs["h_max_avg"] = gs["h_max_avg"] * beta + (1 - beta) * np.max(valid)
        debias = self.zero_debias_factor() if self.zero_debias else 1.0
        if self.h_min_log_smooth:
            self.h_min = float(np.exp(gs["h_min_avg"] / debias))  # float32 in the original
        else:
            self.h_min = float(gs["h_min_avg"] / debias)
        if self.h_max_log_smooth:
            self.h_max = float(np.exp(gs["h_max_avg"] / debias))  # float32 in the original
        else:
            self.h_max = float(gs["h_max_avg"] / debias)
        if self.sparsity_debias:
            self.h_min *= self.sparsity_avg
            self.h_max *= self.sparsity_avg

    def _grad_variance(self, grads: list) -> None:
        gs = self.global_state
        beta = self.beta
        acc = 0.0  # np.array(0.0, dtype=np.float32) in the original: each += rounds to float32
        for state, g in zip(self.state, grads, strict=True):
            if g is None:
                continue
            if self.iter == 0:
                state["grad_avg"] = np.zeros_like(g)
            state["grad_avg"] = state["grad_avg"] * beta + (1 - beta) * g
            acc += float(np.sum(state["grad_avg"] * state["grad_avg"]))
        debias = self.zero_debias_factor() if self.zero_debias else 1.0
        var = acc / -(debias ** 2)  # float32 in the original
        var += gs["grad_norm_squared_avg"] / debias  # float32 in the original
        # negative when the two terms' debiasing disagree; Python's max keeps a nan
        var = max(var, EPS)
        if self.sparsity_debias:
            var *= self.sparsity_avg
        self.grad_var = var

    def _dist_to_opt(self) -> None:
        gs = self.global_state
        beta = self.beta
        if self.iter == 0:
            gs["grad_norm_avg"] = 0.0
            gs["dist_to_opt_avg"] = 0.0
        gs["grad_norm_avg"] = (gs["grad_norm_avg"] * beta
                               + (1 - beta) * math.sqrt(gs["grad_norm_squared"]))
        gs["dist_to_opt_avg"] = (gs["dist_to_opt_avg"] * beta
                                 + (1 - beta) * gs["grad_norm_avg"]
                                 / (gs["grad_norm_squared_avg"] + EPS))
        if self.zero_debias:
            self.dist_to_opt = gs["dist_to_opt_avg"] / self.zero_debias_factor()
        else:
            self.dist_to_opt = gs["dist_to_opt_avg"]
        if self.sparsity_debias:
            self.dist_to_opt /= np.sqrt(self.sparsity_avg) + EPS

    def _grad_sparsity(self, grads: list) -> None:
        gs = self.global_state
        if self.iter == 0:
            gs["sparsity_avg"] = 0.0
        nonzero = 0.0
        entries = 0.0
        for g in grads:
            if g is None:
                continue
            nonzero += np.count_nonzero(g)
            entries += g.size
        beta = self.beta
        gs["sparsity_avg"] = beta * gs["sparsity_avg"] + (1 - beta) * nonzero / float(entries)
        self.sparsity_avg = gs["sparsity_avg"] / self.zero_debias_factor()

    def _lr_grad_norm_avg(self) -> None:
        # force_non_inc_step only
        gs = self.global_state
        beta = self.beta
        first = "lr_grad_norm_avg" not in gs
        if first:
            gs["grad_norm_squared_avg_log"] = 0.0
        gs["grad_norm_squared_avg_log"] = (gs["grad_norm_squared_avg_log"] * beta
                                           + (1 - beta) * np.log(gs["grad_norm_squared"] + EPS))
        move = np.log(self.lr * np.sqrt(gs["grad_norm_squared"]) + EPS)
        if first:
            gs["lr_grad_norm_avg"] = 0.0 * beta + (1 - beta) * move
            gs["lr_grad_norm_avg_min"] = np.exp(gs["lr_grad_norm_avg"] / self.zero_debias_factor())
        else:
            gs["lr_grad_norm_avg"] = gs["lr_grad_norm_avg"] * beta + (1 - beta) * move
            gs["lr_grad_norm_avg_min"] = min(
                gs["lr_grad_norm_avg_min"],
                np.exp(gs["lr_grad_norm_avg"] / self.zero_debias_factor()))

    # ----------------------------------------------------------------- tuning
    def _get_cubic_root(self) -> float:
        for value in (self.dist_to_opt, self.h_min, self.grad_var):
            if np.isnan(value) or np.isinf(value):
                raise NumericalIssue("Input to cubic solver has invalid nan/inf value!")
        p = (self.dist_to_opt + EPS) ** 2 * (self.h_min + EPS) ** 2 / 2 / (self.grad_var + EPS)
        w3 = (-math.sqrt(p ** 2 + 4.0 / 27.0 * p ** 3) - p) / 2.0
        w = math.copysign(1.0, w3) * math.pow(math.fabs(w3), 1.0 / 3.0)
        y = w - p / 3.0 / (w + EPS)
        x = y + 1
        if np.isnan(x) or np.isinf(x):
            raise NumericalIssue("Output from cubic is invalid nan/inf value!")
        return x

    def _get_mu(self) -> None:
        root = self._get_cubic_root()
        dr = max((self.h_max + EPS) / (self.h_min + EPS), 1.0 + EPS)  # float32 in the original
        self.mu_t = max(root ** 2, ((np.sqrt(dr) - 1) / (np.sqrt(dr) + 1)) ** 2)

    def _get_lr(self) -> None:
        # divided by the float32 h_min + eps: float32 in the original
        self.lr_t = (1.0 - math.sqrt(self.mu_t)) ** 2 / (self.h_min + EPS)
        self.lr_t = min(self.lr_t, self.lr_t * (self.iter + 1) / float(10.0 * self.curv_win_width))

    def _before_apply(self, grads: list) -> None:
        beta = self.beta
        gs = self.global_state
        if self.iter == 0:
            gs["grad_norm_squared_avg"] = 0.0
        gs["grad_norm_squared"] = 0.0
        for g in grads:
            if g is not None:
                gs["grad_norm_squared"] += float(np.sum(g * g))
        if self.iter >= 1:
            self.exploding_grad_clip_thresh = self.h_max
            self.exploding_grad_clip_target_value = np.sqrt(self.h_max)
            self.exploding_grad_detected = (gs["grad_norm_squared"]
                                            >= self.exploding_grad_clip_thresh)
        gs["grad_norm_squared_avg"] = (gs["grad_norm_squared_avg"] * beta
                                       + (1 - beta) * gs["grad_norm_squared"])
        if self.sparsity_debias:
            self._grad_sparsity(grads)
        self._curvature_range()
        self._grad_variance(grads)
        self._dist_to_opt()
        if self.iter > 0:
            self._get_mu()
            self._get_lr()
            self.lr = beta * self.lr + (1 - beta) * self.lr_t
            self.mu = beta * self.mu + (1 - beta) * self.mu_t

    def _update_hyper_param(self) -> None:
        gs = self.global_state
        self.step_momentum = self.mu_t
        if not self.force_non_inc_step:
            self.step_lr = self.lr_t * self.lr_factor  # float32 in the original
            # the loose clamp against a catastrophically large move
            if (self.adapt_clip and self.step_lr * np.sqrt(gs["grad_norm_squared"])
                    >= self.catastrophic_move_thresh):
                self.step_lr = (self.catastrophic_move_thresh
                                / np.sqrt(gs["grad_norm_squared"] + EPS))
        elif self.iter > self.curv_win_width:
            self._lr_grad_norm_avg()
            debias = self.zero_debias_factor()
            self.step_lr = min(
                self.lr * self.lr_factor,
                2.0 * gs["lr_grad_norm_avg_min"]
                / (np.sqrt(np.exp(gs["grad_norm_squared_avg_log"] / debias)) + EPS))
        # else: the SGD group's lr keeps its last value

    # ------------------------------------------------------------- checkpoint
    _SAVED = ("global_state", "lr_factor", "iter", "lr", "mu", "clip_thresh", "beta",
              "curv_win_width", "zero_debias", "h_min", "h_max", "step_lr", "step_momentum",
              "state")

    def _save_checkpoint(self, params: list) -> None:
        saved = {name: copy.deepcopy(getattr(self, name)) for name in self._SAVED}
        saved["params"] = [np.array(p, dtype=np.float64, copy=True) for p in params]
        self._checkpoint = saved

    def _restore_checkpoint(self, params: list) -> None:
        saved = copy.deepcopy(self._checkpoint)
        for p, value in zip(params, saved.pop("params"), strict=True):
            p[...] = value
            p += 1e-8  # load_state_dict_perturb
        for name, value in saved.items():
            setattr(self, name, value)
        self.restores += 1

    # ------------------------------------------------------------------- step
    def step(self, params: list, grads: list) -> None:
        """One YFOptimizer.step(): params are updated in place, grads are copied first."""
        if len(params) != len(self.shapes) or len(grads) != len(self.shapes):
            raise ValueError("params and grads must match the parameters given at construction")
        grads = [None if g is None else np.array(g, dtype=np.float64, copy=True) for g in grads]

        # weight decay: a no-op in the original (grad.add(...) is discarded); SGD applies it
        if self.clip_thresh is not None:
            clip_by_global_norm(grads, self.clip_thresh)
        elif self.iter != 0 and self.auto_clip_fac is not None:
            clip_by_global_norm(grads, self.auto_clip_thresh())
        # the loose clip that protects the statistics from exploding gradients
        if self.adapt_clip and self.iter > 1:
            clip_by_global_norm(grads, np.sqrt(self.stat_protect_fac * self.h_max) + EPS)

        try:
            self._before_apply(grads)
            self._update_hyper_param()
            if self.iter % self.checkpoint_interval == 0:
                self._save_checkpoint(params)
            if self.adapt_clip and self.exploding_grad_detected:
                clip_by_global_norm(grads, self.exploding_grad_clip_target_value + EPS)
            self._sgd_step(params, grads)
            self.iter += 1
        except NumericalIssue:
            self._restore_checkpoint(params)

    def _sgd_step(self, params: list, grads: list) -> None:
        """torch.optim.SGD.step with momentum=step_momentum, dampening 0, no Nesterov."""
        momentum = self.step_momentum
        for p, g, state in zip(params, grads, self.state, strict=True):
            if g is None:
                continue
            d = g
            if self.weight_decay != 0:
                d = d + self.weight_decay * p
            if momentum != 0:
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = np.array(d, dtype=np.float64, copy=True)
                else:
                    buf = buf * momentum + d
                state["momentum_buffer"] = buf
                d = buf
            p -= self.step_lr * d
