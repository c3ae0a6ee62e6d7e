"""Input images and masks of img2img and inpainting: checks, sizes and decoding (torch-free).

Two halves, as for subject photos (training/photos.py): a web request only judges an upload from its
size, first bytes and header (`check_header`: a few kilobytes read, no pixel decoded, whatever the
file declares); the worker repeats those checks on the stored bytes and only then decodes,
EXIF-transposes and re-encodes the picture without metadata (`decode_input`, `decode_mask`).

Masks follow AUTOMATIC1111's `create_binary_mask`: a mask with transparency is its alpha channel
(painted = opaque = repainted), any other is its grey level; either is then cut at 128, so white
(or painted) pixels are repainted and the rest kept.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, ImageCms, ImageFile, ImageOps

MAX_INPUT_BYTES = 15 * 1024 * 1024  # as subject photos
MAX_INPUT_PIXELS = 40_000_000
MIN_INPUT_SIDE = 8
SIZE_MULTIPLE = 8  # latents are 1/8 of the image for every family offered (validate_size holds sizes to it)

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"))
CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


_ORIENTATION = 0x0112
_QUARTER_TURNS = (5, 6, 7, 8)


class InputRejected(ValueError):
    """An input image or mask that cannot be used; the message is for the person who sent it."""


@dataclass(frozen=True)
class InputHeader:
    format: str  # "PNG" | "JPEG" | "WEBP"
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def sniff_format(head: bytes) -> str | None:
    """"PNG", "JPEG" or "WEBP" from the first bytes (the name and the browser's type are not trusted)."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _open(file: BinaryIO, size: int, what: str) -> tuple[Image.Image, str]:
    """Every check that needs no pixel decode; the lazily opened image (header parsed only)."""
    if size <= 0:
        raise InputRejected(f"The {what} file is empty.")
    if size > MAX_INPUT_BYTES:
        raise InputRejected(f"The {what} is {size / 1024 / 1024:.1f} MB; at most {MAX_INPUT_BYTES // 1024 // 1024} MB.")
    head = file.read(16)
    file.seek(0)
    fmt = sniff_format(head)
    if fmt is None:
        raise InputRejected(f"The {what} is not a PNG, JPEG or WebP image (whatever its name says).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit is stricter
            image = Image.open(file, formats=[fmt])
    except Image.DecompressionBombError:
        raise InputRejected(f"The {what} declares far more than {MAX_INPUT_PIXELS // 1_000_000} megapixels.") from None
    except Exception:  # noqa: BLE001 - any header Pillow cannot parse is a damaged file to the user
        raise InputRejected(f"The {what} starts like a {fmt} image but its header is damaged.") from None
    width, height = image.size
    if width * height > MAX_INPUT_PIXELS:
        raise InputRejected(f"The {what} is {width}×{height} pixels; at most {MAX_INPUT_PIXELS // 1_000_000} megapixels.")
    if min(width, height) < MIN_INPUT_SIDE:
        raise InputRejected(f"The {what} is only {width}×{height} pixels.")
    # JPEGs from phones are often MPO (a second, depth or preview frame): that is not animation.
    if fmt in ("PNG", "WEBP") and getattr(image, "is_animated", False):
        raise InputRejected(f"The {what} is animated; send a still image.")
    return image, fmt


def stored_format(field_file) -> str | None:
    """The format of a stored input or mask (`sniff_format` of its first bytes: a raw upload may be a
    JPEG until the worker has replaced it with the clean PNG)."""
    with field_file.storage.open(field_file.name, "rb") as handle:
        return sniff_format(handle.read(16))


def stored_content_type(field_file) -> str:
    """The content type of a stored input or mask, from its bytes."""
    return CONTENT_TYPES.get(stored_format(field_file) or "", "application/octet-stream")


def check_header(file: BinaryIO, *, size: int, what: str = "input image") -> InputHeader:
    """Judge an upload (an open file of `size` bytes, rewound afterwards) without decoding a pixel.
    Safe in a web request. Raises InputRejected with a readable reason."""
    try:
        image, fmt = _open(file, size, what)
        width, height = image.size
        if fmt == "JPEG" and image.getexif().get(_ORIENTATION) in _QUARTER_TURNS:  # JPEG's EXIF is in its header
            width, height = height, width  # the size it has once turned upright, as browsers show it
        return InputHeader(fmt, width, height)
    finally:
        file.seek(0)


def size_for_input(input_size: tuple[int, int], width: int | None, height: int | None, *, min_size: int, max_size: int) -> tuple[int, int]:
    """The job's size when it has an input: what was asked, else the input's, shrunk (or grown) to fit
    the model's limits keeping its aspect and rounded to SIZE_MULTIPLE. One side given: the other
    follows the input's aspect."""
    in_w, in_h = input_size
    if width is not None and height is not None:
        return width, height
    if width is not None:
        return width, _fit(width * in_h / in_w, min_size, max_size)
    if height is not None:
        return _fit(height * in_w / in_h, min_size, max_size), height
    scale = min(1.0, max_size / max(in_w, in_h))
    scale = max(scale, min_size / min(in_w, in_h)) if min(in_w, in_h) * scale < min_size else scale
    return _fit(in_w * scale, min_size, max_size), _fit(in_h * scale, min_size, max_size)


def round_to_multiple(value: float, multiple: int = SIZE_MULTIPLE) -> int:
    """The nearest multiple (halves up), at least `multiple`."""
    return max(multiple, int(value / multiple + 0.5) * multiple)


def _fit(value: float, low: int, high: int) -> int:
    """`value` rounded to SIZE_MULTIPLE and kept within [low, high] (on multiples inside them)."""
    smallest = -(-low // SIZE_MULTIPLE) * SIZE_MULTIPLE
    return min(max(round_to_multiple(value), smallest), high - high % SIZE_MULTIPLE)


def hires_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The hires pass's size: A1111's int(side × scale), rounded to SIZE_MULTIPLE (latents need it)."""
    return round_to_multiple(int(width * scale)), round_to_multiple(int(height * scale))


# --- worker side: decoding -----------------------------------------------------------------------
def decode_input(data: bytes) -> Image.Image:
    """The stored upload checked again, decoded, turned upright (EXIF) and made a clean RGB image
    (`clean_rgb`: no EXIF, GPS, ICC or text chunks follow)."""
    return clean_rgb(_decode(data, "input image"))


def decode_mask(data: bytes) -> Image.Image:
    """The mask as a binary "L" image (255 = repaint, 0 = keep), as A1111's create_binary_mask makes it."""
    image = _decode(data, "mask")
    if has_transparency(image):
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:  # transparency present: what is painted is repainted
            return alpha.point(lambda v: 255 if v > 128 else 0)
    return image.convert("L").point(lambda v: 255 if v > 128 else 0)


def has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def clean_rgb(image: Image.Image) -> Image.Image:
    """A decoded, upright picture as a fresh RGB image without metadata: transparent areas on white
    (not the black a plain convert gives), colours through its embedded ICC profile to sRGB (an odd
    profile is ignored), and no info dict (no EXIF, GPS, XMP, comments or profile follow it).
    Torch-free and Django-free: subject photos (training.photos) are cleaned the same way."""
    icc = image.info.get("icc_profile")
    if has_transparency(image):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    rgb = None
    if icc:
        try:
            base = image if image.mode in ("RGB", "CMYK") else image.convert("RGB")
            rgb = ImageCms.profileToProfile(base, ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # noqa: BLE001 - an odd profile is not worth refusing the picture for
            rgb = None
    clean = Image.new("RGB", image.size)
    clean.paste(rgb or image.convert("RGB"))
    return clean


def _decode(data: bytes, what: str) -> Image.Image:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must be False for input intake")
    image, _ = _open(io.BytesIO(data), len(data), what)
    try:
        image.load()
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a truncated or corrupt file
        raise InputRejected(f"The {what} file is incomplete or damaged; send it again.") from None


def encode_clean_png(image: Image.Image) -> bytes:
    """A decoded input or mask as a PNG without metadata: what is kept once the worker has read it."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
