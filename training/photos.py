"""Photo intake for subjects: check an upload before decoding it, then clean and crop it.

No Django here: the web layer hands over the uploaded file or bytes and stores what comes back.

Order matters for safety. Everything that can be learnt without decoding pixels (size, type by
content, dimensions from the header, animation) is checked first, so a hostile file never costs a
full decode: the web request runs only these checks (`check_header`); a worker later runs
`check_and_prepare` on the stored bytes, which repeats them. Only then is the image decoded,
EXIF-transposed and re-encoded without metadata (the GPS position and the camera serial go), and a
square crop at the model's resolution is cut, centred on the largest face when opencv's bundled
Haar cascade finds one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, BinaryIO

from PIL import Image, ImageFile, ImageOps

from generation.inputs import clean_rgb, sniff_format

logger = logging.getLogger(__name__)

MIN_PHOTOS = 3
MAX_PHOTOS = 30
MAX_FILE_BYTES = 15 * 1024 * 1024
MAX_PIXELS = 40_000_000
JPEG_QUALITY = 95


class PhotoRejected(ValueError):
    """A photo that cannot be used; `reason` is a sentence to show the person who uploaded it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PreparedPhoto:
    """A cleaned photo: the full image without metadata, and the square training crop.

    `image_bytes` is a JPEG (quality 95) of the whole EXIF-transposed photo, `crop_bytes` a PNG of
    `resolution`×`resolution` pixels. `face_box` is (left, top, width, height) in the full image's
    pixels when a face was found.
    """

    image_bytes: bytes
    image_format: str
    crop_bytes: bytes
    crop_format: str
    width: int
    height: int
    face_found: bool
    face_box: tuple[int, int, int, int] | None


def _open_header(file: BinaryIO, fmt: str) -> Image.Image:
    """Open lazily: Pillow parses the header (size, mode, frame count) and decodes no pixels."""
    try:
        with warnings.catch_warnings():
            # Our own 40 MP limit is stricter than Pillow's bomb warning; don't let it leak to logs.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(file, formats=[fmt])
    except Image.DecompressionBombError:
        # Pillow refuses outright above ~179 MP, before reading any pixel data.
        raise PhotoRejected(
            f"This image declares far more than {MAX_PIXELS // 1_000_000} megapixels; "
            "please upload a smaller photo."
        ) from None
    except Exception:
        raise PhotoRejected(
            f"This file starts like a {fmt} image but its header is damaged; it cannot be read."
        ) from None


@dataclass(frozen=True)
class PhotoHeader:
    """What a file's first bytes and header say, before any pixel is decoded."""

    format: str
    width: int
    height: int


def _check_size(size: int) -> None:
    if size <= 0:
        raise PhotoRejected("This file is empty.")
    if size > MAX_FILE_BYTES:
        raise PhotoRejected(
            f"This file is {size / 1024 / 1024:.1f} MB; photos can be at most "
            f"{MAX_FILE_BYTES // 1024 // 1024} MB."
        )


def _check_before_decoding(file: BinaryIO, size: int) -> tuple[Image.Image, str]:
    """Run every check that needs no pixel decode on an open file of `size` bytes; return the
    lazily opened image (reading from `file`) and its format."""
    _check_size(size)
    head = file.read(16)
    file.seek(0)
    fmt = sniff_format(head)
    if fmt is None and head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        raise PhotoRejected(
            "This is a HEIC/AVIF photo (the iPhone default), which is not supported; "
            "please export it as JPEG and upload that."
        )
    if fmt is None:
        raise PhotoRejected(
            "This file is not a JPEG, PNG or WebP image (whatever its name says); "
            "please upload a photo in one of those formats."
        )
    img = _open_header(file, fmt)
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise PhotoRejected(
            f"This image is {width}×{height} pixels ({width * height / 1e6:.0f} megapixels); "
            f"photos can be at most {MAX_PIXELS // 1_000_000} megapixels."
        )
    # JPEGs from phones are often MPO (a second, depth or preview frame): that is not animation.
    if fmt in ("PNG", "WEBP") and getattr(img, "is_animated", False):
        raise PhotoRejected("This is an animated image; please upload a still photo.")
    return img, fmt


def _check_min_side(width: int, height: int, resolution: int) -> None:
    if min(width, height) < resolution // 2:
        raise PhotoRejected(
            f"This photo is only {width}×{height} pixels; photos need at least "
            f"{resolution // 2} pixels on each side for this model."
        )


def content_sha256(file) -> str:
    """The hex SHA-256 of an uploaded file's bytes (a Django UploadedFile), read in chunks: what tells
    the same photo uploaded again from a new one. The file is left at its start; nothing is decoded."""
    digest = hashlib.sha256()
    for chunk in file.chunks():
        digest.update(chunk)
    file.seek(0)
    return digest.hexdigest()


