"""dsvsa: vector-symbolic disentangled VAE latents for dSprites.

Data (factor grid, renderer, samplers, datasets) imports without torch; the model, the VSA algebra
and the evaluation are loaded on first use.
"""

from __future__ import annotations

import importlib

from dsvsa.factors import (
    FACTOR_NAMES,
    FACTOR_SIZES,
    FACTOR_VALUES,
    NUM_IMAGES,
    SHAPE_NAMES,
    classes_to_index,
    classes_to_values,
    equivalent_orientations,
    index_to_classes,
    values_to_classes,
)
from dsvsa.render import render, render_scene  # eager: the submodule shares the function's name

__version__ = "0.1.0"

# public name -> module that defines it, imported lazily
_LAZY = {
    "sample_pairs": "dsvsa.sampling",
    "sample_scenes": "dsvsa.sampling",
    "sample_paired_scenes": "dsvsa.sampling",
    "HoldOut": "dsvsa.sampling",
    "bind": "dsvsa.vsa",
    "unbind": "dsvsa.vsa",
    "bundle": "dsvsa.vsa",
    "cosine_similarity": "dsvsa.vsa",
    "cleanup": "dsvsa.vsa",
    "ItemMemory": "dsvsa.vsa",
    "DSpritesVSA": "dsvsa.model",
    "DSpritesVSAConfig": "dsvsa.model",
    "logits_to_probs": "dsvsa.images",
    "logits_to_binary": "dsvsa.images",
}

__all__ = [
    "FACTOR_NAMES",
    "FACTOR_SIZES",
    "FACTOR_VALUES",
    "NUM_IMAGES",
    "SHAPE_NAMES",
    "classes_to_index",
    "classes_to_values",
    "equivalent_orientations",
    "index_to_classes",
    "values_to_classes",
    "render",
    "render_scene",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dsvsa' has no attribute {name!r}")
