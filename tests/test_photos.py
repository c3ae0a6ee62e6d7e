"""Photo intake: every bad kind of upload is refused with a reason, good photos come out clean.

Plain pytest, no database. Every image is made in memory with Pillow.
"""

from __future__ import annotations

import io
import struct
import time
import zlib

import pytest
from PIL import Image, ImageDraw, ImageFilter

from training import photos
from training.photos import (
    MAX_PHOTOS,
    PhotoRejected,
    check_and_prepare,
    face_detection_available,
    prepare_many,
)

RES = 64


def _jpeg(img: Image.Image, **save_args: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **save_args)
    return buf.getvalue()


def _png(img: Image.Image, **save_args: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **save_args)
    return buf.getvalue()


def _photo(size: tuple[int, int] = (120, 90), colour: str = "orange") -> Image.Image:
    img = Image.new("RGB", size, colour)
    ImageDraw.Draw(img).ellipse([10, 10, size[0] - 10, size[1] - 10], fill="navy")
    return img


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR (valid CRC) claims width×height but carries only a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _reason(data: bytes) -> str:
    with pytest.raises(PhotoRejected) as info:
        check_and_prepare(data, resolution=RES)
    return info.value.reason


# --- refused before decoding -------------------------------------------------------------------


def test_zero_bytes_is_rejected_as_empty() -> None:
    assert "empty" in _reason(b"")


def test_text_renamed_jpg_is_rejected_by_content() -> None:
    result = prepare_many([("holiday.jpg", b"just some text, not a photo\n" * 20)], resolution=RES)
    assert result.accepted == []
    [(name, reason)] = result.rejected
    assert name == "holiday.jpg" and "not a JPEG, PNG or WebP" in reason


def test_svg_is_rejected() -> None:
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    assert "not a JPEG, PNG or WebP" in _reason(svg)


def test_heic_is_rejected_with_a_hint_to_export_jpeg() -> None:
    heic_header = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100
    assert "export it as JPEG" in _reason(heic_header)


def test_gif_is_rejected() -> None:
    buf = io.BytesIO()
    _photo().save(buf, "GIF")
    assert "not a JPEG, PNG or WebP" in _reason(buf.getvalue())


def test_file_over_15_mb_is_rejected_before_anything_else() -> None:
    big = b"\xff\xd8\xff\xe0" + b"\x00" * (15 * 1024 * 1024)
    assert "at most 15 MB" in _reason(big)


def test_png_declaring_huge_dimensions_is_rejected_from_the_header() -> None:
    # 8000×6000 = 48 MP declared, a few bytes of pixel data: a decode would fail as "damaged",
    # so the megapixel reason proves only the header was read.
    data = _png_declaring(8000, 6000)
    start = time.perf_counter()
    reason = _reason(data)
    assert "8000×6000" in reason and "40 megapixels" in reason
    assert time.perf_counter() - start < 0.5


def test_png_declaring_bomb_dimensions_is_rejected() -> None:
    # Past Pillow's own bomb limit (~179 MP) open() itself refuses; we turn that into a reason too.
    assert "megapixels" in _reason(_png_declaring(100_000, 100_000))


def test_animated_png_is_rejected() -> None:
    frames = [_photo(colour=c) for c in ("red", "blue")]
    data = _png(frames[0], save_all=True, append_images=frames[1:])
    assert "animated" in _reason(data)


def test_animated_webp_is_rejected() -> None:
    frames = [_photo(colour=c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:])
    assert "animated" in _reason(buf.getvalue())


def test_photo_smaller_than_half_the_resolution_is_rejected() -> None:
    assert "at least 32 pixels" in _reason(_png(_photo(size=(20, 20))))


# --- refused while decoding --------------------------------------------------------------------


