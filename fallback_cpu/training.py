"""Training kernels: the ai.onnx.preview.training optimizers and the loss ops.

Optimizers take R (learning rate), T (step count), then n parameter tensors followed by
n tensors of each state kind, and return the n new parameters then the new states.
Float16/bfloat16 math runs in float32 and is rounded once at the end.
"""
from __future__ import annotations

import numpy as np

from .registry import NodeContext, register

TRAINING_DOMAIN = "ai.onnx.preview.training"


def _work(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64 if x.dtype == np.float64 else np.float32)


def _groups(inputs: tuple, kinds: int) -> tuple[float, int, list[tuple]]:
    r, t, *rest = inputs
    n = len(rest) // kinds
    return float(np.asarray(r).reshape(-1)[0]), int(np.asarray(t).reshape(-1)[0]), \
        [tuple(rest[k * n + i] for k in range(kinds)) for i in range(n)]


def _interleave(results: list[tuple]) -> tuple:
    """[(x1, s1), (x2, s2)] -> (x1, x2, s1, s2): all new parameters, then each state kind."""
    return tuple(out for kind in zip(*results) for out in kind)


@register("Adagrad", since=[1], domain=TRAINING_DOMAIN)
def adagrad(ctx: NodeContext):
    decay = ctx.attr("decay_factor", 0.0)
    eps = ctx.attr("epsilon", 1e-6)
    norm = ctx.attr("norm_coefficient", 0.0)

    def step(r, t, x, g, h):
        xw, gw, hw = _work(x), _work(g), _work(h)
        rate = r / (1 + t * decay)
        g_reg = norm * xw + gw
        h_new = hw + g_reg * g_reg
        x_new = xw - rate * g_reg / (np.sqrt(h_new) + eps)
        return x_new.astype(x.dtype), h_new.astype(h.dtype)

    def run(*inputs):
        r, t, groups = _groups(inputs, 3)
        return _interleave([step(r, t, *grp) for grp in groups])

    return run


@register("Adam", since=[1], domain=TRAINING_DOMAIN)
def adam(ctx: NodeContext):
    alpha, beta = ctx.attr("alpha", 0.9), ctx.attr("beta", 0.999)
    eps = ctx.attr("epsilon", 1e-6)
    norm, norm_post = ctx.attr("norm_coefficient", 0.0), ctx.attr("norm_coefficient_post", 0.0)

    def step(r, t, x, g, v, h):
        xw, gw, vw, hw = _work(x), _work(g), _work(v), _work(h)
        g_reg = norm * xw + gw
        v_new = alpha * vw + (1 - alpha) * g_reg
        h_new = beta * hw + (1 - beta) * g_reg * g_reg
        # Bias correction of both moments once training has started.
        rate = r * np.sqrt(1 - beta ** t) / (1 - alpha ** t) if t > 0 else r
        x_new = (1 - norm_post) * (xw - rate * v_new / (np.sqrt(h_new) + eps))
        return x_new.astype(x.dtype), v_new.astype(v.dtype), h_new.astype(h.dtype)

    def run(*inputs):
        r, t, groups = _groups(inputs, 4)
        return _interleave([step(r, t, *grp) for grp in groups])

    return run


@register("Momentum", since=[1], domain=TRAINING_DOMAIN)
def momentum(ctx: NodeContext):
    alpha, beta = ctx.attr("alpha"), ctx.attr("beta")
    norm = ctx.attr("norm_coefficient")
    nesterov = ctx.attr("mode", "standard") == "nesterov"

    def step(r, t, x, g, v):
        xw, gw, vw = _work(x), _work(g), _work(v)
        g_reg = norm * xw + gw
        v_new = alpha * vw + (beta if t > 0 else 1.0) * g_reg  # plain gradient at step 0
        x_new = xw - r * (g_reg + alpha * v_new if nesterov else v_new)
        return x_new.astype(x.dtype), v_new.astype(v.dtype)

    def run(*inputs):
        r, t, groups = _groups(inputs, 3)
        return _interleave([step(r, t, *grp) for grp in groups])

    return run


# -------------------------------------------------------------------- losses


def nll_loss(log_prob: np.ndarray, target: np.ndarray, weight: np.ndarray | None,
             reduction: str, ignore_index: int | None) -> np.ndarray:
    """Negative log-likelihood of ``log_prob`` [N, C, d...] at ``target`` [N, d...]."""
    target = target.astype(np.int64)
    keep = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    safe = np.where(keep, target, 0)
    picked = np.take_along_axis(log_prob, safe[:, None], axis=1)[:, 0]
    w = (np.ones(target.shape, log_prob.dtype) if weight is None
         else weight.astype(log_prob.dtype)[safe])
    w = np.where(keep, w, 0)
    loss = -picked * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.array(loss.sum())
    # mean: weighted by the weights of the targets that count
    return np.array(loss.sum() / w.sum())


def _loss_factory(ctx: NodeContext):
    reduction = ctx.attr("reduction", "mean")
    ignore_index = ctx.attr("ignore_index")
    softmax = ctx.op_type == "SoftmaxCrossEntropyLoss"

    def run(x, target, weight=None):
        xw = _work(x)
        if softmax:
            shifted = xw - xw.max(axis=1, keepdims=True)
            xw = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = nll_loss(xw, target, weight, reduction, ignore_index).astype(x.dtype)
        return (loss, xw.astype(x.dtype)) if softmax else (loss,)

    return run


register("NegativeLogLikelihoodLoss", since=[12, 13, 22])(_loss_factory)
register("SoftmaxCrossEntropyLoss", since=[12, 13])(_loss_factory)
