"""Turn an image a person uploaded into a dSprites-like 64x64 binary object image.

Uploads are arbitrary: any size, RGBA with a transparent background, JPEG, palette GIF, black on
white. ``prepare_upload`` composites alpha on black, converts to greyscale, fits the picture to
64x64, thresholds it and returns, beside the pixels, one sentence per change it made so the app can
tell the user.

    >>> import numpy as np
    >>> pixels, notes = prepare_upload(np.full((128, 128), 255, dtype=np.uint8))
    >>> pixels.shape, notes[0]
    ((64, 64), 'resized from 128x128 to 64x64')
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

SIZE = 64
MIN_SIDE = 8  # smaller pictures cannot hold a recognisable object
MAX_PIXELS = 25_000_000  # refuse larger pictures before decoding them (5000x5000)
THRESHOLD = 128  # greyscale level at and above which a pixel is foreground


class UploadError(ValueError):
    """An upload that cannot be turned into an object image; the message is meant for the user."""


def _too_large(size: str) -> UploadError:
    return UploadError(
        f"the image is {size} pixels; at most {MAX_PIXELS // 1_000_000} megapixels are accepted"
    )


def _open(source) -> Image.Image:
    """Open a path, bytes, PIL image or array as a PIL image without decoding huge pictures."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _open_unchecked(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large("very many") from None


def _open_unchecked(source) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise UploadError(f"no file at {path.name!r}")
        try:
            return Image.open(path)
        except (UnidentifiedImageError, OSError) as err:
            raise UploadError(f"{path.name!r} is not an image file PIL can read") from err
    if isinstance(source, (bytes, bytearray)):
        try:
            return Image.open(io.BytesIO(source))
        except (UnidentifiedImageError, OSError) as err:
            raise UploadError("the upload is not an image file PIL can read") from err
    raise UploadError(f"expected an image, got {type(source).__name__}")


