"""The cluttered-digits scenes: one MNIST digit pasted at a known box on a full-contrast photo crop,
with distractor strokes, and the model-free controls that must fail on them (issue #7).

Pure numpy/PIL/scikit-image; `build.py` trains and exports the model on these scenes and writes the
benchmark, `models/studies/build.py` trains its zoo on them. Not part of the installed package.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent

SIZE = 64  # image side, pixels
DIGIT_SIZES = (26, 38)  # the 28x28 MNIST frame is rescaled to this many pixels (inclusive range)
N_DISTRACTORS = (2, 4)  # inclusive range
BOX_THRESHOLD = 0.2  # digit box: alpha > 0.2 * max alpha
CROP_SIZES = (80, 256)  # square photo crops, rescaled to SIZE
MIN_CROP_STD = 0.08  # reject near-flat crops (before stretching), so the digit is never the only texture
MIN_INK_CONTRAST = 0.4  # a stroke pixel is visible if |ink - background| >= this
VISIBLE_FRACTION = 0.9  # ... and a stroke is visible if this fraction of its core pixels are
PLACE_TRIES = 30
STRETCH_PERCENTILES = (5.0, 95.0)  # full-contrast stretch of each crop (5 % of pixels end at 0, 5 % at 1)
GAMMA_LOG = 0.5  # training only: a random gamma in [exp(-0.5), exp(0.5)] after the stretch

# Disjoint photo sets. skimage.data.cat() is the chelsea photo, so it is not used at all.
TRAIN_PHOTOS = (
    "camera",
    "astronaut",
    "coffee",
    "rocket",
    "grass",
    "page",
    "brick",
    "coins",
    "cell",
    "chelsea",
    "immunohistochemistry",
    "hubble_deep_field",
    "moon",
    "clock",
    "retina",
)
TEST_PHOTOS = ("stereo_motorcycle", "gravel", "text")


def load_photos(names: tuple[str, ...]) -> list[np.ndarray]:
    """The named skimage.data photos as float grayscale in [0, 1]."""
    import skimage.data
    from skimage.color import rgb2gray

    photos = []
    for name in names:
        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity); the left view
            img = img[0]
        if img.ndim == 3:
            img = rgb2gray(img[..., :3])
        else:
            img = img.astype(np.float64) / 255.0
        photos.append(img.astype(np.float32))
    return photos


def resize(a: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))


def background(photos: list[np.ndarray], rng: np.random.RandomState, gamma: bool = False) -> np.ndarray:
    """A random square crop of a random photo, rescaled to SIZE and stretched to full contrast.

    Every crop is flipped/rotated at random and is the photo's negative half of the time; `gamma`
    (training only) adds a random gamma after the stretch."""
    while True:
        photo = photos[rng.randint(len(photos))]
        h, w = photo.shape
        side = rng.randint(CROP_SIZES[0], min(CROP_SIZES[1], h, w) + 1)
        y, x = rng.randint(h - side + 1), rng.randint(w - side + 1)
        crop = np.rot90(photo[y : y + side, x : x + side], rng.randint(4))  # one of the 8 flips/rotations
        if rng.rand() < 0.5:
            crop = crop[:, ::-1]
        crop = resize(crop, SIZE, SIZE)
        if rng.rand() < 0.5:
            crop = 1.0 - crop  # the photo's negative: both polarities of clutter
        if crop.std() < MIN_CROP_STD:
            continue
        lo, hi = np.percentile(crop, STRETCH_PERCENTILES)
        if hi - lo < 1e-3:
            continue
        crop = np.clip((crop - lo) / (hi - lo), 0.0, 1.0)
        if gamma:
            crop = crop ** np.exp(rng.uniform(-GAMMA_LOG, GAMMA_LOG))
        crop = crop.astype(np.float32)
        return crop


def scaled(frame: np.ndarray, side: int) -> np.ndarray:
    """A 28x28 alpha frame rescaled to side x side, cropped to its nonzero pixels."""
    a = np.clip(resize(frame, side, side), 0.0, 1.0)
    rows = np.flatnonzero(a.max(axis=1) > 0.01)
    cols = np.flatnonzero(a.max(axis=0) > 0.01)
    return a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def ink_box(alpha: np.ndarray, threshold: float = BOX_THRESHOLD) -> tuple[int, int, int, int]:
    mask = alpha > threshold * alpha.max()
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def fragment(digit_u8: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """A piece of an MNIST digit: the part beyond a random line through (or just past) its ink centroid."""
    a = digit_u8.astype(np.float32) / 255.0
    ys, xs = np.nonzero(a > 0.2)
    cy, cx = ys.mean(), xs.mean()
    theta = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(0.0, 3.0)  # the kept side is the smaller one: under half the digit
    yy, xx = np.mgrid[:28, :28]
    side = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta) - offset
    keep = np.clip(side + 0.5, 0.0, 1.0)  # one-pixel soft cut
    return a * keep


def curve(rng: np.random.RandomState) -> np.ndarray:
    """A short random pen stroke (cubic Bezier), drawn in a 28x28 frame with an MNIST-like stroke profile.

    Its control points span 8-16 px of the frame, where a digit is about 20 px tall: a curl or a
    dash, not a digit.
    """
    from scipy import ndimage

    extent = rng.uniform(8.0, 16.0)
    pts = 14.0 + rng.uniform(-extent / 2, extent / 2, size=(4, 2))
    t = np.linspace(0, 1, 48)[:, None]
    path = (1 - t) ** 3 * pts[0] + 3 * (1 - t) ** 2 * t * pts[1] + 3 * (1 - t) * t**2 * pts[2] + t**3 * pts[3]
    d = np.sqrt((_GRID[0][..., None] - path[:, 0]) ** 2 + (_GRID[1][..., None] - path[:, 1]) ** 2).min(-1)
    a = np.clip(rng.uniform(1.0, 1.6) + 0.5 - d, 0.0, 1.0)
    a = ndimage.gaussian_filter(a, 0.6)
    return (a / a.max()).astype(np.float32)


_GRID = np.mgrid[:28, :28].astype(np.float32)


def curve_bank(n: int, seed: int) -> np.ndarray:
    """n random pen strokes [n, 28, 28], drawn once (drawing is the slow part of making an image)."""
    rng = np.random.RandomState(seed)
    return np.stack([curve(rng) for _ in range(n)])


def overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int = 1) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def blend(img: np.ndarray, alpha: np.ndarray, y: int, x: int, ink: float) -> None:
    h, w = alpha.shape
    region = img[y : y + h, x : x + w]
    region *= 1.0 - alpha
    region += ink * alpha


class Source:
    """What one split's images are made from: digits to paste, digits to cut up, photos, pen strokes."""

    def __init__(
        self, pool_u8: np.ndarray, photos: list[np.ndarray], curves: np.ndarray, augment: bool = False
    ) -> None:
        self.pool_u8, self.photos, self.curves, self.augment = pool_u8, photos, curves, augment


