"""PP-OCR's text-direction classifier out of the pinned rapidocr-onnxruntime wheel, input fixed to 48×192.

Run `python fetch.py` (needs PyPI and scikit-image); how it works: ../common/wheel_models.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "common"))
from wheel_models import WHEELS, fetch, text_line  # noqa: E402


def images(size: tuple[int, int]) -> dict:
    """The title line of page.png upright, and turned by 180° (the classifier's two classes)."""
    title = text_line((0, 8, 200, 40), size)
    return {"title.png": title, "title_180.png": title.rotate(180)}


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    fetch(here, WHEELS[here.name], images)