def _array_to_pil(arr: np.ndarray) -> tuple[Image.Image | None, np.ndarray | None]:
    """Arrays: (H, W) masks in {0, 1} pass through untouched; anything else becomes a PIL image."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 4 and arr.shape[:2] == (1, 1):  # (1, 1, H, W) torch-style batch of one
        arr = arr[0, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise UploadError(
            f"expected an image array (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}"
        )
    if arr.size == 0:
        raise UploadError("the image has no pixels")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise UploadError("the image array holds NaN or infinite values")
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise UploadError("integer image values must lie in 0..255")
        arr = arr.astype(np.uint8)
        if arr.max() <= 1:  # {0, 1} pixels, as inside the package
            if arr.ndim == 2:
                return None, arr
            arr = arr * np.uint8(255)
    else:
        raise UploadError(f"unsupported image dtype {arr.dtype}")
    if arr.ndim == 2 and arr.max() == 0:
        return None, arr
    return Image.fromarray(arr), None


def _flatten_alpha(img: Image.Image, notes: list[str]) -> np.ndarray:
    """Composite on black and return greyscale (H, W) uint8; keep dark shapes on transparency."""
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if not has_alpha and img.mode.startswith("I"):
        # 16-bit (or 32-bit integer) greyscale: scale 0..65535 to 0..255 rather than clipping
        arr = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16") or arr.max() > 255:
            arr = arr / 257.0
            notes.append(f"scaled from 16-bit ({img.mode}) to 8-bit greyscale")
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if not has_alpha:
        if img.mode != "L":
            notes.append(f"converted from {img.mode} to greyscale")
            img = img.convert("L")
        return np.asarray(img, dtype=np.uint8)

    rgba = img.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.uint8)
    grey = np.asarray(rgba.convert("L"), dtype=np.float32)
    if alpha.min() == 255:
        notes.append(f"converted from {img.mode} to greyscale (alpha fully opaque, ignored)")
        return grey.astype(np.uint8)

    flat = np.rint(grey * (alpha.astype(np.float32) / 255.0)).astype(np.uint8)
    opaque = alpha >= THRESHOLD
    visible = flat >= THRESHOLD
    if opaque.any() and not opaque.all() and visible.sum() < 0.25 * opaque.sum():
        # a dark shape on a transparent background would vanish on black: use its opaque area
        notes.append(
            "the picture is dark on a transparent background, so its opaque area was used as the "
            "shape"
        )
        return np.where(opaque, 255, 0).astype(np.uint8)
    notes.append(f"transparent background composited on black ({img.mode} to greyscale)")
    return flat


def _fit(grey: np.ndarray, notes: list[str]) -> np.ndarray:
    """Fit into 64x64: scale the longest side to 64 (area averaging when shrinking), then pad the
    short side with black. Scaling comes first so that a long thin picture is never padded to a
    huge square in memory."""
    h, w = grey.shape
    side = max(h, w)
    if h != w:
        notes.append(f"padded from {w}x{h} to {side}x{side} with black")
    if side != SIZE:
        nw, nh = max(1, round(w * SIZE / side)), max(1, round(h * SIZE / side))
        resample = Image.Resampling.BOX if side > SIZE else Image.Resampling.NEAREST
        grey = np.asarray(Image.fromarray(grey).resize((nw, nh), resample=resample), np.uint8)
        notes.append(f"resized from {side}x{side} to {SIZE}x{SIZE}")
    h, w = grey.shape
    if (h, w) != (SIZE, SIZE):
        square = np.zeros((SIZE, SIZE), dtype=np.uint8)
        top, left = (SIZE - h) // 2, (SIZE - w) // 2
        square[top : top + h, left : left + w] = grey
        grey = square
    return grey


def prepare_upload(image) -> tuple[np.ndarray, list[str]]:
    """Make a 64x64 binary object image out of an arbitrary picture.

    Args:
        image: a PIL image, a file path, raw file bytes, or an array (H, W), (H, W, 3) or
            (H, W, 4) of uint8 0..255, bool, or float in [0, 1]. A 2-d uint8/bool array already
            in {0, 1} is taken as a finished mask.
    Returns:
        (pixels, notes): pixels (64, 64) uint8 in {0, 1}; notes, one sentence per change made
        (alpha composited, converted to greyscale, padded, resized, thresholded, inverted, first
        frame taken) and a warning when nothing is left. Empty for an image that was already a
        64x64 black-and-white object.
    Raises:
        UploadError (a ValueError) with a message for the user: not an image, too small, too
        large, an unsupported array.
    """
    if image is None:
        raise UploadError("no image given")
    notes: list[str] = []

    if isinstance(image, np.ndarray):
        pil, mask = _array_to_pil(image)
        if mask is not None:
            if mask.shape == (SIZE, SIZE):
                return mask.astype(np.uint8), notes
            pil = Image.fromarray(mask * np.uint8(255))
    else:
        pil = _open(image)

    w, h = pil.size
    if w * h > MAX_PIXELS:
        raise _too_large(f"{w}x{h}")
    if min(w, h) < MIN_SIDE:
        raise UploadError(
            f"the image is {w}x{h} pixels, too small to hold an object (at least "
            f"{MIN_SIDE}x{MIN_SIDE} needed)"
        )
    try:
        frames = getattr(pil, "n_frames", 1)
        if frames > 1:
            pil.seek(0)
            notes.append(f"first of {frames} frames used")
        transposed = ImageOps.exif_transpose(pil)
        if transposed is not None and transposed.size != pil.size:
            notes.append("rotated as its EXIF orientation says")
        pil = transposed if transposed is not None else pil
        pil.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UploadError(f"the image could not be decoded ({err})") from err

    grey = _flatten_alpha(pil, notes)
    grey = _fit(grey, notes)

    grey_levels = (grey > 0) & (grey < 255)
    if grey_levels.any():
        notes.append(
            f"thresholded at {THRESHOLD}/255 ({int(grey_levels.sum())} grey pixels made black or "
            "white)"
        )
    pixels = (grey >= THRESHOLD).astype(np.uint8)

    if pixels.mean() > 0.5:
        pixels = 1 - pixels
        notes.append("inverted: the picture was mostly white, and objects are white on black")
    if not pixels.any():
        notes.append("nothing is left after thresholding: the object image is empty")
    return pixels, notes
