"""The models the planner knows by name: every registered FocalNet variant and ConvNeXt-T."""

from __future__ import annotations

from typing import Callable, List

from torch import nn

CONVNEXT_TINY = "convnext_tiny"


def plannable_models() -> List[str]:
    from focalfast import models

    return models.list_models() + [CONVNEXT_TINY]


def model_factory(name: str, num_classes: int = 1000) -> Callable[[str], nn.Module]:
    """``backend -> model`` for ``name`` (a FocalNet variant or ``"convnext_tiny"``) with its
    published stochastic depth; ValueError naming the known ones for an unknown name."""
    from focalfast import build_convnext, models

    if name == CONVNEXT_TINY:
        return lambda backend: build_convnext(num_classes=num_classes, drop_path_rate=0.1, backend=backend)
    if name not in models.list_models():
        raise ValueError(f"model: unknown model {name!r}; known: {plannable_models()}")
    return lambda backend: models.create(name, num_classes=num_classes, backend=backend)
