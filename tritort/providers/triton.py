"""The Triton provider: claims what codegen can lower, fuses it, compiles it with Triton.

On a CUDA machine values live in torch CUDA tensors. With ``TRITON_INTERPRET=1`` the same
kernels run in Triton's interpreter on torch CPU tensors, which is how CI covers codegen.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..errors import InvalidArgument
from ..graph import Graph, Node
from . import TRITON, CompiledUnit, CompileInfo, ExecutionProvider


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


class TritonExecutionProvider(ExecutionProvider):
    name = TRITON
    reads_quantized_weights = True
    option_docs = {"device_id": "CUDA device ordinal to run on (default '0')",
                   "user_compute_stream": "address of a CUDA stream (cudaStream_t, as an "
                                          "integer) to run on instead of torch's current "
                                          "stream; ordered against it with events",
                   "enable_cuda_graph": "'1': each input signature's recorded launches are "
                                        "captured into a CUDA graph and replayed",
                   "use_tf32": "'1' (the default, as onnxruntime's CUDA provider): float32 "
                               "MatMul / Gemm / Conv / attention products run on TF32 tensor "
                               "cores (inputs rounded to 10 mantissa bits, fp32 accumulation); "
                               "'0': full float32 products"}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import torch
            import triton  # noqa: F401
        except ImportError as e:
            return f"{e.name} is not installed (pip install 'tritort[gpu]')"
        if _interpreted():
            return None
        if not torch.cuda.is_available():
            return "torch sees no CUDA device (set TRITON_INTERPRET=1 to run in Triton's " \
                   "interpreter on the CPU)"
        return None

    def __init__(self, options=None) -> None:
        super().__init__(options)
        import torch

        from tritort.codegen import engine, tuning

        for flag in ("enable_cuda_graph", "use_tf32"):
            if self.options.get(flag, "0") not in ("0", "1"):
                raise InvalidArgument(f"{TRITON}: {flag} is '0' or '1', got "
                                      f"'{self.options[flag]}'")
        device_id = self.options.get("device_id", "0")
        if not device_id.isdigit():
            raise ValueError(f"{TRITON}: device_id must be a non-negative integer, got "
                             f"'{device_id}'")
        self.torch_device = torch.device("cpu") if _interpreted() else \
            torch.device("cuda", int(device_id))
        self.device = "triton-interpreter" if _interpreted() else f"cuda:{device_id}"
        # tuned configs for this device, resolved once; re-read if the file changed on disk
        self.tuning = tuning.active_table(self.torch_device)
        self.tuning.refresh()
        self.use_tf32 = self.options.get("use_tf32", "1") == "1"
        self._device = engine.Device(self.device, self.torch_device, self.tuning, self.use_tf32)
        self.kernels: list[dict[str, Any]] = []  # for the placement report

    def claim(self, node: Node, graph: Graph) -> str | None:
        from tritort.codegen import engine

        return engine.claim(node, graph, self._device)

    def compile(self, nodes: Sequence[Node], info: CompileInfo) -> list[CompiledUnit]:
        from tritort.codegen import engine

        units, reports = engine.compile_nodes(nodes, info, self._device)
        self.kernels += reports
        return units

    # -- moving values ---------------------------------------------------------------------
    def to_device(self, value: Any) -> Any:
        """Idempotent: a contiguous torch tensor already on this device passes through as is.

        Other torch tensors are moved (and made contiguous); numpy arrays become torch views
        of the same memory (ml_dtypes through a raw view) before the move.
        """
        import torch

        if value is None:
            return None
        if isinstance(value, torch.Tensor):
            if value.device != self.torch_device:
                value = self._upload(value) if value.device.type == "cpu" else \
                    value.to(self.torch_device)
            return value if value.is_contiguous() else value.contiguous()
        from ..dlpack import numpy_to_torch

        arr = np.asarray(value)  # kernels may hand over numpy scalars
        arr = arr if arr.flags.c_contiguous else arr.copy()  # keeps 0-d arrays 0-d
        return self._upload(numpy_to_torch(arr))

    def _upload(self, tensor: Any) -> Any:
        """Host to device on the current stream, without blocking the host: staged through
        pinned memory, which torch's host allocator keeps until the copy has run."""
        if self.torch_device.type != "cuda":
            return tensor.to(self.torch_device)
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(self.torch_device, non_blocking=True)

    def to_host(self, value: Any) -> Any:
        """Idempotent: numpy passes through; torch tensors become numpy (a view on the CPU)."""
        from ..dlpack import to_host

        return to_host(value)

