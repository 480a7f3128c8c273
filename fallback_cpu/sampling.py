"""Sampling kernels of the NumPy provider: GridSample (N-D), AffineGrid, RoiAlign."""
from __future__ import annotations

import itertools

import numpy as np

from .nn_util import narrow, widen
from .registry import register


def _reflect(x, lo, hi):
    """Fold coordinates into [lo, hi] by mirroring at the borders (repeatedly)."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    below = x < lo
    dist = np.where(below, lo - x, x - hi)
    flips = np.floor(dist / span)
    rest = dist - flips * span
    even = flips % 2 == 0
    folded = np.where(below, np.where(even, lo + rest, hi - rest),
                      np.where(even, hi - rest, lo + rest))
    return np.where((x < lo) | (x > hi), folded, x)


def _cubic_coeffs(t, a=-0.75):
    """Keys cubic weights of the taps at -1, 0, 1, 2 for fractional offset t in [0, 1)."""
    return [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
            ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a]


@register("GridSample", since=[16, 20, 22])
def grid_sample(ctx):
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(ctx.attr("mode", "bilinear"),
                                                         ctx.attr("mode", "bilinear"))
    padding = ctx.attr("padding_mode", "zeros")
    align = bool(ctx.attr("align_corners", 0))

    def run(x, grid):
        n, c = x.shape[:2]
        spatial = x.shape[2:]
        nd = len(spatial)
        out_spatial = grid.shape[1:-1]
        wx = widen(x) if x.dtype.kind == "f" else x.astype(np.float64)
        g = widen(grid).reshape(n, -1, nd)
        q = g.shape[1]
        # per spatial axis (grid's last dim lists axes innermost-first): taps and weights
        axis_taps = []
        for axis in range(nd):
            size = spatial[axis]
            coord = g[..., nd - 1 - axis]
            if align:
                pos = (coord + 1) / 2 * (size - 1)
                lo, hi = 0.0, size - 1.0
            else:
                pos = ((coord + 1) * size - 1) / 2
                lo, hi = -0.5, size - 0.5
            if mode == "nearest":
                pos = np.rint(pos)
            if padding == "border":  # only coordinates beyond the border box are clamped
                pos = np.where((pos < lo) | (pos > hi), np.clip(pos, 0, size - 1), pos)
            elif padding == "reflection":
                pos = _reflect(pos, lo, hi)
            if mode == "nearest":
                taps = [(pos, np.ones_like(pos))]
            else:
                base = np.floor(pos)
                t = pos - base
                if mode == "linear":
                    taps = [(base, 1 - t), (base + 1, t)]
                else:
                    taps = [(base + k - 1, w) for k, w in enumerate(_cubic_coeffs(t))]
            fixed = []
            for idx, w in taps:
                if padding == "zeros":
                    valid = (idx >= 0) & (idx < size)
                    w = w * valid
                elif padding == "border":
                    idx = np.clip(idx, 0, size - 1)
                else:
                    idx = np.clip(np.trunc(_reflect(idx, lo, hi)), 0, size - 1)
                fixed.append((np.clip(idx, 0, size - 1).astype(np.intp), w))
            axis_taps.append(fixed)
        flat = wx.reshape(n, c, -1)
        y = np.zeros((n, c, q), dtype=wx.dtype)
        for combo in itertools.product(*axis_taps):
            index = np.zeros((n, q), dtype=np.intp)
            weight = np.ones((n, q), dtype=wx.dtype)
            for axis, (idx, w) in enumerate(combo):
                index = index * spatial[axis] + idx
                weight = weight * w
            y += np.take_along_axis(flat, index[:, None, :], axis=2) * weight[:, None, :]
        y = y.reshape(n, c, *out_spatial)
        if x.dtype.kind in "iu":
            info = np.iinfo(x.dtype)
            return (np.clip(np.rint(y), info.min, info.max).astype(x.dtype),)
        return (narrow(y.astype(wx.dtype), x.dtype),)

    return run


@register("AffineGrid", since=[20])
def affine_grid(ctx):
    align = bool(ctx.attr("align_corners", 0))

    def run(theta, size):
        dims = [int(s) for s in size[2:]]
        wt = widen(theta)
        axes = []
        for s in dims:
            if align:
                axes.append(np.linspace(-1, 1, s) if s > 1 else np.zeros(s))
            else:
                axes.append((2 * np.arange(s) + 1) / s - 1)
        mesh = np.meshgrid(*axes, indexing="ij")
        # homogeneous (x, y[, z], 1): innermost spatial axis first
        base = np.stack([m.reshape(-1) for m in reversed(mesh)] + [np.ones(mesh[0].size)], -1)
        grid = np.matmul(base.astype(wt.dtype), wt.transpose(0, 2, 1))  # (N, P, nd)
        return (narrow(grid.reshape(theta.shape[0], *dims, len(dims)), theta.dtype),)

    return run


@register("RoiAlign", since=[10, 16, 22])
def roi_align(ctx):
    half_pixel = ctx.since_version >= 16 and \
        ctx.attr("coordinate_transformation_mode", "half_pixel") == "half_pixel"
    mode = ctx.attr("mode", "avg")
    out_h = int(ctx.attr("output_height", 1))
    out_w = int(ctx.attr("output_width", 1))
    sampling_ratio = int(ctx.attr("sampling_ratio", 0))
    spatial_scale = float(ctx.attr("spatial_scale", 1.0))

    def axis_samples(start, length, bins, grid, size):
        """Sample positions (bins*grid,) along one axis: clamped low/high indices, weights,
        and whether each sample lies inside the feature map (else it contributes zero)."""
        bin_size = length / bins
        pos = (start + np.arange(bins)[:, None] * bin_size
               + (np.arange(grid)[None, :] + 0.5) * bin_size / grid).reshape(-1)
        inside = (pos >= -1.0) & (pos <= size)
        pos = np.maximum(pos, 0)
        low = np.floor(pos).astype(np.intp)
        at_edge = low >= size - 1
        low = np.where(at_edge, size - 1, low)
        high = np.where(at_edge, size - 1, low + 1)
        pos = np.where(at_edge, low, pos)
        frac = pos - low
        return low, high, 1 - frac, frac, inside

    def run(x, rois, batch_indices):
        wx = widen(x)
        _, c, height, width = x.shape
        wr = widen(rois).astype(np.float64)
        y = np.zeros((rois.shape[0], c, out_h, out_w), dtype=wx.dtype)
        offset = 0.5 if half_pixel else 0.0
        for r in range(rois.shape[0]):  # loop over regions; vectorized inside
            x0, y0, x1, y1 = wr[r] * spatial_scale - offset
            roi_w, roi_h = x1 - x0, y1 - y0
            if not half_pixel:
                roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
            gh = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_h / out_h))
            gw = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_w / out_w))
            if gh <= 0 or gw <= 0:  # an empty region samples nothing
                continue
            ylo, yhi, wy_lo, wy_hi, y_in = axis_samples(y0, roi_h, out_h, gh, height)
            xlo, xhi, wx_lo, wx_hi, x_in = axis_samples(x0, roi_w, out_w, gw, width)
            inside = (y_in[:, None] & x_in[None, :])
            img = wx[int(batch_indices[r])]  # (C, H, W)
            corners = [(img[:, ylo][:, :, xlo], wy_lo[:, None] * wx_lo[None, :]),
                       (img[:, ylo][:, :, xhi], wy_lo[:, None] * wx_hi[None, :]),
                       (img[:, yhi][:, :, xlo], wy_hi[:, None] * wx_lo[None, :]),
                       (img[:, yhi][:, :, xhi], wy_hi[:, None] * wx_hi[None, :])]
            terms = [v * (w * inside) for v, w in corners]  # (C, out_h*gh, out_w*gw)
            if mode == "max":  # onnxruntime's rule: the largest weighted corner term
                sample = np.maximum(np.maximum(terms[0], terms[1]), np.maximum(terms[2], terms[3]))
                pooled = sample.reshape(c, out_h, gh, out_w, gw).max(axis=(2, 4))
            else:
                sample = terms[0] + terms[1] + terms[2] + terms[3]
                pooled = sample.reshape(c, out_h, gh, out_w, gw).sum(axis=(2, 4)) / max(gh * gw, 1)
            y[r] = pooled
        return (narrow(y, x.dtype),)

    return run
