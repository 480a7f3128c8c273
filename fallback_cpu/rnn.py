"""Recurrent kernels of the NumPy provider: RNN, GRU, LSTM.

The input projection X @ W^T of every time step is one BLAS call; the loop over time steps
then does one H @ R^T matmul per step for the whole batch. sequence_lens freezes a batch
row's state past its length and zeroes its Y rows there.
"""
from __future__ import annotations

import numpy as np

from tritort.runstate import check as check_terminate

from .nn_util import narrow, sigmoid, widen
from .registry import register

# activation name -> (fn(x, alpha, beta), default alpha, default beta)
_ACTIVATIONS = {
    "relu": (lambda x, a, b: np.maximum(x, 0), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "sigmoid": (lambda x, a, b: sigmoid(x), None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * (np.exp(np.minimum(x, 0)) - 1)), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: np.logaddexp(x, 0), None, None),
}


def _activations(ctx, defaults: list[str], num_directions: int):
    """One list of callables per direction, consuming activation_alpha/beta in order."""
    names = ctx.attr("activations") or defaults * num_directions
    if len(names) == len(defaults) and num_directions == 2:
        names = list(names) * 2
    alphas = list(ctx.attr("activation_alpha") or [])
    betas = list(ctx.attr("activation_beta") or [])
    fns = []
    for name in names:
        fn, da, db = _ACTIVATIONS[name.lower()]
        a = alphas.pop(0) if da is not None and alphas else da
        b = betas.pop(0) if db is not None and betas else db
        fns.append(lambda x, fn=fn, a=a, b=b: fn(x, a, b))
    per = len(defaults)
    return [fns[d * per:(d + 1) * per] for d in range(num_directions)]


class _Recurrent:
    """Attribute parsing and the direction/layout/sequence_lens plumbing shared by all three."""

    def __init__(self, ctx, gates: int, default_acts: list[str]):
        self.direction = ctx.attr("direction", "forward")
        self.num_directions = 2 if self.direction == "bidirectional" else 1
        self.hidden = int(ctx.attr("hidden_size"))
        self.layout = int(ctx.attr("layout", 0))
        clip = ctx.attr("clip")
        self.clip = float(clip) if clip is not None else None
        self.gates = gates
        self.acts = _activations(ctx, default_acts, self.num_directions)

    def clipped(self, g):
        return np.clip(g, -self.clip, self.clip) if self.clip is not None else g

    def prepare(self, x, w, b, sequence_lens, init):
        """Time-major widened X, per-direction input projections and initial states."""
        xw = widen(x)
        if self.layout == 1:
            xw = xw.transpose(1, 0, 2)
        seq, batch = xw.shape[:2]
        lens = (np.full(batch, seq, dtype=np.int64) if sequence_lens is None
                else sequence_lens.astype(np.int64))
        ww = widen(w)
        bias = widen(b) if b is not None else np.zeros((self.num_directions, 2 * ww.shape[1]),
                                                        dtype=xw.dtype)
        states = []
        for s in init:
            if s is None:
                states.append(np.zeros((self.num_directions, batch, self.hidden), dtype=xw.dtype))
            else:
                s = widen(s)
                states.append(s.transpose(1, 0, 2) if self.layout == 1 else s)
        return xw, lens, ww, bias, states

    def run(self, x, w, r, b, sequence_lens, init, step):
        """Run ``step(d, x_proj_t, states, r_d, rb_d) -> (h, new_states)`` over time per direction.

        Returns Y (time-major, (seq, dirs, batch, hidden)) and the final states per kind.
        """
        xw, lens, ww, bias, states = self.prepare(x, w, b, sequence_lens, init)
        seq, batch = xw.shape[:2]
        rw = widen(r)
        gh = self.gates * self.hidden
        y = np.zeros((seq, self.num_directions, batch, self.hidden), dtype=xw.dtype)
        finals = [np.zeros_like(s) for s in states]
        steps = np.arange(seq)[:, None]
        for d in range(self.num_directions):
            reverse = self.direction == "reverse" or d == 1
            # reverse: walk each row's valid prefix backwards (t -> len - 1 - t)
            order = np.where(steps < lens, lens - 1 - steps, steps) if reverse else \
                np.broadcast_to(steps, (seq, batch))
            xs = xw[order, np.arange(batch)] if reverse else xw
            proj = (xs.reshape(seq * batch, -1) @ ww[d].T).reshape(seq, batch, -1) + bias[d, :gh]
            cur = [s[d] for s in states]
            for t in range(seq):
                check_terminate()  # long sequences: the run's terminate flag, per step
                active = (t < lens)[:, None]
                h, new = step(d, proj[t], cur, rw[d], bias[d, gh:])
                cur = [np.where(active, n, c) for n, c in zip(new, cur)]
                y[t, d] = np.where(active, h, 0)
            if reverse:
                y[:, d] = y[order, d, np.arange(batch)]  # the mapping is its own inverse
            for k, c in enumerate(cur):
                finals[k][d] = c
        return y, finals

    def outputs(self, y, finals, dtype):
        if self.layout == 1:
            y = y.transpose(2, 0, 1, 3)
            finals = [f.transpose(1, 0, 2) for f in finals]
        return (narrow(np.ascontiguousarray(y), dtype),) + tuple(
            narrow(np.ascontiguousarray(f), dtype) for f in finals)