def visibility(img: np.ndarray, alpha: np.ndarray, y: int, x: int, ink: float) -> float:
    """Fraction of the stroke's core pixels (alpha > 0.5·max) that differ from the background there by
    at least MIN_INK_CONTRAST: a white digit on white paper is invisible and unclassifiable."""
    h, w = alpha.shape
    core = alpha > 0.5 * alpha.max()
    return float((np.abs(img[y : y + h, x : x + w][core] - ink) >= MIN_INK_CONTRAST).mean())


def place(
    img: np.ndarray, alpha: np.ndarray, rng: np.random.RandomState, avoid: tuple[int, int, int, int] | None = None
) -> tuple[int, int, float] | None:
    """A uniformly random position and ink polarity where the stroke is visible (VISIBLE_FRACTION of
    its core pixels contrast with the background), outside `avoid`; the most visible of PLACE_TRIES
    draws if none is. None if every draw hit `avoid`."""
    h, w = alpha.shape
    ex0, ey0, ex1, ey1 = ink_box(alpha, 0.02)
    best, best_score = None, -1.0
    for _ in range(PLACE_TRIES):
        y, x, ink = rng.randint(SIZE - h + 1), rng.randint(SIZE - w + 1), float(rng.randint(2))
        # Nothing of a distractor (alpha > 0.02) may enter the digit box (plus a 1 px margin).
        if avoid is not None and overlaps((x + ex0, y + ey0, x + ex1, y + ey1), avoid):
            continue
        score = visibility(img, alpha, y, x, ink)
        if score >= VISIBLE_FRACTION:
            return y, x, ink
        if score > best_score:
            best, best_score = (y, x, ink), score
    return best