def test_truncated_jpeg_is_rejected() -> None:
    data = _jpeg(_photo(size=(300, 200)))
    assert "incomplete or damaged" in _reason(data[: len(data) // 2])


def test_truncated_png_is_rejected() -> None:
    data = _png(Image.effect_noise((200, 200), 60).convert("RGB"))
    assert "incomplete or damaged" in _reason(data[: len(data) // 2])


# --- cleaned and cropped -----------------------------------------------------------------------


def test_good_jpeg_png_and_webp_are_accepted() -> None:
    buf = io.BytesIO()
    _photo().save(buf, "WEBP")
    for data in (_jpeg(_photo()), _png(_photo()), buf.getvalue()):
        prepared = check_and_prepare(data, resolution=RES)
        assert Image.open(io.BytesIO(prepared.crop_bytes)).size == (RES, RES)
        assert Image.open(io.BytesIO(prepared.image_bytes)).format == "JPEG"


def test_exif_gps_and_camera_data_are_dropped() -> None:
    exif = Image.Exif()
    exif[0x010F] = "SpyCam"  # Make
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)}  # GPS IFD
    data = _jpeg(_photo(), exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)  # the fixture really has GPS

    prepared = check_and_prepare(data, resolution=RES)
    for out in (prepared.image_bytes, prepared.crop_bytes):
        cleaned = Image.open(io.BytesIO(out))
        assert not cleaned.getexif()
        assert "exif" not in cleaned.info
        assert b"SpyCam" not in out and b"Exif" not in out


def test_colour_profile_is_applied_and_not_kept() -> None:
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = _jpeg(_photo(), icc_profile=srgb)
    prepared = check_and_prepare(data, resolution=RES)
    for out in (prepared.image_bytes, prepared.crop_bytes):
        assert "icc_profile" not in Image.open(io.BytesIO(out)).info


def test_exif_orientation_is_applied() -> None:
    # Stored 120×60: left half red, right half blue. Orientation 6 means "rotate 90° clockwise
    # to display", so the upright photo is 60×120 with red on top.
    img = Image.new("RGB", (120, 60), "blue")
    img.paste("red", (0, 0, 60, 60))
    exif = Image.Exif()
    exif[0x0112] = 6
    prepared = check_and_prepare(_jpeg(img, exif=exif.tobytes()), resolution=RES)

    upright = Image.open(io.BytesIO(prepared.image_bytes)).convert("RGB")
    assert (prepared.width, prepared.height) == upright.size == (60, 120)
    top, bottom = upright.getpixel((30, 10)), upright.getpixel((30, 110))
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_transparent_png_gets_a_white_background() -> None:
    img = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    prepared = check_and_prepare(_png(img), resolution=RES)
    assert Image.open(io.BytesIO(prepared.crop_bytes)).convert("RGB").getpixel((5, 5)) == (255, 255, 255)


def _three_bands() -> Image.Image:
    """300×100: red, green and blue 100-px squares side by side."""
    img = Image.new("RGB", (300, 100), "red")
    img.paste("lime", (100, 0, 200, 100))
    img.paste("blue", (200, 0, 300, 100))
    return img


def test_no_face_gives_a_centre_crop() -> None:
    prepared = check_and_prepare(_png(_three_bands()), resolution=RES)
    assert not prepared.face_found and prepared.face_box is None
    crop = Image.open(io.BytesIO(prepared.crop_bytes)).convert("RGB")
    assert crop.size == (RES, RES)
    assert crop.getpixel((RES // 2, RES // 2)) == (0, 255, 0)


def test_crop_is_centred_on_the_largest_face(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the detector is patched (opencv 5 ships no Haar cascade, see the next test): the crop
    # logic must move the square onto the largest face and keep it inside the photo.
    monkeypatch.setattr(photos, "detect_faces", lambda img: [(230, 30, 40, 40), (10, 10, 20, 20)])
    prepared = check_and_prepare(_png(_three_bands()), resolution=RES)
    assert prepared.face_found and prepared.face_box == (230, 30, 40, 40)
    crop = Image.open(io.BytesIO(prepared.crop_bytes)).convert("RGB")
    assert crop.getpixel((RES // 2, RES // 2)) == (0, 0, 255)  # the blue square, clamped to the edge


def _drawn_face() -> Image.Image:
    """A 800×400 picture with a simple drawn face on its right half (the cascade finds it)."""
    size = 400
    img = Image.new("RGB", (size * 2, size), (90, 120, 160))
    draw = ImageDraw.Draw(img)
    cx, cy, r = size * 1.5, size / 2, size * 0.3
    draw.ellipse([cx - r, cy - r * 1.3, cx + r, cy + r * 1.3], fill=(224, 180, 150))
    for dx in (-0.4, 0.4):
        ex = cx + dx * r
        draw.ellipse([ex - r * 0.15, cy - r * 0.43, ex + r * 0.15, cy - r * 0.27], fill=(40, 30, 30))
        draw.rectangle([ex - r * 0.22, cy - r * 0.6, ex + r * 0.22, cy - r * 0.55], fill=(60, 40, 30))
    draw.polygon([(cx, cy - r * 0.2), (cx - r * 0.12, cy + r * 0.25), (cx + r * 0.12, cy + r * 0.25)], fill=(190, 140, 120))
    draw.ellipse([cx - r * 0.35, cy + r * 0.5, cx + r * 0.35, cy + r * 0.65], fill=(150, 60, 60))
    return img.filter(ImageFilter.GaussianBlur(2))


@pytest.mark.skipif(
    not face_detection_available(),
    reason="this opencv has no Haar cascades (opencv-python-headless 5.0 dropped them; 4.x ships them)",
)
def test_real_cascade_finds_a_drawn_face_and_centres_the_crop() -> None:
    prepared = check_and_prepare(_jpeg(_drawn_face()), resolution=RES)
    assert prepared.face_found
    left, _, width, _ = prepared.face_box  # type: ignore[misc]
    assert 500 < left + width / 2 < 700  # the face is on the right half, around x = 600


# --- a multi-file upload -----------------------------------------------------------------------


def test_good_files_are_kept_when_others_in_the_upload_are_bad() -> None:
    files = [("a.jpg", _jpeg(_photo())), ("empty.png", b""), ("b.png", _png(_photo()))]
    result = prepare_many(files, resolution=RES)
    assert [name for name, _ in result.accepted] == ["a.jpg", "b.png"]
    assert [name for name, _ in result.rejected] == ["empty.png"]


def test_too_many_files_rejects_only_the_extra_ones() -> None:
    data = _png(_photo())
    result = prepare_many([(f"{i}.png", data) for i in range(5)], resolution=RES, already_stored=MAX_PHOTOS - 3)
    assert len(result.accepted) == 3
    assert [name for name, _ in result.rejected] == ["3.png", "4.png"]
    assert all(f"at most {MAX_PHOTOS} photos" in reason for _, reason in result.rejected)
