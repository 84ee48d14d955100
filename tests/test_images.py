"""engine.images: every refusal is an ImageError with a readable sentence; every accepted file
comes back as upright 8-bit RGB; samples load; the tensor helpers stay on the 8-bit grid."""

from __future__ import annotations

import io
import struct
import warnings
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from engine import images
from engine.errors import GlassboxError, ImageError
from engine.images import (decode_image, fit_square, image_digest, list_samples, load_sample,
                           quantize, sample_bytes, to_png_bytes, to_tensor, to_uint8)

RNG = np.random.default_rng(0)


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise_image(width: int = 64, height: int = 48) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_claiming_size(width: int, height: int) -> bytes:
    """A real 16 x 16 PNG whose IHDR (with a correct CRC) claims another size."""
    data = bytearray(encode(Image.new("L", (16, 16))))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def refusal(data: bytes, **limits) -> str:
    with pytest.raises(ImageError) as caught:
        decode_image(data, **limits)
    assert isinstance(caught.value, GlassboxError)
    message = str(caught.value)
    assert message[0].isupper() and message.endswith("."), message
    assert "Traceback" not in message and "PIL" not in message
    return message


def as_array(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


# --------------------------------------------------------------------------- refusals

def test_empty_file_is_refused():
    assert "empty" in refusal(b"")


def test_text_is_not_an_image():
    message = refusal(b"Hello, this is my homework essay, not a picture.\n" * 20)
    assert "not an image" in message
    assert "PNG, JPEG, WebP, GIF, BMP or TIFF" in message


def test_zip_and_pdf_are_not_images():
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("cat.png", encode(noise_image()))
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    for data in (archive.getvalue(), pdf):
        assert "PNG, JPEG, WebP, GIF, BMP or TIFF" in refusal(data)


def test_valid_image_in_another_format_is_refused_by_name():
    for fmt in ("ICO", "TGA", "PPM"):
        data = encode(noise_image(32, 32), fmt)
        assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself could read it
        message = refusal(data)
        assert f"{fmt} format" in message and "PNG, JPEG, WebP, GIF, BMP or TIFF" in message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_damaged(fmt):
    data = encode(noise_image(128, 128), fmt)
    Image.open(io.BytesIO(data[: len(data) // 2]))  # the header alone still parses
    assert "damaged or incomplete" in refusal(data[: len(data) // 2])


def test_too_many_bytes():
    data = encode(noise_image())
    message = refusal(data, max_bytes=1000)
    assert f"{len(data) / 1024:.0f} kB" in message and "limit is 1000 bytes" in message
    assert decode_image(data, max_bytes=len(data)).size == (64, 48)


def test_pixel_cap_is_checked_from_the_header_before_decoding():
    # The file holds only 16 x 16 pixels of data: reaching load() would say "damaged" instead.
    message = refusal(png_claiming_size(8000, 6000))
    assert "8000 × 6000 pixels" in message and "limit is 40 megapixels" in message
    assert "resize" in message


def test_pixel_cap_is_a_parameter():
    data = encode(noise_image(300, 200))
    assert "300 × 200 pixels; the limit is 0.05 megapixels" in refusal(data, max_pixels=50_000)
    assert decode_image(data, max_pixels=60_000).size == (300, 200)


def test_pillow_decompression_bomb_error_becomes_image_error():
    # 20000 x 20000 is over twice Pillow's own limit: Pillow raises during Image.open.
    message = refusal(png_claiming_size(20000, 20000))
    assert "about 400 megapixels" in message and "limit is 40 megapixels" in message


def test_pillow_decompression_bomb_warning_becomes_image_error_without_leaking_filters():
    filters_before = list(warnings.filters)
    limit_before = Image.MAX_IMAGE_PIXELS
    # 10000 x 10000 is between Pillow's warning and error thresholds; our own cap is set above it.
    message = refusal(png_claiming_size(10000, 10000), max_pixels=10**9)
    assert "about 100 megapixels" in message
    assert warnings.filters == filters_before
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_too_small_image():
    message = refusal(encode(Image.new("RGB", (4, 4))))
    assert "4 × 4 pixels" in message and "at least 8 pixels" in message
    assert "3 × 20 pixels" in refusal(encode(Image.new("RGB", (3, 20))))
    assert decode_image(encode(Image.new("RGB", (8, 8)))).size == (8, 8)


# --------------------------------------------------------------------------- accepted files

def test_rgba_transparency_goes_on_white():
    pixels = np.zeros((10, 10, 4), np.uint8)
    pixels[..., :3] = (10, 20, 30)
    pixels[..., 3] = 255
    pixels[0, 0] = (10, 20, 30, 0)
    pixels[0, 1] = (0, 0, 0, 128)
    out = as_array(decode_image(encode(Image.fromarray(pixels, "RGBA"))))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert np.all(np.abs(out[0, 1].astype(int) - 127) <= 1)  # half-transparent black: grey
    assert tuple(out[5, 5]) == (10, 20, 30)


def test_palette_with_transparent_index_goes_on_white():
    palette_image = Image.new("P", (10, 10), 1)
    palette_image.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    palette_image.putpixel((0, 0), 0)
    for fmt in ("PNG", "GIF"):
        out = as_array(decode_image(encode(palette_image, fmt, transparency=0)))
        assert tuple(out[0, 0]) == (255, 255, 255), fmt
        assert tuple(out[5, 5]) == (200, 0, 0), fmt


def test_la_and_l_and_bilevel():
    la = Image.new("LA", (10, 10), (40, 255))
    la.putpixel((0, 0), (0, 0))
    out = as_array(decode_image(encode(la)))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[5, 5]) == (40, 40, 40)
    gray = np.arange(100, dtype=np.uint8).reshape(10, 10)
    out = as_array(decode_image(encode(Image.fromarray(gray, "L"))))
    assert np.array_equal(out, np.repeat(gray[..., None], 3, axis=2))
    bilevel = Image.new("1", (10, 10), 1)
    assert as_array(decode_image(encode(bilevel))).min() == 255


def test_cmyk_becomes_rgb():
    cmyk = Image.new("CMYK", (10, 10), (0, 255, 255, 0))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))
    out = as_array(decode_image(encode(cmyk, "TIFF")))
    assert tuple(out[5, 5]) == (255, 0, 0) and tuple(out[0, 0]) == (255, 255, 255)
    jpeg = as_array(decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG")))
    assert jpeg[8, 8, 0] > 200 and jpeg[8, 8, 1] < 50


def test_sixteen_bit_grey_is_rescaled_not_white():
    values = np.array([[0, 32768, 65535, 16384]] * 10, dtype=np.uint16).repeat(3, axis=1)
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    for fmt in ("PNG", "TIFF"):
        out = as_array(decode_image(encode(source, fmt)))
        assert out[0, 0, 0] == 0 and out[0, 3, 0] == 128 and out[0, 6, 0] == 255, fmt
        assert out[0, 9, 0] == 64, fmt


def test_sixteen_bit_partial_range_uses_its_own_range():
    # A 12-bit scan stored in 16 bits would be near-black if scaled by 65535.
    values = np.linspace(0, 4095, 12 * 10).astype(np.uint16).reshape(10, 12)
    out = as_array(decode_image(encode(Image.fromarray(values))))
    assert out.min() == 0 and out.max() == 255


def test_float_and_int32_images_are_rescaled():
    floats = np.linspace(-1.0, 1.0, 100, dtype=np.float32).reshape(10, 10)
    out = as_array(decode_image(encode(Image.fromarray(floats, "F"), "TIFF")))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    ints = (np.arange(100, dtype=np.int32).reshape(10, 10) - 50) * 1000
    out = as_array(decode_image(encode(Image.fromarray(ints, "I"), "TIFF")))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert np.all(np.diff(out[..., 0].ravel().astype(int)) >= 0)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 10))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (10, 20)
    pixels = as_array(out).astype(int)
    assert pixels[3, 5, 0] > 200 and pixels[3, 5, 2] < 60  # the left half is now on top
    assert pixels[16, 5, 2] > 200 and pixels[16, 5, 0] < 60


def test_gif_gives_its_first_frame():
    colours = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    frames = [Image.new("RGB", (12, 12), colour) for colour in colours]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert np.all(as_array(decode_image(data)) == (255, 0, 0))


def test_multi_picture_jpeg_gives_its_first_picture():
    frames = [Image.new("RGB", (16, 16), (250, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 250))]
    data = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    out = as_array(decode_image(data)).astype(int)
    assert out[8, 8, 0] > 200 and out[8, 8, 2] < 50


@pytest.mark.parametrize("fmt, params", [("WEBP", {"lossless": True}), ("BMP", {}),
                                         ("TIFF", {}), ("PNG", {})])
def test_lossless_formats_decode_exactly(fmt, params):
    source = noise_image(40, 30)
    out = decode_image(encode(source, fmt, **params))
    assert out.mode == "RGB" and out.size == (40, 30)
    assert np.array_equal(np.asarray(out), np.asarray(source))


def test_jpeg_decodes_close_to_source():
    source = Image.new("RGB", (32, 32), (200, 100, 50))
    out = as_array(decode_image(encode(source, "JPEG", quality=95))).astype(int)
    assert np.abs(out - (200, 100, 50)).max() <= 3


# --------------------------------------------------------------------------- digest and samples

def test_digest_is_sha256_and_sees_one_pixel():
    pixels = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    changed = pixels.copy()
    changed[17, 3, 1] ^= 1
    first, second = encode(Image.fromarray(pixels)), encode(Image.fromarray(changed))
    assert image_digest(first) != image_digest(second)
    assert image_digest(first) == image_digest(bytes(first))
    assert len(image_digest(first)) == 64 and int(image_digest(first), 16) >= 0


def test_samples_are_listed_photos_first():
    assert list_samples() == ["chelsea", "coffee", "astronaut", "rocket", "motorcycle_left",
                              "brick", "grass", "gravel"]
    assert images.SAMPLES_DIR.is_dir()


@pytest.mark.parametrize("name", ["chelsea", "coffee", "astronaut", "rocket", "motorcycle_left",
                                  "brick", "grass", "gravel"])
def test_every_sample_decodes_to_rgb(name):
    image = load_sample(name)
    assert image.mode == "RGB" and min(image.size) >= 256
    assert np.asarray(image).std() > 10  # a real picture, not a blank


def test_unknown_sample_is_refused():
    for name in ("nope", "../engine/images", "chelsea.png", ""):
        with pytest.raises(ImageError, match="There is no sample called .*choose one of .*chelsea"):
            sample_bytes(name)


# --------------------------------------------------------------------------- helpers

def test_tensor_round_trip_is_exact():
    pixels = RNG.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    tensor = to_tensor(pixels)
    assert tensor.shape == (1, 3, 17, 23) and tensor.dtype == torch.float32
    assert tensor.is_contiguous() and 0 <= tensor.min() and tensor.max() <= 1
    assert np.array_equal(to_uint8(tensor), pixels)
    assert np.array_equal(to_uint8(tensor[0]), pixels)
    assert np.array_equal(to_uint8(tensor.numpy()), pixels)
    every_value = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    assert np.array_equal(to_uint8(to_tensor(every_value)), every_value)


def test_tensor_batches():
    batch = RNG.integers(0, 256, (4, 8, 9, 3), dtype=np.uint8)
    tensor = to_tensor(batch)
    assert tensor.shape == (4, 3, 8, 9)
    assert torch.equal(tensor[2], to_tensor(batch[2])[0])
    assert np.array_equal(to_uint8(tensor), batch)


def test_to_tensor_from_pil_and_read_only_arrays_without_warnings():
    image = noise_image(10, 6)
    read_only = np.asarray(image)
    assert not read_only.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_pil, from_array = to_tensor(image), to_tensor(read_only)
    assert torch.equal(from_pil, from_array) and from_pil.shape == (1, 3, 6, 10)
    from_array.add_(0)  # writable


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tensor_round_trip_on_cuda():
    pixels = RNG.integers(0, 256, (3, 12, 10, 3), dtype=np.uint8)
    tensor = to_tensor(pixels, device="cuda")
    assert tensor.device.type == "cuda" and tensor.shape == (3, 3, 12, 10)
    assert torch.equal(tensor.cpu(), to_tensor(pixels))
    assert np.array_equal(to_uint8(tensor), pixels)
    assert torch.equal(quantize(tensor * 1.001).cpu(), quantize(to_tensor(pixels) * 1.001))


def test_to_tensor_rejects_wrong_input():
    with pytest.raises(TypeError):
        to_tensor(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        to_tensor(np.zeros((4, 4), np.uint8))


def test_to_uint8_clips_and_rounds():
    x = torch.tensor([1.7, -0.3, 0.2, 0.5, 1 / 255 * 0.49, float("nan")]).reshape(1, 3, 1, 2)
    out = to_uint8(x)
    assert out.shape == (1, 2, 3) and out.dtype == np.uint8
    assert out.transpose(2, 0, 1).ravel().tolist() == [255, 0, 51, 128, 0, 0]


def test_to_uint8_leaves_a_graph_alone():
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    out = to_uint8(x * 1.0)
    assert out.shape == (4, 4, 3) and x.grad is None


def test_quantize_snaps_to_the_8_bit_grid():
    x = torch.rand(2, 3, 16, 16) * 1.4 - 0.2
    snapped = quantize(x)
    scaled = snapped * 255
    assert torch.equal(scaled, torch.round(scaled))
    assert snapped.min() >= 0 and snapped.max() <= 1
    assert (snapped - x.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-7
    assert torch.equal(snapped, to_tensor(to_uint8(x)))
    assert torch.equal(quantize(snapped), snapped)


def test_fit_square_keeps_the_centre():
    tall = np.zeros((600, 300, 3), np.uint8)
    tall[:150] = (255, 0, 0)
    tall[150:450] = (0, 255, 0)
    tall[450:] = (0, 0, 255)
    square = fit_square(Image.fromarray(tall), 100)
    assert square.shape == (100, 100, 3) and square.dtype == np.uint8
    assert np.all(square[3:-3, :, 1] >= 250) and square[3:-3, :, [0, 2]].max() <= 5
    wide = fit_square(Image.fromarray(np.ascontiguousarray(tall.transpose(1, 0, 2))), 224)
    assert wide.shape == (224, 224, 3)
    assert np.all(wide[:, 5:-5, 1] >= 250)


def test_fit_square_upsamples_small_images():
    small = noise_image(50, 40)
    assert fit_square(small, 224).shape == (224, 224, 3)
    assert fit_square(np.asarray(small), 40).shape == (40, 40, 3)


def test_png_bytes_are_lossless():
    pixels = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    data = to_png_bytes(pixels)
    assert data.startswith(b"\x89PNG")
    assert np.array_equal(np.asarray(decode_image(data)), pixels)
    with pytest.raises(TypeError):
        to_png_bytes(pixels.astype(np.float32))
