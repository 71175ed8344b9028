"""Ops: the fused focal-modulation op, its reference, and its kernel backends."""
