"""The dSprites VSA-VAE: five 1024-d latent slots per object, bound into objects and scenes.

The encoder (4 conv + 2 linear layers) maps a 64x64 image to a diagonal Gaussian posterior over
five slot vectors, one per generative feature (shape, scale, orientation, pos_x, pos_y). An object
vector is the sum of its slots, each bound to a fixed feature role of the item memory; a scene
vector is the sum of its objects, each bound to an object role. The decoder (2 linear + 4
transposed-conv layers) turns one such vector into logits of a 64x64 image.

With ``slot_bottleneck: codebook`` the encoder instead predicts, for every factor, logits over that
factor's values; slot k is the softmax mixture of fixed random code vectors of factor k's values
(``SlotCodebook``, stored in the weights), and in eval mode the code of the most likely value. A
slot then holds its own factor only, so taking it from any other image changes exactly that
factor, and scenes can be queried against the code rows (``prototypes``).

Loaded with :meth:`DSpritesVSA.from_pretrained`, the model is in eval mode and every inference
helper (``latent``, ``reconstruct``, ``transfer``, ``mix``, ``compose``, ``edit``) uses the
posterior mean, so the same input always gives the same picture.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import PyTorchModelHubMixin, constants, hf_hub_download
from torch import nn

from dsvsa.factors import FACTOR_NAMES, FACTOR_SIZES, factor_index
from dsvsa.images import logits_to_binary, to_batch
from dsvsa.vsa import (
    ITEM_MEMORY_KINDS,
    ItemMemory,
    bind,
    bundle,
    cleanup,
    max_abs_cosine,
    random_hypervectors,
    unbind,
)

logger = logging.getLogger(__name__)

ACTIVATIONS = ("relu", "silu", "elu", "leaky_relu")
NORMS = ("none", "batch", "group")
SLOT_BOTTLENECKS = ("none", "codebook")
SLOT_COMBINES = ("sum", "concat")
CODEBOOK_INFERENCE = ("argmax", "softmax")
# a codebook slot is a point estimate: its "posterior" has this constant log-variance (the clamp
# of ``reparameterize``), so sampling adds no noise
CODEBOOK_LOGVAR = -30.0
CONFIG_NAME = constants.CONFIG_NAME  # "config.json"
WEIGHTS_NAME = constants.SAFETENSORS_SINGLE_FILE  # "model.safetensors"

# logit of the mean fraction of "on" pixels in dSprites (0.0425, measured on 64,834 real images)
DSPRITES_OUTPUT_BIAS = -3.115

Feature = str | int


class CheckpointError(ValueError):
    """A saved model (config.json or model.safetensors) that cannot be loaded as it is."""


# field -> (allowed JSON types, description used in errors)
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "latent_dim": ((int,), "an integer"),
    "num_features": ((int,), "an integer"),
    "num_object_roles": ((int,), "an integer"),
    "image_size": ((int,), "an integer"),
    "enc_channels": ((list,), "a list of 4 positive integers"),
    "enc_hidden": ((int,), "an integer"),
    "dec_hidden": ((int,), "an integer"),
    "dec_channels": ((list,), "a list of 4 positive integers"),
    "activation": ((str,), "a string"),
    "norm": ((str,), "a string"),
    "bind_features": ((bool,), "true or false"),
    "bind_objects": ((bool,), "true or false"),
    "item_memory_seed": ((int,), "an integer"),
    "item_memory_kind": ((str,), "a string"),
    "output_bias": ((float, int, type(None)), "a number or null"),
    "channels_last": ((bool,), "true or false"),
    "slot_bottleneck": ((str,), "a string"),
    "codebook_temperature": ((float, int), "a positive number"),
    "codebook_seed": ((int,), "an integer"),
    "codebook_inference": ((str,), "a string"),
    "slot_combine": ((str,), "a string"),
}


def _check_type(name: str, value: Any) -> None:
    types, what = _FIELD_TYPES[name]
    ok = isinstance(value, types)
    if isinstance(value, bool) and bool not in types:
        ok = False  # bool is an int subclass; reject True for an int field
    if not ok:
        raise ValueError(
            f"config field {name!r} must be {what}, got {value!r} ({type(value).__name__})"
        )


@dataclass
class DSpritesVSAConfig:
    """Architecture of :class:`DSpritesVSA`; holds JSON values only and is saved as config.json.

    Encoder: ``1 -> enc_channels`` with 4 stride-2 convolutions (64 -> 32 -> 16 -> 8 -> 4 pixels),
    then ``enc_channels[-1]*16 -> enc_hidden -> 2*num_features*latent_dim`` (mu and logvar).
    Decoder: ``latent_dim -> dec_hidden -> dec_channels[0]*16``, then 4 stride-2 transposed
    convolutions ``dec_channels[0] -> ... -> dec_channels[3] -> 1`` giving logits.

    Args:
        latent_dim: dimension of every slot, object and scene vector.
        num_features: number of latent slots; 5, one per dSprites factor.
        num_object_roles: object roles in the item memory (most objects a bound scene can hold).
        image_size: 64, the dSprites image size.
        enc_channels: output channels of the 4 encoder convolutions.
        enc_hidden: width of the encoder's hidden linear layer.
        dec_hidden: width of the decoder's hidden linear layer.
        dec_channels: input channels of the 4 decoder transposed convolutions.
        activation: "relu", "silu", "elu" or "leaky_relu".
        norm: "none", "batch" or "group" normalisation after each hidden (transposed) convolution.
        bind_features: object = sum_k role_k * z_k if true, plain sum_k z_k if false.
        bind_objects: scene = sum_j objrole_j * object_j if true, plain sum if false.
        item_memory_seed: seed of the item memory's random role vectors.
        item_memory_kind: "bipolar" (+-1) or "gaussian".
        output_bias: initial bias of the decoder's output logits (null: PyTorch's default init);
            defaults to the logit of dSprites' mean pixel density.
        channels_last: run convolutions in channels-last memory format (faster on CPU).
        slot_bottleneck: "none": the encoder predicts each slot as a Gaussian (mu, logvar).
            "codebook": it predicts, per feature k, logits over that feature's values
            (3, 6, 40, 32, 32) and slot k is ``softmax(logits_k / codebook_temperature) @ C_k``,
            ``C_k`` a fixed codebook of random vectors (one row per value, never trained).
        codebook_temperature: softmax temperature of the codebook slots.
        codebook_seed: seed of the codebook vectors (must differ from ``item_memory_seed``).
        codebook_inference: slots in eval mode: "argmax" (the code of the most likely value) or
            "softmax" (the same soft mixture as in training).
        slot_combine: "sum" (an object vector is the latent_dim-d sum of its slots) or "concat"
            (the ``num_features * latent_dim``-d concatenation, so the decoder sees every slot;
            e.g. a plain 10-d VAE is ``latent_dim=2``; needs ``bind_objects: false``).

    Example:
        >>> DSpritesVSAConfig(latent_dim=256, enc_hidden=128).latent_dim
        256
    """

    latent_dim: int = 1024
    num_features: int = 5
    num_object_roles: int = 2
    image_size: int = 64
    enc_channels: list[int] = field(default_factory=lambda: [32, 32, 64, 64])
    enc_hidden: int = 256
    dec_hidden: int = 256
    dec_channels: list[int] = field(default_factory=lambda: [64, 64, 32, 32])
    activation: str = "relu"
    norm: str = "none"
    bind_features: bool = True
    bind_objects: bool = True
    item_memory_seed: int = 0
    item_memory_kind: str = "bipolar"
    output_bias: float | None = DSPRITES_OUTPUT_BIAS
    channels_last: bool = True
    slot_bottleneck: str = "none"
    codebook_temperature: float = 1.0
    codebook_seed: int = 1
    codebook_inference: str = "argmax"
    slot_combine: str = "sum"

    def __post_init__(self) -> None:
        # tuples are accepted from Python callers but stored as lists, as JSON gives them back
        for name in ("enc_channels", "dec_channels"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name))
        for name in ("output_bias", "codebook_temperature"):
            if isinstance(getattr(self, name), int):
                setattr(self, name, float(getattr(self, name)))

        for name in ("latent_dim", "enc_hidden", "dec_hidden", "num_object_roles"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"config field {name!r} must be positive, got {getattr(self, name)}"
                )
        if self.latent_dim < 2:
            raise ValueError(f"config field 'latent_dim' must be at least 2, got {self.latent_dim}")
        if self.num_features != len(FACTOR_NAMES):
            raise ValueError(
                f"config field 'num_features' must be {len(FACTOR_NAMES)} (one slot per dSprites "
                f"factor), got {self.num_features}"
            )
        if self.image_size != 64:
            raise ValueError(f"config field 'image_size' must be 64, got {self.image_size}")
        for name in ("enc_channels", "dec_channels"):
            value = getattr(self, name)
            if len(value) != 4 or not all(
                isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in value
            ):
                raise ValueError(
                    f"config field {name!r} must be a list of 4 positive integers, got {value!r}"
                )
        choices = {
            "activation": ACTIVATIONS,
            "norm": NORMS,
            "item_memory_kind": ITEM_MEMORY_KINDS,
            "slot_bottleneck": SLOT_BOTTLENECKS,
            "codebook_inference": CODEBOOK_INFERENCE,
            "slot_combine": SLOT_COMBINES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"config field {name!r} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        if self.output_bias is not None and not math.isfinite(self.output_bias):
            raise ValueError(f"config field 'output_bias' must be finite, got {self.output_bias}")
        for name in ("item_memory_seed", "codebook_seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"config field {name!r} must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.codebook_temperature) and self.codebook_temperature > 0):
            raise ValueError(
                f"config field 'codebook_temperature' must be a positive number, "
                f"got {self.codebook_temperature}"
            )
        if self.slot_combine == "concat" and self.bind_objects:
            # object roles have latent_dim entries; concatenated objects have num_features times more
            raise ValueError(
                "config field 'slot_combine' is 'concat': set 'bind_objects' to false "
                "(object roles cannot bind concatenated object vectors)"
            )
        if self.slot_bottleneck == "codebook" and self.codebook_seed == self.item_memory_seed:
            # one seed would draw the codebook's first rows equal to the role vectors
            raise ValueError(
                f"config field 'codebook_seed' must differ from 'item_memory_seed' "
                f"(both {self.codebook_seed})"
            )

    @property
    def vector_dim(self) -> int:
        """Dimension of object and scene vectors (the decoder's input)."""
        if self.slot_combine == "concat":
            return self.num_features * self.latent_dim
        return self.latent_dim

    @property
    def codebook_size(self) -> int:
        """Rows of the codebook: one per value of every factor (3 + 6 + 40 + 32 + 32 = 113)."""
        return sum(FACTOR_SIZES)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DSpritesVSAConfig:
        """Build a config from a JSON object, rejecting unknown keys.

        Example:
            >>> DSpritesVSAConfig.from_dict({"latent_dim": 512}).latent_dim
            512
        """
        if not isinstance(data, dict):
            raise ValueError(f"a model config must be a JSON object, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(
                f"unknown model config key(s) {', '.join(map(repr, unknown))}; "
                f"known keys: {', '.join(known)}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict (what config.json holds)."""
        return asdict(self)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DSpritesVSAConfig:
        """A named architecture: "default" (~3.6M parameters) or "wide" (~129M parameters).

        "wide" is the shape of the original write-up: encoder linear layers 2048 -> 10240 -> 10240,
        decoder linear layers 1024 -> 1024 -> 2048.

        Example:
            >>> DSpritesVSAConfig.preset("wide").enc_hidden
            10240
        """
        presets: dict[str, dict[str, Any]] = {
            "default": {},
            "wide": {
                "enc_channels": [32, 32, 64, 128],
                "enc_hidden": 10240,
                "dec_hidden": 1024,
                "dec_channels": [128, 64, 32, 32],
            },
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(presets)}")
        return cls.from_dict({**presets[name], **overrides})


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "silu":
        return nn.SiLU()
    if name == "elu":
        return nn.ELU()
    return nn.LeakyReLU(0.2)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    return nn.Identity()


class Encoder(nn.Module):
    """(B, 1, 64, 64) image -> (B, 2 * num_features * latent_dim) posterior parameters.

    With the codebook bottleneck the output is (B, 113) logits over every factor's values.
    """

    def __init__(self, config: DSpritesVSAConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in config.enc_channels:
            layers += [
                nn.Conv2d(c_in, c, 4, stride=2, padding=1, bias=config.norm == "none"),
                _norm(config.norm, c),
                _activation(config.activation),
            ]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.fc1 = nn.Linear(c_in * 4 * 4, config.enc_hidden)
        self.act = _activation(config.activation)
        if config.slot_bottleneck == "codebook":
            out = config.codebook_size  # logits over every factor's values
        else:
            out = 2 * config.num_features * config.latent_dim  # mu and logvar
        self.fc2 = nn.Linear(config.enc_hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x).flatten(1)
        return self.fc2(self.act(self.fc1(h)))


class SlotCodebook(nn.Module):
    """Fixed random code vectors, one row per value of each factor; never trained.

    Rows are stacked feature by feature (shape 0-2, scale 3-8, orientation 9-48, pos_x 49-80,
    pos_y 81-112) in the persistent buffer ``vectors`` (113, dim), saved in ``model.safetensors``
    so a loaded model uses exactly the stored codes. The draw is repeated (same generator, still
    deterministic) until all rows are quasi-orthogonal (|cos| < 0.25 for dim >= 256).

    Args:
        dim: vector dimension.
        sizes: number of values of each factor.
        seed: seed of the generator.
        kind: "bipolar" (+-1) or "gaussian".

    Example:
        >>> book = SlotCodebook(1024, [3, 6, 40, 32, 32], seed=1)
        >>> book.rows(2).shape
        torch.Size([40, 1024])
    """

    vectors: torch.Tensor

    def __init__(self, dim: int, sizes: Sequence[int], seed: int, kind: str = "bipolar") -> None:
        super().__init__()
        self.sizes = [int(v) for v in sizes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()
        self.seed = seed
        self.kind = kind
        limit = 0.25 if dim >= 256 else 1.0 - 1e-6
        generator = torch.Generator().manual_seed(seed)
        for _ in range(1000):
            vectors = random_hypervectors(sum(self.sizes), dim, generator, kind)
            if max_abs_cosine(vectors) < limit:
                break
        else:
            raise ValueError(f"could not draw {sum(self.sizes)} distinct codes of dimension {dim}")
        self.register_buffer("vectors", vectors, persistent=True)

    def rows(self, k: int) -> torch.Tensor:
        """(V_k, dim) codes of factor k's values."""
        return self.vectors[self.offsets[k] : self.offsets[k + 1]]

    def split(self, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 113) logits -> per-factor logits (B, V_k)."""
        return torch.split(logits, self.sizes, dim=-1)

    def soft(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """(B, 113) logits -> (B, 5, dim) slots ``softmax(logits_k / temperature) @ C_k``."""
        slots = [
            torch.softmax(lk / temperature, dim=-1) @ self.rows(k).to(lk.dtype)
            for k, lk in enumerate(self.split(logits))
        ]
        return torch.stack(slots, dim=-2)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, 113) logits -> (B, 5) int64 most likely class of every factor."""
        return torch.stack([lk.argmax(-1) for lk in self.split(logits)], dim=-1)

    def lookup(self, classes: torch.Tensor) -> torch.Tensor:
        """(..., 5) int64 classes -> (..., 5, dim) their codes."""
        offsets = torch.as_tensor(self.offsets[:-1], device=classes.device)
        return self.vectors[classes + offsets]

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, dim={self.vectors.shape[1]}, seed={self.seed}"


class Decoder(nn.Module):
    """(B, latent_dim) vector -> (B, 1, 64, 64) logits."""

    def __init__(self, config: DSpritesVSAConfig) -> None:
        super().__init__()
        c0 = config.dec_channels[0]
        self.fc1 = nn.Linear(config.vector_dim, config.dec_hidden)
        self.fc2 = nn.Linear(config.dec_hidden, c0 * 4 * 4)
        self.act = _activation(config.activation)
        self.c0 = c0
        layers: list[nn.Module] = []
        chans = config.dec_channels
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=config.norm == "none"),
                _norm(config.norm, c_out),
                _activation(config.activation),
            ]
        layers.append(nn.ConvTranspose2d(chans[-1], 1, 4, stride=2, padding=1))
        self.deconvs = nn.Sequential(*layers)
        if config.output_bias is not None:
            with torch.no_grad():
                layers[-1].bias.fill_(config.output_bias)

    def forward(self, v: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        h = self.act(self.fc2(self.act(self.fc1(v))))
        h = h.view(-1, self.c0, 4, 4).contiguous(memory_format=memory_format)
        return self.deconvs(h)


_MODEL_CARD = """---
{{ card_data }}
---

# dSprites VSA-VAE

A variational autoencoder for dSprites whose latent for one object is five vectors, one per
generative feature (shape, scale, orientation, position x, position y). Objects bind their slots
to fixed role vectors of an item memory and scenes bind objects to object roles, so swapping,
summing and binding latents edits pictures.

```python
from dsvsa import DSpritesVSA

model = DSpritesVSA.from_pretrained("{{ repo_id | default('path/to/model', true) }}")
recon = model.reconstruct(images)  # (B, 64, 64) uint8 {0, 1}
```

- Code: {{ repo_url | default("[More Information Needed]", true) }}
"""


class DSpritesVSA(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="dsvsa",
    tags=["dsprites", "vae", "vector-symbolic-architecture", "disentanglement"],
    license="apache-2.0",
    model_card_template=_MODEL_CARD,
):
    """VAE with five latent slots per object and a fixed VSA item memory.

    Args:
        config: a :class:`DSpritesVSAConfig`, a dict of its fields, or None for the defaults.

    Example:
        >>> model = DSpritesVSA(DSpritesVSAConfig(latent_dim=64, enc_hidden=32, dec_hidden=32))
        >>> mu, logvar = model(torch.zeros(2, 1, 64, 64))
        >>> mu.shape
        torch.Size([2, 5, 64])
    """

    def __init__(self, config: DSpritesVSAConfig | dict | None = None) -> None:
        super().__init__()
        if config is None:
            config = DSpritesVSAConfig()
        elif isinstance(config, dict):
            config = DSpritesVSAConfig.from_dict(config)
        elif not isinstance(config, DSpritesVSAConfig):
            raise ValueError(
                f"config must be a DSpritesVSAConfig or a dict, got {type(config).__name__}"
            )
        self.config = config
        self._hub_mixin_config = config  # what save_pretrained writes to config.json

        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.item_memory = ItemMemory(
            config.latent_dim,
            seed=config.item_memory_seed,
            kind=config.item_memory_kind,
            num_features=config.num_features,
            num_objects=config.num_object_roles,
        )
        self.codebook: SlotCodebook | None = None
        if config.slot_bottleneck == "codebook":
            self.codebook = SlotCodebook(
                config.latent_dim, FACTOR_SIZES, config.codebook_seed, config.item_memory_kind
            )
        self._memory_format = (
            torch.channels_last if config.channels_last else torch.contiguous_format
        )
        if config.channels_last:
            self.to(memory_format=torch.channels_last)

    # ---- raw tensor path (training) -------------------------------------------------------

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters of a batch of images.

        Args:
            x: (B, 1, 64, 64) float tensor, values in [0, 1], on the model's device.

        Returns:
            (mu, logvar), each (B, 5, latent_dim).

        Example:
            >>> mu, logvar = model(torch.zeros(1, 1, 64, 64))
        """
        if self.codebook is not None:
            return self.slots_from_logits(self.feature_logits(x))
        B = x.shape[0]
        x = x.contiguous(memory_format=self._memory_format)
        h = self.encoder(x).view(B, 2, self.config.num_features, self.config.latent_dim)
        return h[:, 0], h[:, 1]

    def _require_codebook(self) -> SlotCodebook:
        if self.codebook is None:
            raise ValueError(
                'this model has no codebook (config.slot_bottleneck is "none"); feature logits, '
                "codes and class predictions need slot_bottleneck: codebook"
            )
        return self.codebook

    def feature_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Codebook models: logits over every factor's values.

        Args:
            x: (B, 1, 64, 64) float tensor, values in [0, 1].

        Returns:
            (B, 113) logits, factor after factor (split them with ``model.codebook.split``).
        """
        self._require_codebook()
        return self.encoder(x.contiguous(memory_format=self._memory_format))

    def slots_from_logits(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codebook models: (B, 113) logits -> (mu, logvar), each (B, 5, D).

        ``mu`` is the soft code mixture in training mode and, in eval mode with
        ``codebook_inference: argmax``, the code of each factor's most likely value; ``logvar``
        is the constant ``CODEBOOK_LOGVAR`` (a point estimate).
        """
        book = self._require_codebook()
        if not self.training and self.config.codebook_inference == "argmax":
            mu = book.lookup(book.predict(logits)).to(logits.dtype)
        else:
            mu = book.soft(logits, self.config.codebook_temperature)
        return mu, torch.full_like(mu, CODEBOOK_LOGVAR)

    def code_slots(self, classes: torch.Tensor) -> torch.Tensor:
        """Codebook models: the slots of given factor classes, (..., 5) int64 -> (..., 5, D).

        Example:
            >>> v = model.object_vector(model.code_slots(torch.tensor([[0, 5, 0, 16, 16]])))
        """
        return self._require_codebook().lookup(classes)

    def prototypes(self, feature: Feature) -> torch.Tensor:
        """Codebook models: (V, D) the slot vector of every value of ``feature`` (for ``query``)."""
        return self._require_codebook().rows(factor_index(feature))

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Sample z = mu + sigma * eps from the posterior (differentiable in mu and logvar).

        Args:
            mu: (B, 5, D) means.
            logvar: (B, 5, D) log-variances (clamped to [-30, 20] for the sample).
            generator: optional torch.Generator for the noise.

        Returns:
            (B, 5, D) sample.

        Example:
            >>> z = DSpritesVSA.reparameterize(torch.zeros(2, 5, 8), torch.zeros(2, 5, 8))
        """
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar.clamp(-30.0, 20.0))

    def object_vector(self, z: torch.Tensor) -> torch.Tensor:
        """Combine the five slots of an object into one vector.

        ``sum_k role_k * z_k`` when ``config.bind_features``, else ``sum_k z_k``.

        Args:
            z: (..., 5, D) slot vectors.

        Returns:
            (..., D) object vector.

        Example:
            >>> v = model.object_vector(torch.randn(3, 5, model.config.latent_dim))
        """
        if z.shape[-2:] != (self.config.num_features, self.config.latent_dim):
            raise ValueError(
                f"expected slots (..., {self.config.num_features}, {self.config.latent_dim}), "
                f"got {tuple(z.shape)}"
            )
        if self.config.bind_features:
            z = bind(z, self.item_memory.feature_roles.to(z.dtype))
        if self.config.slot_combine == "concat":
            return z.flatten(-2)
        return bundle(z, dim=-2)

    def scene_vector(self, objects: torch.Tensor) -> torch.Tensor:
        """Combine M object vectors into one scene vector.

        ``sum_j objrole_j * object_j`` when ``config.bind_objects`` (M at most
        ``config.num_object_roles``), else ``sum_j object_j``.

        Args:
            objects: (..., M, D) object vectors.

        Returns:
            (..., D) scene vector.

        Example:
            >>> s = model.scene_vector(torch.randn(4, 2, model.config.latent_dim))
        """
        if objects.ndim < 2 or objects.shape[-1] != self.config.vector_dim:
            raise ValueError(
                f"expected objects (..., M, {self.config.vector_dim}), got {tuple(objects.shape)}"
            )
        if self.config.bind_objects:
            M = objects.shape[-2]
            if M > self.config.num_object_roles:
                raise ValueError(
                    f"a bound scene holds at most {self.config.num_object_roles} objects "
                    f"(config.num_object_roles), got {M}"
                )
            objects = bind(objects, self.item_memory.object_roles[:M].to(objects.dtype))
        return bundle(objects, dim=-2)

    def decode(self, v: torch.Tensor) -> torch.Tensor:
        """Decode object or scene vectors into image logits.

        Args:
            v: (B, D) or (D,) vectors.

        Returns:
            (B, 1, 64, 64) logits (B = 1 for a (D,) input); see ``dsvsa.images.logits_to_binary``.

        Example:
            >>> logits = model.decode(torch.zeros(2, model.config.latent_dim))
        """
        if v.ndim == 1:
            v = v[None]
        if v.ndim != 2 or v.shape[1] != self.config.vector_dim:
            raise ValueError(
                f"expected vectors (B, {self.config.vector_dim}), got {tuple(v.shape)}"
            )
        return self.decoder(v, self._memory_format).contiguous()

    # ---- inference helpers (any image-like input, eval mode, no grad) ----------------------

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """Eval mode and no grad for the duration; the previous train/eval mode is restored."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def _batch(self, images: Any) -> torch.Tensor:
        ref = self.encoder.fc1.weight
        return to_batch(images).to(device=ref.device, dtype=ref.dtype)

    def _slots(self, feature: Feature | Sequence[Feature]) -> list[int]:
        if isinstance(feature, (str, int, np.integer)):
            return [factor_index(feature)]
        slots = [factor_index(f) for f in feature]
        if not slots:
            raise ValueError("give at least one feature")
        return slots

    def encode(self, images: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters of image-like input (gradients kept, current train/eval mode).

        Args:
            images: 64x64 image(s): ndarray/tensor (64, 64), (B, 64, 64), (B, 1, 64, 64) of
                bool/uint8/float, a PIL image, or a list of those (see ``dsvsa.images.to_batch``).

        Returns:
            (mu, logvar), each (B, 5, D).

        Example:
            >>> mu, logvar = model.encode(np.zeros((64, 64), dtype=np.uint8))
        """
        return self(self._batch(images))

    def latent(self, images: Any) -> torch.Tensor:
        """Posterior mean of image-like input, computed in eval mode without gradients.

        Args:
            images: 64x64 image(s), as for :meth:`encode`.

        Returns:
            (B, 5, D) slots z (shape, scale, orientation, pos_x, pos_y).

        Example:
            >>> z = model.latent(np.zeros((2, 64, 64), dtype=np.uint8))
        """
        with self._inference():
            mu, _ = self(self._batch(images))
        return mu

    def classify(self, images: Any) -> np.ndarray:
        """Codebook models: the most likely class of every factor of image-like input.

        Returns:
            (B, 5) int64 classes (shape, scale, orientation, pos_x, pos_y).

        Example:
            >>> classes = model.classify(np.zeros((64, 64), dtype=np.uint8))  # doctest: +SKIP
        """
        book = self._require_codebook()
        with self._inference():
            return book.predict(self.feature_logits(self._batch(images))).cpu().numpy()

    def _decode_binary(self, v: torch.Tensor) -> np.ndarray:
        with self._inference():
            return logits_to_binary(self.decode(v))

    def reconstruct(self, images: Any) -> np.ndarray:
        """Encode (posterior mean) and decode images.

        Args:
            images: 64x64 image(s), as for :meth:`encode`.

        Returns:
            (B, 64, 64) uint8 {0, 1}.

        Example:
            >>> recon = model.reconstruct(np.zeros((64, 64), dtype=np.uint8))
        """
        z = self.latent(images)
        return self._decode_binary(self.object_vector(z))

    def transfer(self, a: Any, b: Any, feature: Feature | Sequence[Feature]) -> np.ndarray:
        """Give images ``a`` the ``feature`` of images ``b``: a's slots with slot(s) from b.

        Args:
            a: recipient image(s), batch B (or 1).
            b: donor image(s), batch B (or 1, broadcast).
            feature: factor name ("shape", "scale", "orientation", "pos_x", "pos_y"), position
                0-4, or a list of them.

        Returns:
            (B, 64, 64) uint8 {0, 1}.

        Example:
            >>> out = model.transfer(img_a, img_b, "shape")
        """
        slots = self._slots(feature)
        z_a, z_b = self.latent(a), self.latent(b)
        if len(z_a) != len(z_b) and 1 not in (len(z_a), len(z_b)):
            raise ValueError(
                f"a and b must have the same batch size (or 1), got {len(z_a)} and {len(z_b)}"
            )
        z_a, z_b = torch.broadcast_tensors(z_a, z_b)
        z = z_a.clone()
        z[:, slots] = z_b[:, slots]
        return self._decode_binary(self.object_vector(z))

    def mix(self, sources: Any) -> np.ndarray:
        """Build one object taking each feature from its own source image.

        Args:
            sources: 5 images; slot k (shape, scale, orientation, pos_x, pos_y) comes from
                ``sources[k]``.

        Returns:
            (64, 64) uint8 {0, 1}.

        Example:
            >>> out = model.mix([img_shape, img_scale, img_orient, img_x, img_y])
        """
        z = self.latent(sources)
        K = self.config.num_features
        if len(z) != K:
            raise ValueError(f"mix needs {K} source images, one per feature, got {len(z)}")
        idx = torch.arange(K, device=z.device)
        mixed = z[idx, idx]  # (5, D): slot k of source k
        return self._decode_binary(self.object_vector(mixed)[None])[0]

    def _scene_from_slots(self, z: torch.Tensor) -> np.ndarray:
        """(M, 5, D) slots of M objects -> (64, 64) decoded scene."""
        scene = self.scene_vector(self.object_vector(z))
        return self._decode_binary(scene[None])[0]

    def compose(self, objects: Any) -> np.ndarray:
        """Decode a scene made of single-object images (bound per the config).

        Args:
            objects: M single-object images (list or (M, 64, 64) array).

        Returns:
            (64, 64) uint8 {0, 1}.

        Example:
            >>> scene = model.compose([img_1, img_2])
        """
        return self._scene_from_slots(self.latent(objects))

    def edit(
        self, scene_objects: Any, j: int, feature: Feature | Sequence[Feature], value_source: Any
    ) -> np.ndarray:
        """Change one feature of object ``j`` of a scene, taking the value from another image.

        Args:
            scene_objects: the scene's M single-object images.
            j: which object (0 .. M-1) to edit.
            feature: factor name or position (or a list of them) to change.
            value_source: one image whose slot(s) of ``feature`` give the new value.

        Returns:
            (64, 64) uint8 {0, 1}: the decoded edited scene.

        Example:
            >>> scene = model.edit([img_1, img_2], 1, "scale", img_big)
        """
        slots = self._slots(feature)
        z = self.latent(scene_objects).clone()
        if not isinstance(j, (int, np.integer)) or not 0 <= int(j) < len(z):
            raise ValueError(f"object index j must be in 0..{len(z) - 1}, got {j!r}")
        z_src = self.latent(value_source)
        if len(z_src) != 1:
            raise ValueError(f"value_source must be one image, got {len(z_src)}")
        z[int(j), slots] = z_src[0, slots]
        return self._scene_from_slots(z)

    def query(
        self, scene_vec: torch.Tensor, j: int | None, feature: Feature, prototypes: torch.Tensor
    ) -> torch.Tensor:
        """Read one feature of one object out of a scene vector by unbinding and cleanup.

        Unbinds object role ``j`` (skipped when ``j`` is None, i.e. ``scene_vec`` is an object
        vector) and then the feature role, and returns the nearest prototype by cosine similarity.

        Args:
            scene_vec: (D,) or (B, D) scene (or object) vectors.
            j: object position, or None.
            feature: factor name or position.
            prototypes: (V, D) one slot vector per value of the feature (e.g. mean latents).

        Returns:
            int64 tensor of prototype indices, shape () for (D,) input, (B,) otherwise.

        Example:
            >>> idx = model.query(scene, 0, "shape", shape_prototypes)
        """
        k = factor_index(feature)
        mode = self.item_memory.unbind_mode
        v = scene_vec.to(self.item_memory.vectors.dtype)
        if j is not None:
            if not self.config.bind_objects:
                raise ValueError(
                    "objects are not bound (config.bind_objects is false): pass j=None"
                )
            if not 0 <= int(j) < self.config.num_object_roles:
                raise ValueError(
                    f"object index j must be in 0..{self.config.num_object_roles - 1}, got {j}"
                )
            v = unbind(v, self.item_memory.object_roles[int(j)], mode)
        if self.config.slot_combine == "concat":  # slot k is the k-th chunk
            d = self.config.latent_dim
            v = v[..., k * d : (k + 1) * d]
        if self.config.bind_features:
            v = unbind(v, self.item_memory.feature_roles[k], mode)
        index, _ = cleanup(v, prototypes.to(v.device, v.dtype))
        return index

    @property
    def device(self) -> torch.device:
        """The device the model's tensors are on."""
        return self.item_memory.vectors.device

    def num_parameters(self, trainable_only: bool = True) -> int:
        """Number of parameters (the item memory is a buffer and never counts)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ---- saving and loading ----------------------------------------------------------------

    def _save_pretrained(self, save_directory: Path) -> None:
        """Write model.safetensors (every parameter and persistent buffer, item memory included)."""
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(Path(save_directory) / WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        **config_overrides: Any,
    ) -> DSpritesVSA:
        """Load a saved model from a folder or a Hub repository, in eval mode.

        Only ``config.json`` and ``model.safetensors`` are read (never a pickle). The stored item
        memory replaces the freshly drawn one.

        Args:
            pretrained_model_name_or_path: a folder written by ``save_pretrained`` or a repo id.
            force_download, token, cache_dir, local_files_only, revision: as for
                ``huggingface_hub.hf_hub_download``.
            map_location: device to put the model on.
            strict: require the weights' tensor names to match the model exactly.
            **config_overrides: config fields to change (e.g. ``channels_last=False``).

        Returns:
            the model, in eval mode.

        Raises:
            CheckpointError: config.json or model.safetensors is unreadable, invalid, or does not
                match (names the file and the field or tensor).

        Example:
            >>> model = DSpritesVSA.from_pretrained("org/dsprites-vsa")  # doctest: +SKIP
        """
        return cls._from_pretrained(
            model_id=str(pretrained_model_name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            map_location=map_location,
            strict=strict,
            **config_overrides,
        )

    @classmethod
    def _from_pretrained(  # type: ignore[override]
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        config: DSpritesVSAConfig | dict | None = None,
        **config_overrides: Any,
    ) -> DSpritesVSA:
        hub_kwargs = {
            "revision": revision,
            "cache_dir": cache_dir,
            "force_download": force_download,
            "local_files_only": local_files_only,
            "token": token,
        }
        hub_kwargs, offline_reason = _check_source(model_id, hub_kwargs)
        if config is None:
            config = _read_config(_resolve_file(model_id, CONFIG_NAME, hub_kwargs, offline_reason))
        elif isinstance(config, dict):
            config = DSpritesVSAConfig.from_dict(config)
        if config_overrides:
            known = {f.name for f in fields(DSpritesVSAConfig)}
            unknown = sorted(set(config_overrides) - known)
            if unknown:
                raise ValueError(f"unknown model config key(s) {', '.join(map(repr, unknown))}")
            config = replace(config, **config_overrides)
        model = cls(config=config)
        weights = _resolve_file(model_id, WEIGHTS_NAME, hub_kwargs, offline_reason)
        load_weights(model, weights, strict=strict)
        model.to(map_location)
        model.eval()
        return model


class HubUnreachableError(ConnectionError):
    """The Hub cannot be reached and the repository asked for is not in the local cache."""


def looks_like_local_path(name: str) -> bool:
    """True for names that can only mean a folder: ``./x``, ``/x``, ``~/x``, ``a/b/c``, ``a\\b``.

    A Hub repo id is ``name`` or ``org/name``: one slash at most, never at the start.
    """
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or (os.sep != "/" and os.sep in name)
        or name.count("/") > 1
        or os.path.isabs(name)
    )


def probe_hub(
    repo_id: str,
    repo_type: str = "model",
    revision: str | None = None,
    token: str | bool | None = None,
) -> str | None:
    """Ask the Hub once, without retries, whether it serves ``repo_id``.

    Returns:
        None when the Hub answered for the repository, else why it could not be asked (offline
        mode, connection refused, timeout, server error): the caller then uses the local cache.

    Raises:
        FileNotFoundError: the Hub says there is no such repository (or revision), or that it is
            private or gated for this token.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = constants.ENDPOINT
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    kind = repo_type
    try:
        HfApi().repo_info(
            repo_id,
            repo_type=repo_type,
            revision=revision,
            token=token,
            timeout=constants.HF_HUB_ETAG_TIMEOUT,
        )
    except GatedRepoError:
        raise FileNotFoundError(
            f"the {kind} repository {repo_id} on {endpoint} is gated: request access on its "
            "page and log in (`hf auth login` or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{kind} repository {repo_id} not found on the Hub at {endpoint}, and there is no "
            "folder of that name here (a private repository needs `hf auth login` or HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise FileNotFoundError(
            f"the {kind} repository {repo_id} on {endpoint} has no revision {revision!r}"
        ) from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        if status in (401, 403):
            raise FileNotFoundError(
                f"the Hub at {endpoint} refused access to the {kind} repository {repo_id} "
                f"(HTTP {status}): log in with `hf auth login` or set HF_TOKEN"
            ) from None
        return f"the Hub at {endpoint} answered HTTP {status}"
    except Exception as err:  # connection refused, DNS failure, timeout, TLS, offline mode
        return f"the Hub at {endpoint} cannot be reached ({type(err).__name__})"
    return None


def _check_source(model_id: str, hub_kwargs: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Fail fast on a missing folder; probe the Hub once for a repo id.

    Returns the download arguments (``local_files_only`` once the Hub proved unreachable) and
    the reason the Hub could not be used, if any.
    """
    if os.path.isdir(model_id):
        return hub_kwargs, None
    if os.path.exists(model_id):
        raise CheckpointError(f"{model_id} is a file; expected a model folder or a Hub repo id")
    if looks_like_local_path(model_id):
        raise CheckpointError(
            f"no such model folder: {model_id} (the name is neither an existing model folder nor "
            "a Hub repo id, so the Hub was not asked)"
        )
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model_id)
    except ValueError as e:
        raise CheckpointError(
            f"{model_id!r} is neither an existing model folder nor a valid Hub repo id ({e})"
        ) from None
    if hub_kwargs.get("local_files_only"):
        return hub_kwargs, "local_files_only=True"
    reason = probe_hub(model_id, "model", hub_kwargs.get("revision"), hub_kwargs.get("token"))
    if reason is None:
        return hub_kwargs, None
    if hub_kwargs.get("force_download"):
        raise HubUnreachableError(
            f"could not reach the Hub for repo {model_id} ({reason}) and force_download is set"
        )
    return {**hub_kwargs, "local_files_only": True}, reason


def _resolve_file(
    model_id: str, filename: str, hub_kwargs: dict[str, Any], offline_reason: str | None = None
) -> str:
    """Local path of ``filename`` in a model folder, or downloaded from the Hub repo ``model_id``.

    ``offline_reason`` (from :func:`_check_source`) says why only the local cache is consulted.
    """
    if os.path.isdir(model_id):
        path = os.path.join(model_id, filename)
        if not os.path.isfile(path):
            hint = ""
            if filename == WEIGHTS_NAME and os.path.exists(
                os.path.join(model_id, "pytorch_model.bin")
            ):
                hint = " (only safetensors weights are loaded, never pickled ones)"
            raise CheckpointError(f"{filename} not found in model folder {model_id}{hint}")
        return path
    if os.path.exists(model_id):
        raise CheckpointError(f"{model_id} is a file; expected a model folder or a Hub repo id")
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return hf_hub_download(repo_id=model_id, filename=filename, **hub_kwargs)
    except LocalEntryNotFoundError:
        why = [offline_reason] if offline_reason else []
        if filename != CONFIG_NAME:  # config.json is cached, the weights are not
            why.append(f"{filename} missing from the cache")
        else:
            why.append("no model folder of that name here either")
        raise HubUnreachableError(
            f"could not reach the Hub for repo {model_id} and it is not in the local cache"
            + (f" ({'; '.join(why)})" if why else "")
        ) from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"model repository {model_id} not found on the Hub at {constants.ENDPOINT}, and there "
            "is no folder of that name here"
        ) from None
    except HFValidationError as e:
        raise CheckpointError(
            f"{model_id!r} is neither an existing model folder nor a valid Hub repo id ({e})"
        ) from None
    except EntryNotFoundError as e:
        raise CheckpointError(f"{filename} not found in model repository {model_id}") from e


def _read_config(path: str) -> DSpritesVSAConfig:
    """Parse and validate a config.json, naming the file in every error."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    try:
        return DSpritesVSAConfig.from_dict(data)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None


# which config fields decide the shapes under each state-dict prefix (for error messages)
_SHAPE_FIELDS = {
    "encoder.convs": "enc_channels",
    "encoder.fc1": "enc_channels, enc_hidden",
    "encoder.fc2": "enc_hidden, latent_dim, slot_bottleneck",
    "decoder.fc1": "latent_dim, slot_combine, dec_hidden",
    "decoder.fc2": "dec_hidden, dec_channels",
    "decoder.deconvs": "dec_channels",
    "item_memory": "latent_dim, num_object_roles",
    "codebook": "latent_dim, slot_bottleneck",
}


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load a safetensors file into ``model``, with errors that name the file and the tensor.

    Args:
        model: the freshly built model.
        path: the model.safetensors file.
        strict: also fail on missing or unexpected tensor names (shape mismatches always fail).

    Raises:
        CheckpointError: unreadable, corrupt or truncated file; wrong tensor shapes or names.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = str(path)
    try:
        state = load_file(path, device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"weights file {path} does not exist") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (corrupt or truncated?): {e}"
        ) from None

    expected = model.state_dict()
    mismatched = [
        name
        for name, tensor in state.items()
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape)
    ]
    if mismatched:
        lines = []
        for name in mismatched[:4]:
            prefix = next((p for p in _SHAPE_FIELDS if name.startswith(p)), None)
            hint = f" (config fields: {_SHAPE_FIELDS[prefix]})" if prefix else ""
            lines.append(
                f"tensor {name!r} has shape {tuple(state[name].shape)} but the config needs "
                f"{tuple(expected[name].shape)}{hint}"
            )
        more = f"; and {len(mismatched) - 4} more" if len(mismatched) > 4 else ""
        raise CheckpointError(
            f"{path}: the weights do not match config.json: {'; '.join(lines)}{more}"
        )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{path} does not match the model: missing tensors {missing[:5]}, "
            f"unexpected tensors {unexpected[:5]}"
        )
    for name in missing:
        logger.warning("%s: tensor %s missing, keeping its fresh value", path, name)
    with torch.no_grad():
        model.load_state_dict(state, strict=False)
