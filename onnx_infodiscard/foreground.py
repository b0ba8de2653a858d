"""Where the object is in each image: a box, a boxes CSV, a mask file, or the central box."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .images import CanonicalImage, box_mask, center_mask, mask_from_file, parse_box, read_boxes


@dataclass(frozen=True)
class Foreground:
    """Where the object is: one of a box (pixels of the file), a boxes CSV, a mask file, or 'center'."""

    box: tuple[int, int, int, int] | None = None
    boxes_csv: Path | None = None
    mask: Path | None = None
    center: bool = False

    def __post_init__(self) -> None:
        given = sum(v is not None for v in (self.box, self.boxes_csv, self.mask)) + bool(self.center)
        if given != 1:
            raise InputError("give exactly one foreground: a box, a boxes CSV, a mask file or center", option="fg")

    @classmethod
    def parse(cls, fg: str | None = None, fg_mask: str | Path | None = None, fg_boxes: str | Path | None = None):
        given = [v for v in (fg, fg_mask, fg_boxes) if v is not None]
        if len(given) > 1:
            raise InputError("give one foreground: --fg, --fg-mask or --fg-boxes")
        if fg is not None:
            return cls(center=True) if fg.strip().lower() in ("center", "centre") else cls(box=parse_box(fg))
        if fg_mask is not None:
            return cls(mask=Path(fg_mask))
        if fg_boxes is not None:
            return cls(boxes_csv=Path(fg_boxes))
        return None

    def describe(self) -> str:
        if self.center:
            return "center (central box, 2/3 of each side)"
        if self.box:
            return "box " + ",".join(map(str, self.box))
        return f"mask {self.mask}" if self.mask else f"boxes {self.boxes_csv}"

    def masks(self, images: Sequence[CanonicalImage]) -> list[np.ndarray | None]:
        if self.center:
            return [center_mask(image) for image in images]
        if self.box:
            return [box_mask(self.box, image) for image in images]
        if self.mask:
            return [mask_from_file(self.mask, image) for image in images]
        boxes = read_boxes(self.boxes_csv)
        if images and not any(image.name in boxes for image in images):
            raise InputError(
                f"{self.boxes_csv}: the boxes CSV has a row for none of the {len(images)} images ("
                + (f"its 'file' column holds e.g. {next(iter(boxes))!r}, " if boxes else "it has no rows, ")
                + f"the images are named e.g. {images[0].name!r}); give one row per image, by its file name",
                option="fg_boxes",
            )
        return [box_mask(boxes[image.name], image) if image.name in boxes else None for image in images]
