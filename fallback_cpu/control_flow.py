"""Control-flow kernels of the NumPy provider: If, Loop, Scan, SequenceMap.

These run subgraphs through the runners that ``ctx.subgraph(attr)`` builds (once, in the
factory). Values the subgraphs read from enclosing scopes arrive positionally after the
node's explicit inputs, named by ``ctx.implicit_inputs``. Every trip checks the run's
terminate flag (``tritort.runstate``): a Loop of 2**63 trips stops when asked.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from tritort.dtypes import numpy_dtype
from tritort.runstate import check as check_terminate

from .registry import NodeContext, register
from .shape import norm_axis

_SUBGRAPH_OP_VERSIONS = [1, 11, 13, 16, 19, 21, 23, 24, 25]


def _split_inputs(ctx: NodeContext, inputs: tuple) -> tuple[tuple, dict[str, Any]]:
    """(explicit inputs, outer-scope values by name)."""
    n = ctx.num_inputs
    return inputs[:n], dict(zip(ctx.implicit_inputs, inputs[n:]))


def _subgraph(ctx: NodeContext, attr: str):
    if ctx.subgraph is None:
        raise RuntimeError(f"{ctx.op_type} '{ctx.name}' needs a session that runs subgraphs")
    return ctx.subgraph(attr)


def _truth(value) -> bool:
    """A single-element condition tensor as a Python bool."""
    return bool(np.asarray(value).reshape(-1)[0])


def _empty_stack(type_proto: onnx.TypeProto | None, axis: int = 0) -> np.ndarray:
    """A scan output of zero iterations: shape from the per-iteration type where known."""
    dtype, dims = np.dtype(np.float32), None
    if type_proto is not None and type_proto.HasField("tensor_type"):
        tt = type_proto.tensor_type
        if tt.elem_type:
            dtype = numpy_dtype(tt.elem_type)
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            dims = [d.dim_value for d in tt.shape.dim]
    if dims is None:
        return np.empty((0,), dtype=dtype)
    dims.insert(axis % (len(dims) + 1), 0)
    return np.empty(dims, dtype=dtype)


def _stack(values: list, type_proto: onnx.TypeProto | None, axis: int = 0) -> np.ndarray:
    if not values:
        return _empty_stack(type_proto, axis)
    return np.stack(values, axis=axis)


@register("If", since=_SUBGRAPH_OP_VERSIONS)
def if_(ctx: NodeContext):
    then_branch = _subgraph(ctx, "then_branch")
    else_branch = _subgraph(ctx, "else_branch")

    def run(*inputs):
        (cond,), outer = _split_inputs(ctx, inputs)
        branch = then_branch if _truth(cond) else else_branch
        return tuple(branch.run([], outer))
    return run


@register("Loop", since=_SUBGRAPH_OP_VERSIONS)
def loop(ctx: NodeContext):
    body = _subgraph(ctx, "body")
    body_proto: onnx.GraphProto = ctx.attrs["body"]
    num_carried = len(body_proto.input) - 2
    scan_types = [o.type for o in body_proto.output[1 + num_carried:]]

    def run(*inputs):
        explicit, outer = _split_inputs(ctx, inputs)
        max_trips, cond = explicit[0], explicit[1]
        carried = list(explicit[2:2 + num_carried])
        limit = None if max_trips is None else int(np.asarray(max_trips).reshape(-1)[0])
        keep_going = True if cond is None else _truth(cond)
        cond_value = np.array(keep_going)
        scans: list[list] = [[] for _ in scan_types]
        i = 0
        # Like onnxruntime, the body's condition output always decides whether to go on.
        while keep_going and (limit is None or i < limit):
            check_terminate()  # a Loop may run for ever: its run's terminate flag ends it
            outs = body.run([np.array(i, dtype=np.int64), cond_value, *carried], outer)
            cond_value = outs[0]
            keep_going = _truth(cond_value)
            carried = list(outs[1:1 + num_carried])
            for acc, value in zip(scans, outs[1 + num_carried:]):
                acc.append(value)
            i += 1
        return (*carried, *(_stack(acc, t) for acc, t in zip(scans, scan_types)))
    return run


def _axes(values: list[int] | None, count: int) -> list[int]:
    values = list(values or [])
    return values + [0] * (count - len(values))


@register("Scan", since=8)
def scan_v8(ctx: NodeContext):
    """Scan-8: batch axis 0, sequence axis 1, optional per-batch sequence_lens."""
    body = _subgraph(ctx, "body")
    body_proto: onnx.GraphProto = ctx.attrs["body"]
    num_scan_in = ctx.attr("num_scan_inputs")
    reverse_in = [d == 1 for d in _axes(ctx.attr("directions"), num_scan_in)]
    num_states = len(body_proto.input) - num_scan_in
    scan_types = [o.type for o in body_proto.output[num_states:]]

    def run(*inputs):
        explicit, outer = _split_inputs(ctx, inputs)
        seq_lens = explicit[0]
        states0 = explicit[1:1 + num_states]
        scan_inputs = explicit[1 + num_states:1 + num_states + num_scan_in]
        batch, max_len = scan_inputs[0].shape[:2]
        lens = (np.full(batch, max_len, np.int64) if seq_lens is None
                else np.asarray(seq_lens).reshape(-1).astype(np.int64))
        final_states: list[list] = [[] for _ in range(num_states)]
        batch_scans: list[list] = [[] for _ in scan_types]
        for b in range(batch):
            states = [s[b, ...] for s in states0]
            n = int(lens[b])
            if not 0 <= n <= max_len:
                raise ValueError(f"Scan '{ctx.name}': sequence length {n} outside [0, {max_len}]")
            per_step: list[list] = [[] for _ in scan_types]
            for t in range(n):
                check_terminate()
                elems = [x[b, n - 1 - t, ...] if rev else x[b, t, ...]
                         for x, rev in zip(scan_inputs, reverse_in)]
                outs = body.run([*states, *elems], outer)
                states = outs[:num_states]
                for acc, value in zip(per_step, outs[num_states:]):
                    acc.append(value)
            for acc, s in zip(final_states, states):
                acc.append(s)
            for acc, steps in zip(batch_scans, per_step):
                acc.append(steps)
        # Zero batches: the final states are the (empty-batch) initial states.
        results = [np.stack(acc) if acc else states0[k] for k, acc in enumerate(final_states)]
        for acc, tp in zip(batch_scans, scan_types):
            results.append(_pad_batches(acc, max_len, tp))
        return tuple(results)
    return run


def _pad_batches(per_batch: list[list], max_len: int, step_type) -> np.ndarray:
    """Stack [batch][step] outputs into (batch, max_len, ...), zero-padding short sequences."""
    template = next((steps[0] for steps in per_batch if steps), None)
    if template is None:  # no step ran at all: the element shape comes from the body's type
        empty = _empty_stack(step_type)
        elem_shape, dtype = empty.shape[1:], empty.dtype
    else:
        elem_shape, dtype = template.shape, template.dtype
    out = np.zeros((len(per_batch), max_len, *elem_shape), dtype=dtype)
    for b, steps in enumerate(per_batch):
        if steps:
            out[b, :len(steps)] = np.stack(steps)
    return out


@register("Scan", since=[9, 11, 16, 19, 21, 23, 24, 25])
def scan(ctx: NodeContext):
    """Scan-9+: no batch axis; per-input/output scan axes and directions."""
    body = _subgraph(ctx, "body")
    body_proto: onnx.GraphProto = ctx.attrs["body"]
    num_scan_in = ctx.attr("num_scan_inputs")
    num_states = len(body_proto.input) - num_scan_in
    scan_types = [o.type for o in body_proto.output[num_states:]]
    num_scan_out = len(scan_types)
    in_axes = _axes(ctx.attr("scan_input_axes"), num_scan_in)
    reverse_in = [d == 1 for d in _axes(ctx.attr("scan_input_directions"), num_scan_in)]
    out_axes = _axes(ctx.attr("scan_output_axes"), num_scan_out)
    reverse_out = [d == 1 for d in _axes(ctx.attr("scan_output_directions"), num_scan_out)]

    def run(*inputs):
        explicit, outer = _split_inputs(ctx, inputs)
        states = list(explicit[:num_states])
        # Move each scan axis to the front once (a view), so a step is a plain index.
        scan_inputs = [np.moveaxis(x, norm_axis(ax, x.ndim), 0) if norm_axis(ax, x.ndim) else x
                       for x, ax in zip(explicit[num_states:num_states + num_scan_in], in_axes)]
        length = scan_inputs[0].shape[0]
        if any(x.shape[0] != length for x in scan_inputs):
            raise ValueError(f"Scan '{ctx.name}': scan inputs have different sequence lengths")
        steps: list[list] = [[] for _ in scan_types]
        for t in range(length):
            check_terminate()
            # [i, ...] keeps a 0-d step an array, not a numpy scalar
            elems = [x[length - 1 - t, ...] if rev else x[t, ...]
                     for x, rev in zip(scan_inputs, reverse_in)]
            outs = body.run([*states, *elems], outer)
            states = outs[:num_states]
            for acc, value in zip(steps, outs[num_states:]):
                acc.append(value)
        results = list(states)
        for acc, tp, ax, rev in zip(steps, scan_types, out_axes, reverse_out):
            if rev:
                acc.reverse()
            rank = (acc[0].ndim if acc else _empty_stack(tp).ndim - 1) + 1
            results.append(_stack(acc, tp, norm_axis(ax, rank)))
        return tuple(results)
    return run


@register("SequenceMap", since=17)
def sequence_map(ctx: NodeContext):
    body = _subgraph(ctx, "body")
    num_outputs = len(ctx.attrs["body"].output)

    def run(*inputs):
        explicit, outer = _split_inputs(ctx, inputs)
        count = len(explicit[0])
        for extra in explicit[1:]:
            if isinstance(extra, list) and len(extra) != count:
                raise ValueError(f"SequenceMap '{ctx.name}': sequence inputs differ in length")
        results: list[list] = [[] for _ in range(num_outputs)]
        for i in range(count):
            check_terminate()
            feeds = [x[i] if isinstance(x, list) else x for x in explicit]
            for acc, value in zip(results, body.run(feeds, outer)):
                acc.append(value)
        return tuple(results)
    return run
