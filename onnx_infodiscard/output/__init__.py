"""Every file the tool writes: atomic, manifest-checked folders, one JSON/CSV encoding, figures, HTML pages.

- `folders`: `check_output_folder` (up front) and `write_folder` (atomic, never deletes what it did not write)
- `manifest`: the list of files written with each output, which makes replacing it safe
- `encode`: `SCHEMA_VERSION`, JSON and CSV cells, file-name fragments, display text
- `figures`: every plot, as PNG bytes (matplotlib `Figure` on an Agg canvas, no pyplot)
- `html`: the stylesheet and the pieces of the self-contained pages
- `analysis`, `comparison`, `localization`: the writers of `analyze`, `compare` and `localize` results

The writers are imported from their modules (`from onnx_infodiscard.output.analysis import
write_report`); this package imports only the modules that do not depend on the analysis code, so
that `analysis.py` and `localize.py` can import `SCHEMA_VERSION` from here without a cycle.
"""

from .encode import SCHEMA_VERSION, csv_cell, json_safe, json_text
from .folders import check_output_folder, write_folder
from .manifest import MANIFEST

__all__ = ["MANIFEST", "SCHEMA_VERSION", "check_output_folder", "csv_cell", "json_safe", "json_text", "write_folder"]
