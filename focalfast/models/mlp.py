"""``Mlp``: ``fc2(GELU(fc1(x)))``, keeping only a third of its activations for backward.

Autograd on ``fc2(GELU(fc1(LayerNorm(x))))`` keeps, per token of C channels (4C hidden): the
LayerNorm's input, fc1's input, GELU's input and fc2's input, 4C + 2C + 8C + 8C = 22C bytes under
bf16 autocast with a float32 ``x``. ``forward_with_norm`` keeps ``x`` and fc1's output only,
4C + 8C = 12C bytes, recomputing the LayerNorm and the GELU in backward (``recompute_linear``);
with ``recompute_hidden`` (``set_checkpointing(model, "mlp")``) it keeps ``x`` only, 4C bytes, and
backward recomputes fc1 too (a third of a FocalNet block's forward GEMM FLOPs).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from focalfast.modules import recompute_linear


class Mlp(nn.Module):
    """``fc2(dropout(GELU(fc1(x))))`` then dropout, on the last dimension."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)
        self.recompute_hidden = False

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

    def forward_with_norm(self, x: Tensor, norm: Optional[nn.LayerNorm] = None) -> Tensor:
        """``forward(norm(x))`` (``norm`` None: ``forward(x)``); the lean path unless dropout is active."""
        if self.drop.p > 0 and self.training:
            return self(x if norm is None else norm(x))
        return recompute_linear.mlp(x, norm, self.fc1, self.fc2, self.act.approximate,
                                    keep_hidden=not self.recompute_hidden)