def make_image(
    digit_u8: np.ndarray, src: Source, rng: np.random.RandomState, difficulty: float = 1.0
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One image (float32 [SIZE, SIZE] in [0, 1]) and its digit box.

    The digit is placed first (on the bare background, so that it is visible), then 2-4 distractors
    outside its box by the same visibility rule, then the digit is pasted on top.
    `difficulty` < 1 (a training curriculum only) pulls the background and the distractors towards
    mid-grey; the benchmark and the held-out set use 1, full contrast.
    """
    img = background(src.photos, rng, gamma=src.augment)
    if difficulty < 1.0:
        img = 0.5 + difficulty * (img - 0.5)
    alpha = scaled(digit_u8.astype(np.float32) / 255.0, rng.randint(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1))
    y, x, digit_ink = place(img, alpha, rng)
    bx0, by0, bx1, by1 = ink_box(alpha)
    box = (x + bx0, y + by0, x + bx1, y + by1)

    n = rng.randint(N_DISTRACTORS[0], N_DISTRACTORS[1] + 1)
    for _ in range(n):
        frame = np.zeros(1)
        while frame.max() < 0.5:  # a cut can leave too little ink; draw again
            if rng.rand() < 0.5:
                frame = fragment(src.pool_u8[rng.randint(len(src.pool_u8))], rng)
            else:
                frame = src.curves[rng.randint(len(src.curves))]
        da = scaled(frame, rng.randint(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1))
        spot = place(img, da, rng, avoid=box)
        if spot is not None:
            blend(img, da * min(1.0, difficulty), spot[0], spot[1], spot[2])
    blend(img, alpha, y, x, digit_ink)
    return np.clip(img, 0.0, 1.0), box


def make_set(
    digits_u8: np.ndarray, src: Source, seed: int, difficulty: tuple[float, float] = (1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 [N, SIZE, SIZE] and boxes int [N, 4], one per digit, all from one seed.

    Each image's difficulty is drawn uniformly from the `difficulty` range (training only)."""
    rng = np.random.RandomState(seed)
    imgs = np.empty((len(digits_u8), SIZE, SIZE), np.float32)
    boxes = np.empty((len(digits_u8), 4), np.int64)
    for i, d in enumerate(digits_u8):
        level = difficulty[0] if difficulty[0] == difficulty[1] else rng.uniform(*difficulty)
        imgs[i], boxes[i] = make_image(d, src, rng, level)
    return imgs, boxes


# --------------------------------------------------------------------------------------------------
# Model-free controls (issue #7), scored by the project's rules
# --------------------------------------------------------------------------------------------------


def control_maps(img: np.ndarray) -> dict[str, np.ndarray]:
    from scipy import ndimage

    x = img.astype(np.float64)
    mean = ndimage.uniform_filter(x, 5)
    local_std = np.sqrt(np.maximum(ndimage.uniform_filter(x * x, 5) - mean * mean, 0.0))
    yy, xx = np.mgrid[: x.shape[0], : x.shape[1]]
    sigma = x.shape[0] / 4
    c = (x.shape[0] - 1) / 2
    return {
        "brightness": x,
        "inverted brightness": 1.0 - x,
        "local contrast (5x5 std)": local_std,
        "edge magnitude (Sobel)": np.hypot(ndimage.sobel(x, 0), ndimage.sobel(x, 1)),
        "centred Gaussian prior": np.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (2 * sigma**2)),
    }


def control_scores(imgs: np.ndarray, boxes: np.ndarray) -> dict[str, tuple[float, float]]:
    """Per control: (localisation accuracy at IoU >= 0.5, pointing accuracy)."""
    root = str(HERE.parent.parent)  # the repository root, for running without the package installed
    if root not in sys.path:
        sys.path.insert(0, root)
    from onnx_infodiscard.localization import localized, pointing_hit

    hits: dict[str, list[tuple[bool, bool]]] = {}
    for img, box in zip(imgs, boxes):
        truth = tuple(int(v) for v in box)
        for name, m in control_maps(img).items():
            hits.setdefault(name, []).append((localized(m, truth), pointing_hit(m, truth)))
    return {k: (float(np.mean([h[0] for h in v])), float(np.mean([h[1] for h in v]))) for k, v in hits.items()}