def check_header(file: BinaryIO, *, size: int, resolution: int) -> PhotoHeader:
    """Judge an upload from its size, first bytes and header alone, without decoding a pixel.

    `file` is the open upload (it is rewound afterwards), `size` its length in bytes and
    `resolution` the model's training size in pixels. Costs a few kilobytes of reading whatever
    the file declares, so it is safe to run in a web request; `check_and_prepare` repeats these
    checks before it decodes. Raises `PhotoRejected` with a readable reason.
    """
    try:
        img, fmt = _check_before_decoding(file, size)
        width, height = img.size
    finally:
        file.seek(0)
    _check_min_side(width, height, resolution)
    return PhotoHeader(format=fmt, width=width, height=height)


def _decode(img: Image.Image) -> Image.Image:
    """Decode every pixel, refusing truncated files, and return an upright RGB image without metadata."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone flipped Pillow's global switch; a half-grey photo must still not get through.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must be False for photo intake")
    try:
        img.load()
        upright = ImageOps.exif_transpose(img)
    except Exception:
        raise PhotoRejected(
            "This image file is incomplete or damaged (perhaps the upload was cut short); "
            "please upload it again."
        ) from None
    return clean_rgb(upright)  # on white, through its colour profile to sRGB, without metadata


@lru_cache(maxsize=1)
def _face_cascade() -> Any | None:
    """opencv's bundled frontal-face Haar cascade (ships in the wheel, no download), or None.

    opencv-python 4.x ships `CascadeClassifier` and the XML files; 5.0 moved them out of the main
    package, so there we fall back to centre crops and say so once in the log.
    """
    try:
        import cv2
    except ImportError:
        logger.warning("opencv is not installed: photos get centre crops, no face detection")
        return None
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    if not hasattr(cv2, "CascadeClassifier") or not os.path.exists(path):
        logger.warning(
            "opencv %s has no Haar cascades (opencv-python-headless 4.x ships them): "
            "photos get centre crops, no face detection",
            cv2.__version__,
        )
        return None
    cascade = cv2.CascadeClassifier(path)
    return None if cascade.empty() else cascade


def face_detection_available() -> bool:
    """True when crops can be centred on faces (opencv with its Haar cascades is importable)."""
    return _face_cascade() is not None


def detect_faces(img: Image.Image) -> list[tuple[int, int, int, int]]:
    """Faces in an RGB image as (left, top, width, height) boxes in its pixels, largest first.

    Detection runs on a grayscale copy at most 640 px on its longer side (the cascade is
    scale-invariant and this keeps a 40 MP photo cheap); boxes are scaled back. Returns [] when
    no detector is available.
    """
    cascade = _face_cascade()
    if cascade is None:
        return []
    import cv2
    import numpy as np

    scale = min(1.0, 640 / max(img.size))
    small = img if scale == 1.0 else img.resize(
        (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR
    )
    gray = cv2.equalizeHist(np.asarray(small.convert("L")))
    min_side = max(24, min(gray.shape) // 10)
    found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    boxes = [tuple(int(round(v / scale)) for v in box) for box in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)  # type: ignore[return-value]


def square_crop_box(
    width: int, height: int, centre: tuple[float, float] | None
) -> tuple[int, int, int, int]:
    """The largest square inside width×height, centred on `centre` (or the middle) and kept inside.

    Returns a (left, top, right, bottom) box for `Image.crop`.
    """
    side = min(width, height)
    cx, cy = centre if centre is not None else (width / 2, height / 2)
    left = int(round(min(max(cx - side / 2, 0), width - side)))
    top = int(round(min(max(cy - side / 2, 0), height - side)))
    return left, top, left + side, top + side


def face_centred_crop(clean: Image.Image, resolution: int) -> tuple[Image.Image, tuple[int, int, int, int] | None]:
    """The largest square of a cleaned RGB photo, centred on its largest face when one is found,
    resized to `resolution`² (Lanczos); and the face box (left, top, width, height) or None."""
    faces = detect_faces(clean)
    face_box = faces[0] if faces else None
    centre = None
    if face_box is not None:
        x, y, w, h = face_box
        centre = (x + w / 2, y + h / 2)
    crop = clean.crop(square_crop_box(clean.width, clean.height, centre))
    return crop.resize((resolution, resolution), Image.Resampling.LANCZOS), face_box


def check_and_prepare(data: bytes, *, resolution: int) -> PreparedPhoto:
    """Check one uploaded file and return it cleaned, with its square training crop.

    `data` is the raw upload; `resolution` the model's training size in pixels (64 for the demo
    model, 512 for SD 1.5). Raises `PhotoRejected` with a readable reason for any bad file.
    """
    img, _ = _check_before_decoding(io.BytesIO(data), len(data))
    _check_min_side(img.width, img.height, resolution)
    clean = _decode(img)
    crop, face_box = face_centred_crop(clean, resolution)

    full = io.BytesIO()
    clean.save(full, "JPEG", quality=JPEG_QUALITY, optimize=True)
    small = io.BytesIO()
    crop.save(small, "PNG", optimize=True)
    return PreparedPhoto(
        image_bytes=full.getvalue(),
        image_format="jpeg",
        crop_bytes=small.getvalue(),
        crop_format="png",
        width=clean.width,
        height=clean.height,
        face_found=face_box is not None,
        face_box=face_box,
    )
