"""Vector-symbolic algebra on real vectors: bind, unbind, bundle, similarity, cleanup.

Binding is the elementwise (Hadamard) product. With bipolar keys (entries +-1) it is its own
inverse, ``bind(bind(x, r), r) == x`` exactly, which is why the item memory is bipolar by default.
Bundling is the sum. :class:`ItemMemory` holds the model's seven fixed role vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

NUM_FEATURE_ROLES = 5
NUM_OBJECT_ROLES = 2
ITEM_MEMORY_KINDS = ("bipolar", "gaussian")
UNBIND_MODES = ("inverse", "self")


def bind(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Bind two hypervectors by elementwise product (broadcasting).

    Example:
        >>> bind(torch.tensor([1.0, -1.0]), torch.tensor([2.0, 3.0])).tolist()
        [2.0, -3.0]
    """
    return a * b


def unbind(bound: torch.Tensor, key: torch.Tensor, mode: str = "inverse") -> torch.Tensor:
    """Undo :func:`bind` with ``key``.

    Args:
        bound: (..., d) bound vector or bundle of bound vectors.
        key: (..., d) the key it was bound with.
        mode: ``"inverse"`` multiplies by ``key / key**2`` (the exact elementwise inverse ``1/key``,
            zero where the key is zero); ``"self"`` multiplies by ``key`` itself, an approximate
            inverse for keys with unit mean square (E[key**2] = 1). For bipolar keys the two are
            the same and exact. For Gaussian keys inside a bundle prefer ``"self"``: dividing by
            small entries blows up the other items' crosstalk.

    Returns:
        (..., d) tensor.

    Example:
        >>> r = torch.tensor([1.0, -1.0, 1.0])
        >>> x = torch.tensor([0.5, 2.0, -3.0])
        >>> torch.equal(unbind(bind(x, r), r), x)
        True
    """
    if mode == "self":
        return bound * key
    if mode != "inverse":
        raise ValueError(f"unbind mode must be one of {UNBIND_MODES}, got {mode!r}")
    sq = key * key
    inv = torch.where(sq > 0, key / torch.where(sq > 0, sq, torch.ones_like(sq)), 0.0)
    return bound * inv


def bundle(xs: torch.Tensor | Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """Bundle (superpose) hypervectors by summing them along ``dim``.

    Args:
        xs: a tensor whose axis ``dim`` indexes the items, or a sequence of equal-shape tensors
            (stacked along ``dim`` first).
        dim: the items' axis.

    Returns:
        the sum, with axis ``dim`` removed.

    Example:
        >>> bundle([torch.ones(3), torch.ones(3)]).tolist()
        [2.0, 2.0, 2.0]
    """
    if not isinstance(xs, torch.Tensor):
        if len(xs) == 0:
            raise ValueError("bundle needs at least one vector")
        xs = torch.stack(list(xs), dim=dim)
    return xs.sum(dim=dim)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity along the last axis, broadcasting the others: (..., d) x (..., d) -> (...).

    Example:
        >>> round(float(cosine_similarity(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))), 4)
        0.7071
    """
    a, b = torch.broadcast_tensors(a, b)
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=eps)


def cleanup(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codebook entry by cosine similarity.

    Args:
        x: (d,) or (B, d) noisy vectors.
        codebook: (V, d) clean vectors.

    Returns:
        (index, similarity): int64 and float tensors of shape () for (d,) input, (B,) otherwise.

    Example:
        >>> book = torch.eye(3)
        >>> idx, sim = cleanup(torch.tensor([0.1, 0.9, 0.0]), book)
        >>> int(idx)
        1
    """
    if codebook.ndim != 2 or x.shape[-1] != codebook.shape[-1]:
        raise ValueError(
            f"cleanup needs x (..., d) and codebook (V, d); got {tuple(x.shape)} and "
            f"{tuple(codebook.shape)}"
        )
    xn = torch.nn.functional.normalize(x.to(codebook.dtype), dim=-1)
    cn = torch.nn.functional.normalize(codebook, dim=-1)
    sims = xn @ cn.T  # (..., V)
    similarity, index = sims.max(dim=-1)
    return index, similarity


