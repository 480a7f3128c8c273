"""tritort's compiler: ONNX -> tile IR -> fused Triton kernels.

This package holds the GPU code generator used by the Triton execution provider.
"""
