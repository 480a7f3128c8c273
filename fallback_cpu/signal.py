"""Signal kernels of the NumPy provider: DFT, STFT, window functions, mel filterbanks.

Complex tensors are ONNX's real representation: a trailing dimension of 2 (real,
imaginary), or of 1 for a real signal. FFTs run in complex64 (complex128 for float64
inputs) and the result is rounded once to the input's dtype.
"""
from __future__ import annotations

import numpy as np

from tritort.dtypes import numpy_dtype

from .registry import NodeContext, register
from .shape import norm_axis


def _to_complex(x: np.ndarray) -> np.ndarray:
    """[..., 1|2] real representation -> complex array without the last dimension.

    float64 signals transform in complex128, all narrower ones in complex64 (numpy's FFT
    keeps single precision), which is also what ONNX's expected outputs were made with.
    """
    ctype = np.complex128 if x.dtype == np.float64 else np.complex64
    z = np.empty(x.shape[:-1], dtype=ctype)
    z.real = x[..., 0].astype(z.real.dtype)
    z.imag = 0 if x.shape[-1] == 1 else x[..., 1].astype(z.real.dtype)
    return z


def _to_real_pair(z: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.stack([z.real, z.imag], axis=-1).astype(dtype)


def dft(x: np.ndarray, axis: int, length: int | None, inverse: bool, onesided: bool):
    axis = norm_axis(axis, x.ndim)
    z = _to_complex(x)
    if inverse:
        if onesided:  # one-sided spectrum in, real signal out
            n = length if length is not None else 2 * (x.shape[axis] - 1)
            return np.fft.irfft(z, n=n, axis=axis)[..., None].astype(x.dtype)
        return _to_real_pair(np.fft.ifft(z, n=length, axis=axis), x.dtype)
    spectrum = np.fft.fft(z, n=length, axis=axis)
    if onesided:
        keep = [slice(None)] * spectrum.ndim
        keep[axis] = slice(0, spectrum.shape[axis] // 2 + 1)
        spectrum = spectrum[tuple(keep)]
    return _to_real_pair(spectrum, x.dtype)


def _scalar_int(v) -> int | None:
    return None if v is None or np.asarray(v).size == 0 else int(np.asarray(v).reshape(-1)[0])


@register("DFT", since=[17, 20])
def dft_op(ctx: NodeContext):
    inverse = bool(ctx.attr("inverse", 0))
    onesided = bool(ctx.attr("onesided", 0))
    if ctx.since_version < 20:
        axis = ctx.attr("axis", 1)
        return lambda x, dft_length=None: (
            dft(x, axis, _scalar_int(dft_length), inverse, onesided),)

    def run(x, dft_length=None, axis=None):
        a = -2 if axis is None else _scalar_int(axis)
        return (dft(x, a, _scalar_int(dft_length), inverse, onesided),)

    return run


@register("STFT", since=[17])
def stft(ctx: NodeContext):
    onesided = bool(ctx.attr("onesided", 1))

    def run(signal, frame_step, window=None, frame_length=None):
        step = _scalar_int(frame_step)
        length = _scalar_int(frame_length)
        if length is None:
            length = signal.shape[-2] if window is None else window.shape[0]
        z = _to_complex(signal)  # [batch, signal_length]
        frames = np.lib.stride_tricks.sliding_window_view(z, length, axis=1)[:, ::step]
        if window is not None:
            frames = frames * window.astype(frames.real.dtype)
        spectrum = np.fft.fft(frames, n=length, axis=-1)
        if onesided:
            spectrum = spectrum[..., :length // 2 + 1]
        return (_to_real_pair(spectrum, signal.dtype),)

    return run


# ------------------------------------------------------------------ windows


def _window_factory(coefficients):
    """Generalized cosine window: sum_k (-1)^k a_k cos(2 pi k n / N)."""

    def factory(ctx: NodeContext):
        periodic = bool(ctx.attr("periodic", 1))
        dtype = numpy_dtype(ctx.attr("output_datatype", 1))

        def run(size):
            n_points = _scalar_int(size)
            denom = n_points if periodic else n_points - 1
            phase = 2 * np.pi * np.arange(n_points, dtype=np.float64) / max(denom, 1)
            w = np.zeros(n_points, dtype=np.float64)
            for k, a in enumerate(coefficients):
                w += (-1) ** k * a * np.cos(k * phase)
            return (w.astype(dtype),)

        return run

    return factory


register("HannWindow", since=[17])(_window_factory([0.5, 0.5]))
register("HammingWindow", since=[17])(_window_factory([25 / 46, 21 / 46]))
register("BlackmanWindow", since=[17])(_window_factory([0.42, 0.5, 0.08]))


@register("MelWeightMatrix", since=[17])
def mel_weight_matrix(ctx: NodeContext):
    dtype = numpy_dtype(ctx.attr("output_datatype", 1))

    def run(num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz):
        n_mel, n_dft, rate = (_scalar_int(v) for v in (num_mel_bins, dft_length, sample_rate))
        n_spec = n_dft // 2 + 1
        # Edges go to the mel scale, are spaced evenly there (num_mel_bins + 2 points, as
        # the ONNX test generator does) and come back as integer spectrogram bins.
        lo, hi = (np.log1p(np.asarray(v) / 700).astype(np.float64) * 2595 / np.log(10)
                  for v in (lower_edge_hertz, upper_edge_hertz))
        points = np.arange(n_mel + 2) * ((hi - lo) / (n_mel + 2)) + lo
        hertz = 700 * np.expm1(points / 2595 * np.log(10))
        bins = (((n_dft + 1) * hertz) // rate).astype(np.int64)
        left, center, right = bins[:-2], bins[1:-1], bins[2:]
        j = np.arange(n_spec)[:, None]
        out = np.zeros((n_spec, n_mel), dtype=np.float64)
        rising = (j >= left) & (j <= center)
        with np.errstate(divide="ignore", invalid="ignore"):
            up = np.where(center > left, (j - left) / np.maximum(center - left, 1), 1.0)
            down = (right - j) / np.maximum(right - center, 1)
        out = np.where(rising & ((center > left) | (j == center)), up, out)
        out = np.where((j >= center) & (j < right), down, out)
        return (out.astype(dtype),)

    return run
