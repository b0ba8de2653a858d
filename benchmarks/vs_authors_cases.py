"""The models and images `bench_vs_authors.py` runs on: the shipped digits CNN with its card, and
torchvision's VGG16 / ResNet50 exported to ONNX, on real photos.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image

from onnx_infodiscard.images import find_images, load_images
from onnx_infodiscard.preprocess import PRESETS, Preprocessing, canonical_shape, read_card, resolve_preprocessing

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "models" / "digits_cnn" / "digits_cnn.onnx"
MODELS = ("digits", "vgg16", "resnet50")


@dataclass
class Case:
    name: str
    path: Path
    layers: list[str]
    preprocessing: Preprocessing
    images: torch.Tensor  # (n, C, H, W) canonical, on the CPU
    image_names: list[str]
    notes: list[str] = field(default_factory=list)


def digits_case(n_images: int) -> Case:
    """The shipped model, its card's preprocessing and suggested layers, its first images by name."""
    proto = onnx.load(str(DIGITS), load_external_data=False)
    card = read_card(DIGITS, proto)
    dims = [
        d.dim_value for d in next(i for i in proto.graph.input if i.name == card["input"]).type.tensor_type.shape.dim
    ]
    shape = (1, *dims[1:])
    preprocessing = resolve_preprocessing(card, shape)
    files = find_images([DIGITS.parent / card["images"]])[:n_images]
    canonical = load_images(files, canonical_shape(shape, preprocessing.layout))
    images = torch.from_numpy(np.stack([c.pixels for c in canonical]))
    return Case(
        "digits_cnn", DIGITS, list(card["suggested_layers"]), preprocessing, images, [c.name for c in canonical]
    )


def torchvision_case(name: str, folder: Path, n_images: int, size: int) -> Case:
    """A torchvision architecture with random weights (seeded), exported to ONNX (opset 17, legacy
    exporter, dynamic batch), and the layers by their ONNX tensor names: VGG-16's five max-pool
    outputs, ResNet-50's four stage outputs (the last tensor of each `/layerK/` block)."""
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    path = folder / f"{name}_random_{size}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            torch.zeros(1, 3, size, size),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )
    del model
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    if name == "vgg16":
        layers = [n.output[0] for n in nodes if n.op_type == "MaxPool"]
    else:
        layers = [[n.output[0] for n in nodes if n.output[0].startswith(f"/layer{k}/")][-1] for k in range(1, 5)]
    images, names, source = real_images(n_images, size)
    label = name if size == 224 else f"{name}-{size}px"
    return Case(label, path, layers, PRESETS["imagenet"], images, names, [f"images: {source}"])


def real_images(n: int, size: int) -> tuple[torch.Tensor, list[str], str]:
    """scikit-learn's two bundled photographs (china, flower) and, beyond two, deterministic crops of
    them (left, right, centre halves), resized bilinearly to size×size; a synthetic image without sklearn."""
    try:
        from sklearn.datasets import load_sample_images

        photos = load_sample_images()
        sources = [(Path(f).stem, img) for f, img in zip(photos.filenames, photos.images)]
        what = "sklearn load_sample_images (china.jpg, flower.jpg) and crops of them"
    except Exception:  # no sklearn: a deterministic synthetic scene
        yy, xx = np.mgrid[0:427, 0:640] / 427.0
        synthetic = np.stack(
            [np.sin(6 * xx) * 0.5 + 0.5, (xx * yy) % 1.0, ((xx - 0.7) ** 2 + (yy - 0.5) ** 2 < 0.1) * 1.0], -1
        )
        sources = [("synthetic", (synthetic * 255).astype(np.uint8))]
        what = "a deterministic synthetic image and crops of it (sklearn not installed)"
    crops = [
        ("full", lambda a: a),
        ("left", lambda a: a[:, : a.shape[1] // 2]),
        ("right", lambda a: a[:, a.shape[1] // 2 :]),
        ("centre", lambda a: a[a.shape[0] // 4 : 3 * a.shape[0] // 4, a.shape[1] // 4 : 3 * a.shape[1] // 4]),
    ]
    out, names = [], []
    for crop_name, crop in crops:
        for stem, array in sources:
            if len(out) == n:
                break
            resized = Image.fromarray(np.ascontiguousarray(crop(array))).resize((size, size), Image.Resampling.BILINEAR)
            out.append(np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0)
            names.append(f"{stem}_{crop_name}")
    while len(out) < n:  # more images than crops: cycle with a horizontal flip
        out.append(out[len(out) % len(sources)][:, :, ::-1].copy())
        names.append(names[len(names) % len(sources)] + f"_flip{len(out)}")
    return torch.from_numpy(np.stack(out)), names, what
