"""Images and boxes as a user hands them over: full bit depth or a clear refusal, never a hang on a
FIFO, never a traceback on an odd file, one-line errors naming the file."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from onnx_infodiscard.errors import InputError
from onnx_infodiscard.images import find_images, load_image, mask_from_file, parse_box, read_boxes, regular_file

SHAPE = (1, 28, 28)


def _ramp(dtype=np.uint8, top: int = 255) -> np.ndarray:
    return (np.linspace(0, 1, 28 * 28).reshape(28, 28) * top).round().astype(dtype)


def test_a_16_bit_png_is_read_at_full_depth_not_clipped(tmp_path):
    """The same picture as 8-bit and as 16-bit (v * 257) reads as the same canonical image."""
    eight = _ramp()
    Image.fromarray(eight).save(tmp_path / "eight.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    a, b = load_image(tmp_path / "eight.png", SHAPE), load_image(tmp_path / "sixteen.png", SHAPE)
    assert np.abs(a.pixels - b.pixels).max() < 1e-6 and b.pixels.max() == pytest.approx(1.0)


def test_a_16_bit_tiff_keeps_its_fine_steps(tmp_path):
    deep = _ramp(np.uint16, 65535)
    Image.fromarray(deep).save(tmp_path / "deep.tif")
    image = load_image(tmp_path / "deep.tif", SHAPE)
    assert np.allclose(image.pixels[0], deep / 65535.0, atol=1e-6)
    assert len(np.unique(image.pixels)) > 256  # more levels than 8 bits hold


def test_a_16_bit_image_for_a_colour_model_repeats_its_grey(tmp_path):
    Image.fromarray(_ramp(np.uint16, 65535)).save(tmp_path / "deep.png")
    image = load_image(tmp_path / "deep.png", (3, 14, 14))
    assert image.pixels.shape == (3, 14, 14) and image.original_size == (28, 28)
    assert np.array_equal(image.pixels[0], image.pixels[2]) and image.pixels.max() <= 1


def test_a_float_tiff_in_0_1_is_read_as_is_and_out_of_range_refused(tmp_path):
    values = np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(28, 28)
    Image.fromarray(values, mode="F").save(tmp_path / "unit.tif")
    assert np.allclose(load_image(tmp_path / "unit.tif", SHAPE).pixels[0], values, atol=1e-7)
    Image.fromarray(values * 255, mode="F").save(tmp_path / "big.tif")
    with pytest.raises(InputError, match=r"big.tif: float values must lie in \[0, 1\] \(found 0..255\)"):
        load_image(tmp_path / "big.tif", SHAPE)
    Image.fromarray(np.full((28, 28), np.nan, np.float32), mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(InputError, match="must be finite"):
        load_image(tmp_path / "nan.tif", SHAPE)


def test_a_decompression_bomb_is_one_line_naming_file_and_size(tmp_path, monkeypatch):
    Image.new("L", (400, 400)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400 * 400 // 4)  # 4x over: Pillow's error, not its warning
    with pytest.raises(InputError) as err:
        load_image(tmp_path / "huge.png", SHAPE)
    message = str(err.value)
    assert "huge.png: too large to decode safely" in message and "160000 pixels" in message and "\n" not in message


@pytest.mark.parametrize(
    "array, words",
    [
        (np.zeros((0, 0), np.float32), "array of shape (0, 0) has no pixels"),
        (np.zeros((28, 28), np.complex64), "complex values (complex64); give a real array"),
        (np.zeros((28, 28), np.int64), "int64 values; give uint8 (0..255), uint16 (0..65535) or floats in [0, 1]"),
        (np.full((28, 28), 2.0, np.float32), "float32 float values must lie in [0, 1]"),
        (np.full((28, 28), np.inf, np.float64), "must be finite"),
        (np.zeros((2, 2, 2, 2), np.float32), "array of shape (2, 2, 2, 2); give H×W, C×H×W or H×W×C"),
    ],
)
def test_odd_npy_arrays_are_refused_clearly(tmp_path, array, words):
    path = tmp_path / "a.npy"
    np.save(path, array)
    with pytest.raises(InputError) as err:
        load_image(path, SHAPE)
    assert words in str(err.value) and str(err.value).startswith(str(path))


def test_a_uint16_npy_is_scaled_by_65535_and_uint8_by_255(tmp_path):
    np.save(tmp_path / "deep.npy", _ramp(np.uint16, 65535))
    np.save(tmp_path / "flat.npy", _ramp())
    deep, flat = load_image(tmp_path / "deep.npy", SHAPE), load_image(tmp_path / "flat.npy", SHAPE)
    assert deep.pixels.max() == pytest.approx(1.0) and flat.pixels.max() == pytest.approx(1.0)
    assert np.abs(deep.pixels - flat.pixels).max() < 1 / 255


def test_a_fifo_is_refused_and_never_waited_on(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="pipe.png: is a FIFO, not a regular file"):
        find_images([fifo])
    with pytest.raises(InputError, match="is a FIFO"):
        find_images([tmp_path])  # inside a folder too
    with pytest.raises(InputError, match="is a FIFO"):
        read_boxes(fifo)


def test_a_device_and_a_missing_file_are_told_apart():
    with pytest.raises(InputError, match="/dev/zero: is a device or socket, not a regular file"):
        find_images(["/dev/zero"])
    with pytest.raises(InputError, match="no such image file"):
        find_images(["/nonexistent/x.png"])


def test_a_size_limit_applies_before_reading(tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(b"x" * 2048)
    with pytest.raises(InputError, match="over the 0 MiB limit"):
        regular_file(path, "boxes CSV", 1024)
    assert regular_file(path, "boxes CSV", 4096) == path


def test_a_boxes_csv_with_a_byte_order_mark_reads(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_bytes("\ufefffile,x0,y0,x1,y1\nd.png,1,2,10,12\n".encode())
    assert read_boxes(path) == {"d.png": (1, 2, 10, 12)}


def test_two_rows_for_one_file_are_an_error_naming_both(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("file,x0,y0,x1,y1\na.png,0,0,5,5\nb.png,0,0,5,5\na.png,1,1,6,6\n")
    with pytest.raises(InputError, match=r"'a.png' has two boxes, on lines 2 and 4; keep one row per file"):
        read_boxes(path)


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e400", "x"])
def test_a_box_that_is_not_a_finite_number_is_one_line(tmp_path, value):
    path = tmp_path / "boxes.csv"
    path.write_text(f"file,x0,y0,x1,y1\na.png,0,0,{value},5\n")
    with pytest.raises(InputError, match=r"boxes.csv:2: box coordinates must be finite numbers"):
        read_boxes(path)
    with pytest.raises(InputError, match="finite pixel numbers") as err:
        parse_box(f"0,0,{value},5")
    assert err.value.option == "fg"


def test_a_16_bit_mask_marks_its_nonzero_pixels(tmp_path):
    mask = np.zeros((28, 28), np.uint16)
    mask[5:10, 5:10] = 300  # above 255: a clip to 8 bits would keep it, a shift by 8 would lose part
    mask[20, 20] = 1  # below 256: an 8-bit conversion that divides would lose it
    Image.fromarray(mask).save(tmp_path / "mask.png")
    image = load_image(tmp_path / "mask.png", SHAPE)
    assert mask_from_file(tmp_path / "mask.png", image).sum() == 26
