"""PP-OCRv4's text recogniser out of the pinned rapidocr-onnxruntime wheel, input fixed to 48×320.

Run `python fetch.py` (needs PyPI and scikit-image); how it works: ../common/wheel_models.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "common"))
from wheel_models import WHEELS, fetch, text_line  # noqa: E402


def images(size: tuple[int, int]) -> dict:
    """Two lines of page.png: the title, and the start of the first line of body text."""
    return {"title.png": text_line((0, 8, 200, 40), size), "line.png": text_line((0, 47, 140, 66), size)}


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    fetch(here, WHEELS[here.name], images)
