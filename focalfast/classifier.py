"""The image classifiers ``focalfast train`` trains and ``focalfast visualize`` draws, by name."""

from __future__ import annotations


class ClassifierOptionsError(ValueError):
    """Model options that the named classifier's constructor does not take."""


def build_classifier(model: str, model_options: dict, image_size: int, num_classes: int,
                     backend: str = "auto"):
    """``model``: a registered FocalNet name, ``"build"`` (isotropic FocalNet) or ``"convnext"``,
    built with ``model_options`` (its constructor's keyword arguments) for ``num_classes`` classes."""
    import focalfast

    options = dict(model_options)
    try:
        if model == "build":
            return focalfast.build(image_size=image_size, num_classes=num_classes, backend=backend, **options)
        if model == "convnext":
            return focalfast.build_convnext(image_size=image_size, num_classes=num_classes, backend=backend,
                                            **options)
        from focalfast import models

        return models.create(model, num_classes=num_classes, backend=backend, **options)
    except TypeError as exc:
        raise ClassifierOptionsError(f"model_options {options} do not fit model {model!r}: {exc}") from exc