@register("RNN", since=[1, 7, 14, 22])
def rnn(ctx):
    rec = _Recurrent(ctx, 1, ["Tanh"])

    def step(d, xp, states, r, rb):
        (f,) = rec.acts[d]
        h = f(rec.clipped(xp + states[0] @ r.T + rb))
        return h, [h]

    def run(x, w, r, b=None, sequence_lens=None, initial_h=None):
        y, finals = rec.run(x, w, r, b, sequence_lens, [initial_h], step)
        return rec.outputs(y, finals, x.dtype)

    return run


@register("GRU", since=[1, 3, 7, 14, 22])
def gru(ctx):
    rec = _Recurrent(ctx, 3, ["Sigmoid", "Tanh"])
    linear_before_reset = bool(ctx.attr("linear_before_reset", 0))
    hs = rec.hidden

    def step(d, xp, states, r, rb):
        f, g = rec.acts[d]
        (h_prev,) = states
        # gate order z, r, h; the h-gate's recurrent term depends on the reset gate
        rec_zr = h_prev @ r[:2 * hs].T + rb[:2 * hs]
        z = f(rec.clipped(xp[:, :hs] + rec_zr[:, :hs]))
        reset = f(rec.clipped(xp[:, hs:2 * hs] + rec_zr[:, hs:]))
        if linear_before_reset:
            rec_h = reset * (h_prev @ r[2 * hs:].T + rb[2 * hs:])
        else:
            rec_h = (reset * h_prev) @ r[2 * hs:].T + rb[2 * hs:]
        h_tilde = g(rec.clipped(xp[:, 2 * hs:] + rec_h))
        h = (1 - z) * h_tilde + z * h_prev
        return h, [h]

    def run(x, w, r, b=None, sequence_lens=None, initial_h=None):
        y, finals = rec.run(x, w, r, b, sequence_lens, [initial_h], step)
        return rec.outputs(y, finals, x.dtype)

    return run


@register("LSTM", since=[1, 7, 14, 22])
def lstm(ctx):
    rec = _Recurrent(ctx, 4, ["Sigmoid", "Tanh", "Tanh"])
    input_forget = bool(ctx.attr("input_forget", 0))
    hs = rec.hidden

    def run(x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None):
        peep = widen(p) if p is not None else None

        def step(d, xp, states, rw, rb):
            f, g, h_act = rec.acts[d]
            h_prev, c_prev = states
            gates = xp + h_prev @ rw.T + rb  # order i, o, f, c
            gi, go, gf, gc = (gates[:, k * hs:(k + 1) * hs] for k in range(4))
            if peep is not None:
                gi = gi + peep[d, :hs] * c_prev
                gf = gf + peep[d, 2 * hs:] * c_prev
            i = f(rec.clipped(gi))
            forget = 1 - i if input_forget else f(rec.clipped(gf))
            c = forget * c_prev + i * g(rec.clipped(gc))
            if peep is not None:
                go = go + peep[d, hs:2 * hs] * c
            h = f(rec.clipped(go)) * h_act(c)
            return h, [h, c]

        y, finals = rec.run(x, w, r, b, sequence_lens, [initial_h, initial_c], step)
        return rec.outputs(y, finals, x.dtype)

    return run