def random_hypervectors(
    num: int, dim: int, generator: torch.Generator, kind: str = "bipolar"
) -> torch.Tensor:
    """(num, dim) float32 random vectors on the CPU: bipolar +-1 or standard Gaussian entries.

    Always drawn on the CPU so a seed gives the same vectors whatever the default device.
    """
    if kind == "bipolar":
        bits = torch.randint(0, 2, (num, dim), generator=generator, device="cpu")
        return bits.to(torch.float32) * 2.0 - 1.0
    if kind == "gaussian":
        return torch.randn(num, dim, generator=generator, dtype=torch.float32, device="cpu")
    raise ValueError(f"item memory kind must be one of {ITEM_MEMORY_KINDS}, got {kind!r}")


def max_abs_cosine(vectors: torch.Tensor) -> float:
    """Largest |cosine similarity| between two different rows of a (N, d) matrix."""
    vn = torch.nn.functional.normalize(vectors.double(), dim=-1)
    sims = (vn @ vn.T).abs()
    sims.fill_diagonal_(0.0)
    return float(sims.max()) if len(vectors) > 1 else 0.0


class ItemMemory(nn.Module):
    """Fixed random role vectors: feature roles then object roles, never trained.

    The vectors are drawn once from a ``torch.Generator`` seeded with ``seed`` and kept in the
    persistent buffer ``vectors`` (num_features + num_objects, dim), so they are saved inside
    ``model.safetensors``; loading a checkpoint overwrites the fresh draw with the stored vectors.
    The draw is repeated (with the same generator, so still deterministic) until all rows are
    pairwise quasi-orthogonal: |cos| < 0.2 for dim >= 256, merely distinct (not equal or opposite)
    for smaller dims.

    Args:
        dim: vector dimension.
        seed: seed of the generator.
        kind: "bipolar" (+-1, binding is self-inverse) or "gaussian" (N(0, 1) entries).
        num_features: number of feature roles (5 for dSprites).
        num_objects: number of object roles.

    Example:
        >>> memory = ItemMemory(1024, seed=0)
        >>> memory.feature_roles.shape, memory.object_roles.shape
        (torch.Size([5, 1024]), torch.Size([2, 1024]))
    """

    vectors: torch.Tensor

    def __init__(
        self,
        dim: int,
        seed: int = 0,
        kind: str = "bipolar",
        num_features: int = NUM_FEATURE_ROLES,
        num_objects: int = NUM_OBJECT_ROLES,
    ) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"item memory dim must be at least 2, got {dim}")
        self.dim = dim
        self.seed = seed
        self.kind = kind
        self.num_features = num_features
        self.num_objects = num_objects
        self.register_buffer("vectors", self._draw(), persistent=True)

    def _draw(self) -> torch.Tensor:
        num = self.num_features + self.num_objects
        limit = 0.2 if self.dim >= 256 else 1.0 - 1e-6
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(1000):
            vectors = random_hypervectors(num, self.dim, generator, self.kind)
            if max_abs_cosine(vectors) < limit:
                return vectors
        raise ValueError(f"could not draw {num} distinct role vectors of dimension {self.dim}")

    @property
    def feature_roles(self) -> torch.Tensor:
        """(num_features, dim) feature role vectors (shape, scale, orientation, pos_x, pos_y)."""
        return self.vectors[: self.num_features]

    @property
    def object_roles(self) -> torch.Tensor:
        """(num_objects, dim) object role vectors."""
        return self.vectors[self.num_features :]

    @property
    def unbind_mode(self) -> str:
        """How :func:`unbind` should invert these keys inside a bundle (see its docstring)."""
        return "inverse" if self.kind == "bipolar" else "self"

    def extra_repr(self) -> str:
        return f"dim={self.dim}, seed={self.seed}, kind={self.kind!r}"
