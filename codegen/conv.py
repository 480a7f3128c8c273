"""Convolution as implicit GEMM (filled in by the Conv template work)."""
