"""The localisation folder: localization.json, methods.csv, images.csv, maps.npz, localization.png, overlays/."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..localize import IOU_HIT
from . import figures
from .encode import json_text, safe_name, write_csv
from .folders import write_folder

if TYPE_CHECKING:
    from ..localize import Localization

MARKER = "localization.json"
METHOD_COLUMNS = (
    "name",
    "method",
    "control",
    "layer",
    "loc_acc",
    "loc_acc_se",
    "mean_iou",
    "pointing_acc",
    "deletion_auc",
    "best_fraction",
    "loc_acc_best",
)
IMAGE_COLUMNS = (
    "image",
    "target",
    "method",
    "iou",
    "localized",
    "pointing",
    "deletion_auc",
    "x0",
    "y0",
    "x1",
    "y1",
    "true_x0",
    "true_y0",
    "true_x1",
    "true_y1",
)
#: Overlays drawn by default (every image is in the JSON, CSV and maps).
DEFAULT_OVERLAYS = 24


def write_localization(
    result: Localization, out_dir: Path | str, overlays: int = DEFAULT_OVERLAYS, *, new_subfolder: bool = False
) -> Path:
    """localization.json, methods.csv, images.csv, maps.npz, localization.png, overlays/*.png, atomically."""

    def write(folder: Path) -> None:
        (folder / MARKER).write_text(json_text(result.to_json()), encoding="utf-8")
        write_csv(
            folder / "methods.csv",
            METHOD_COLUMNS,
            ([getattr(score, c) for c in METHOD_COLUMNS] for score in result.methods),
        )
        write_csv(folder / "images.csv", IMAGE_COLUMNS, _image_rows(result))
        np.savez_compressed(folder / "maps.npz", **{safe_name(k): v.astype(np.float32) for k, v in result.maps.items()})
        (folder / "localization.png").write_bytes(figures.localization_summary(result))
        if overlays:
            (folder / "overlays").mkdir()
            for i in range(min(overlays, len(result.images))):
                name = f"{i:03d}_{safe_name(Path(result.images[i].image).stem)}.png"
                (folder / "overlays" / name).write_bytes(figures.localization_overlay(result, i))

    return write_folder(out_dir, write, MARKER, new_subfolder=new_subfolder)


def _image_rows(result: Localization):
    for image in result.images:
        for name, box in image.boxes.items():
            iou = image.ious[name]
            yield [
                image.image,
                image.target,
                name,
                iou,
                bool(iou >= IOU_HIT),
                bool(image.pointing[name]),
                image.deletion_auc[name],
                *box,
                *image.truth,
            ]
