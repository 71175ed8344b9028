"""Static cost report: instruction counts of the fused kernels from their sm_90a SASS, no GPU needed."""
