"""PP-OCRv4's text detector out of the pinned rapidocr-onnxruntime wheel, input fixed to 96×192.

Run `python fetch.py` (needs PyPI and scikit-image); how it works: ../common/wheel_models.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "common"))
from wheel_models import WHEELS, fetch, resized, skimage_image  # noqa: E402


def images(size: tuple[int, int]) -> dict:
    """The page of text, and the handwritten formula (text.png) cropped to 2:1, at `size`."""
    page = skimage_image("page.png")
    text = skimage_image("text.png").crop((52, 0, 396, 172))
    return {"page.png": resized(page, size), "text.png": resized(text, size)}


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    fetch(here, WHEELS[here.name], images)
