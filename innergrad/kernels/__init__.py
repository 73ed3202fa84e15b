"""Fused whole-sequence kernels for the MLP gradient-RNN: the reference loop, the C++ CPU kernel, Triton."""
