"""Triton backend of the fused focal-modulation op (forward and backward kernels).

Modules: ``depthwise_conv`` (tile-level depthwise conv helpers), ``gelu``, ``chain_schedule``
(row-streaming plan of the level chain), ``focal_context_fwd`` / ``focal_context_bwd`` (the
level chain), ``modulation_gemm`` / ``modulation_gemm_bwd`` (the ``h`` GEMMs) and
``focal_modulation`` (custom op, autograd and the backend entry point).
"""

from focalfast.ops.triton.focal_modulation import focal_modulation_triton

__all__ = ["focal_modulation_triton"]
