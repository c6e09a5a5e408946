"""Image conversions shared by the model, the evaluation and the app.

Inside the package an image is ``uint8`` {0, 1} (float {0., 1.} in torch); at the boundaries a
person or another library sees (PNG, PIL, the app) it is mode-"L" {0, 255}. Decoder outputs are
logits: :func:`logits_to_probs` and :func:`logits_to_binary` are the one way to turn them into
probabilities and binary images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

IMAGE_SIZE = 64


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """PIL image of any mode -> (H, W) uint8 {0, 1}; alpha is composited on black."""
    if img.mode == "1":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba)
    grey = np.asarray(img.convert("L"), dtype=np.uint8)
    return (grey >= 128).astype(np.uint8)


def _array_to_binary(arr: np.ndarray) -> np.ndarray:
    """Numeric array -> same-shape uint8 {0, 1}, with the value rules of :func:`to_batch`."""
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and arr.min() < 0:
            raise ValueError(f"integer images must be non-negative, got minimum {arr.min()}")
        if arr.size and arr.max() > 255:
            raise ValueError(f"integer images must lie in 0..255, got maximum {arr.max()}")
        if arr.size and arr.max() > 1:
            return (arr >= 128).astype(np.uint8)  # 0..255 greyscale
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError("image contains NaN or infinite values")
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            raise ValueError(
                f"float images must lie in [0, 1], got values in [{arr.min():g}, {arr.max():g}]"
            )
        return (arr >= 0.5).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {arr.dtype}; use bool, uint8 or float")


def _as_numpy(images: Any) -> np.ndarray:
    """One image or a batch in any accepted form -> ndarray (still unchecked)."""
    if isinstance(images, Image.Image):
        return _pil_to_array(images)
    if isinstance(images, torch.Tensor):
        return images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        return images
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        if len(images) == 0:
            raise ValueError("got an empty list of images")
        if all(isinstance(x, (Image.Image, np.ndarray, torch.Tensor)) for x in images):
            items = [_array_to_binary(_as_numpy(x)) for x in images]
            items = [
                x.reshape(x.shape[-2:]) if x.ndim > 2 and x.shape[0] == 1 else x for x in items
            ]
            shapes = {x.shape for x in items}
            if len(shapes) != 1:
                raise ValueError(f"images in a list must share one shape, got {sorted(shapes)}")
            return np.stack(items)
        return np.asarray(images)
    raise ValueError(
        f"cannot read an image from {type(images).__name__}; "
        "expected a numpy array, a torch tensor, a PIL image or a list of them"
    )


def to_batch(images: Any) -> torch.Tensor:
    """Turn image-like input into the model's input batch.

    Accepted: a PIL image (any mode: alpha is composited on black, greyscale thresholded at 128),
    a numpy array or torch tensor of shape (64, 64), (B, 64, 64) or (B, 1, 64, 64), or a list of
    such single images. Values: bool; integers either {0, 1} or, when the maximum exceeds 1,
    0..255 greyscale thresholded at 128; floats in [0, 1] thresholded at 0.5.

    Args:
        images: one image or a batch of images, 64x64 pixels.

    Returns:
        float32 tensor (B, 1, 64, 64) with values in {0., 1.} (on the input tensor's device, CPU
        otherwise).

    Raises:
        ValueError: wrong size, several channels, NaN, values out of range or unsupported type.

    Example:
        >>> import numpy as np
        >>> to_batch(np.zeros((64, 64), dtype=np.uint8)).shape
        torch.Size([1, 1, 64, 64])
    """
    device = images.device if isinstance(images, torch.Tensor) else torch.device("cpu")
    arr = _as_numpy(images)
    shape = arr.shape
    if arr.ndim == 2:
        arr = arr[None, None]
    elif arr.ndim == 3:
        if shape[-1] in (3, 4) and shape[0] == IMAGE_SIZE:
            raise ValueError(
                f"expected one greyscale channel, got an image of shape {shape} with "
                f"{shape[-1]} channels; convert it to one channel first"
            )
        arr = arr[:, None]
    elif arr.ndim == 4:
        if shape[1] != 1:
            raise ValueError(f"expected one channel in (B, 1, 64, 64), got shape {shape}")
    else:
        raise ValueError(f"expected (64, 64), (B, 64, 64) or (B, 1, 64, 64), got shape {shape}")
    if arr.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"images must be {IMAGE_SIZE}x{IMAGE_SIZE} pixels, got {arr.shape[-2]}x{arr.shape[-1]}"
            " (dsvsa.uploads fits arbitrary pictures)"
        )
    if arr.shape[0] == 0:
        raise ValueError("got an empty batch of images")
    binary = _array_to_binary(arr)
    return torch.from_numpy(binary.astype(np.float32)).to(device)


def logits_to_probs(logits: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Pixel probabilities from decoder logits (the sigmoid); keeps tensor or array type.

    Example:
        >>> float(logits_to_probs(torch.zeros(1)))
        0.5
    """
    if isinstance(logits, np.ndarray):
        return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return torch.sigmoid(logits)


