"""tritort's NumPy CPU provider: one kernel factory per (domain, op_type, since_version).

Importing the package registers every kernel family, then delegates the long tail
listed in :mod:`tritort.fallback_cpu.delegated` to onnx.reference.
"""
from .registry import (  # noqa: F401
    REGISTRY, NodeContext, build_kernel, missing_kernel, register,
)
from . import (  # noqa: F401  (imported for their registrations)
    activations, attention, cast, contrib_act, contrib_attention, contrib_gqa, contrib_norm,
    contrib_qlinear, contrib_quant, contrib_sparse, control_flow, elementwise, fused, image,
    index, linalg, ml, ml_maps, nn, norm, pool, quantize, random, reduce, rnn, sampling,
    sequence, shape, signal, strings, training,
)
from . import delegated as _delegated

_delegated.install()
