"""``FocalNetConfig``: the hyper-parameters of a FocalNet, validated once, shared by every head."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Tuple, Union


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _per_stage(name: str, value, num_stages: int) -> Tuple[int, ...]:
    """An int repeated over the stages, or a sequence with one int per stage."""
    values = (value,) * num_stages if isinstance(value, int) else tuple(value)
    if len(values) != num_stages:
        raise ValueError(f"{name}: expected one value per stage ({num_stages} stages, from depths), "
                         f"got {len(values)}: {value!r}")
    for i, v in enumerate(values):
        _positive_int(f"{name}[{i}]", v)
    return values


@dataclass(frozen=True)
class FocalNetConfig:
    """A FocalNet's architecture (names follow the official code).

    Stage ``i`` has ``embed_dim * 2**i`` channels, ``depths[i]`` blocks, ``focal_levels[i]`` focal
    levels with kernels ``2*l + focal_windows[i]`` (an int for ``focal_levels`` / ``focal_windows``
    applies to every stage; both are stored as per-stage tuples). The stem is a ``patch_size`` strided conv
    (``use_conv_embed``: 7x7 stride 4 and 3x3 stride 2 overlapping convs), each later stage starts
    at half the resolution. A single stage (``depths=(12,)``) is the isotropic FocalNet.

    ``use_postln``: LayerNorm after the modulation / MLP instead of before; ``use_layerscale``:
    per-channel residual scales initialised to ``layerscale_value``; ``use_postln_in_modulation``
    and ``normalize_modulator`` are the modulation's flags. ``drop_rate`` is dropout after the
    patch embedding and in the modulation / MLP projections, ``drop_path_rate`` the stochastic
    depth of the last block (linearly increasing from 0 over the blocks).
    """

    embed_dim: int = 96
    depths: Tuple[int, ...] = (2, 2, 6, 2)
    focal_levels: Union[int, Tuple[int, ...]] = 2
    focal_windows: Union[int, Tuple[int, ...]] = 3
    patch_size: int = 4
    in_channels: int = 3
    mlp_ratio: float = 4.0
    use_conv_embed: bool = False
    use_layerscale: bool = False
    layerscale_value: float = 1e-4
    use_postln: bool = False
    use_postln_in_modulation: bool = False
    normalize_modulator: bool = False
    layer_norm_eps: float = 1e-5
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1

    def __post_init__(self):
        _positive_int("embed_dim", self.embed_dim)
        depths = (self.depths,) if isinstance(self.depths, int) else tuple(self.depths)
        if len(depths) == 0:
            raise ValueError("depths: expected at least one stage, got an empty sequence")
        for i, d in enumerate(depths):
            _positive_int(f"depths[{i}]", d)
        levels = _per_stage("focal_levels", self.focal_levels, len(depths))
        windows = _per_stage("focal_windows", self.focal_windows, len(depths))
        for i, w in enumerate(windows):
            if w % 2 == 0:
                raise ValueError(f"focal_windows[{i}]: expected an odd kernel size, got {w}")
        _positive_int("patch_size", self.patch_size)
        _positive_int("in_channels", self.in_channels)
        if self.use_conv_embed and self.patch_size != 4:
            raise ValueError(f"patch_size: use_conv_embed=True has a fixed stride-4 stem, so patch_size "
                             f"must be 4, got {self.patch_size}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio: expected a positive number, got {self.mlp_ratio!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps: expected a positive number, got {self.layer_norm_eps!r}")
        for name in ("drop_rate", "drop_path_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1), got {value!r}")
        object.__setattr__(self, "depths", depths)
        object.__setattr__(self, "focal_levels", levels)
        object.__setattr__(self, "focal_windows", windows)

    @property
    def dims(self) -> Tuple[int, ...]:
        """Channels of each stage."""
        return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))

    @property
    def num_features(self) -> int:
        """Channels of the last stage (the pooled feature size)."""
        return self.dims[-1]

    @property
    def stride(self) -> int:
        """Input pixels per last-stage pixel (per side)."""
        return self.patch_size * 2 ** (len(self.depths) - 1)

    def replace(self, **changes) -> "FocalNetConfig":
        """A copy with some fields changed; unknown field names raise ValueError."""
        fields = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise ValueError(f"unknown FocalNetConfig field(s) {unknown}; valid fields: {fields}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf_config) -> "FocalNetConfig":
        """The config of an HF transformers ``FocalNetConfig`` (read by attribute, no import)."""
        if getattr(hf_config, "hidden_act", "gelu") != "gelu":
            raise ValueError(f"hf_config.hidden_act: only 'gelu' is supported, got {hf_config.hidden_act!r}")
        patch_size = hf_config.patch_size
        if not isinstance(patch_size, int):
            if len(set(patch_size)) != 1:
                raise ValueError(f"hf_config.patch_size: expected a square patch, got {patch_size!r}")
            patch_size = patch_size[0]
        return cls(
            embed_dim=hf_config.embed_dim,
            depths=tuple(hf_config.depths),
            focal_levels=tuple(hf_config.focal_levels),
            focal_windows=tuple(hf_config.focal_windows),
            patch_size=patch_size,
            in_channels=hf_config.num_channels,
            mlp_ratio=hf_config.mlp_ratio,
            use_conv_embed=hf_config.use_conv_embed,
            use_layerscale=hf_config.use_layerscale,
            layerscale_value=hf_config.layerscale_value,
            use_postln=hf_config.use_post_layernorm,
            use_postln_in_modulation=hf_config.use_post_layernorm_in_modulation,
            normalize_modulator=hf_config.normalize_modulator,
            layer_norm_eps=hf_config.layer_norm_eps,
            drop_rate=hf_config.hidden_dropout_prob,
            drop_path_rate=hf_config.drop_path_rate,
        )
