"""tritort's compiler: ONNX -> tile IR -> fused Triton kernels.

This package holds the GPU code generator used by the Triton execution provider.
"""

# Importing the registry first lets the template families import each other in any order.
from . import templates  # noqa: E402,F401