def logits_to_binary(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """Binary image from decoder logits: probability > 0.5, i.e. logit > 0.

    Args:
        logits: (B, 1, H, W), (B, H, W) or (H, W) logits.

    Returns:
        uint8 ndarray {0, 1}; a (B, 1, H, W) input loses its channel axis -> (B, H, W).

    Example:
        >>> logits_to_binary(torch.tensor([[-1.0, 2.0]])).tolist()
        [[0, 1]]
    """
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().numpy()
    out = (np.asarray(logits) > 0).astype(np.uint8)
    if out.ndim == 4 and out.shape[1] == 1:
        out = out[:, 0]
    return out


def probs_to_binary(probs: torch.Tensor | np.ndarray) -> np.ndarray:
    """Binary image from probabilities (> 0.5), same shape rules as :func:`logits_to_binary`."""
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().cpu().numpy()
    out = (np.asarray(probs) > 0.5).astype(np.uint8)
    if out.ndim == 4 and out.shape[1] == 1:
        out = out[:, 0]
    return out


def _to_uint8_255(img: Any) -> np.ndarray:
    """{0, 1} image or [0, 1] probabilities -> uint8 0..255 (a 0..255 uint8 input is kept)."""
    if isinstance(img, Image.Image):
        return _pil_to_array(img) * np.uint8(255)
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().numpy()
    arr = np.asarray(img)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError("integer images must lie in 0..255")
        if arr.size and arr.max() <= 1:
            return arr.astype(np.uint8) * np.uint8(255)
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError("image contains NaN or infinite values")
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            raise ValueError("float images must lie in [0, 1]")
        return np.round(arr * 255.0).astype(np.uint8)
    raise ValueError(f"unsupported image dtype {arr.dtype}")


def to_pil(img: Any) -> Image.Image:
    """A {0, 1} image (or [0, 1] probabilities) as a mode-"L" PIL image with values {0, 255}.

    Args:
        img: (H, W), (1, H, W) or (1, 1, H, W) array or tensor.

    Returns:
        PIL image, mode "L".

    Example:
        >>> to_pil(np.eye(64, dtype=np.uint8)).getextrema()
        (0, 255)
    """
    arr = _to_uint8_255(img)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"to_pil takes one image (H, W), got shape {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr), mode="L")


def from_pil(img: Image.Image) -> np.ndarray:
    """A PIL image as uint8 {0, 1} (H, W): alpha composited on black, greyscale >= 128 -> 1.

    Example:
        >>> int(from_pil(to_pil(np.eye(64, dtype=np.uint8))).sum())
        64
    """
    if not isinstance(img, Image.Image):
        raise ValueError(f"from_pil takes a PIL image, got {type(img).__name__}")
    return _pil_to_array(img)


def to_display(img: Any, scale: int = 4) -> np.ndarray:
    """Upscale an image for showing it: uint8 {0, 255} (probabilities become grey levels).

    Args:
        img: (H, W) or (B, H, W) {0, 1} image(s) or [0, 1] probabilities; (B, 1, H, W) too.
        scale: integer nearest-neighbour zoom factor.

    Returns:
        uint8 ndarray (H*scale, W*scale) or (B, H*scale, W*scale).

    Example:
        >>> to_display(np.ones((64, 64), dtype=np.uint8), scale=2).shape
        (128, 128)
    """
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    arr = _to_uint8_255(img)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"to_display takes (H, W) or (B, H, W), got shape {arr.shape}")
    return arr.repeat(scale, axis=-2).repeat(scale, axis=-1)
