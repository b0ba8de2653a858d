"""One encoding of values for every written file: JSON (NaN/inf as null), CSV cells, names, display text.

Every writer uses these, so a boolean reads the same in metrics.csv, comparison.csv and images.csv
(`true`/`false`), a missing or non-finite number is an empty CSV cell and a JSON null, and a float in
a CSV round-trips exactly (`repr`).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

#: The version of every JSON file the tool writes (report.json, comparison.json, localization.json, the
#: `--json` summaries). Bump it when a field changes meaning or disappears.
SCHEMA_VERSION = 1
#: localization.json: 2 added loc_acc_cv, grids and the deletion AUC of the probability itself (#16).
LOCALIZATION_SCHEMA_VERSION = 2


def json_safe(value):
    """JSON-safe: NaN/inf to null, numpy scalars and arrays to Python, tuples and paths to lists/str."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def json_text(data) -> str:
    """Indented JSON text ending in a newline; raises rather than write NaN or Infinity."""
    return json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"


def csv_cell(value) -> str:
    """The one CSV convention: None and non-finite numbers empty, booleans `true`/`false`, floats by `repr`."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        return repr(float(value)) if math.isfinite(value) else ""
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """A UTF-8 CSV file: the header, then every row's cells through `csv_cell`."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow([csv_cell(value) for value in row])


def safe_name(name: str) -> str:
    """A file-name fragment: runs of other characters to `_`, at most 60 characters, never empty."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return safe[:60] or "layer"


def fmt(value, digits: int = 3) -> str:
    """A value for people (HTML cells, figure titles): `–` for None, yes/no, `digits` decimals."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return str(float(value))
        return f"{value:.{digits}f}" if abs(value) >= 10**-digits or value == 0 else f"{value:.2e}"
    return str(value)


def join(value) -> str:
    """A list as `a, b, c` of `fmt` values (a scalar as `fmt`)."""
    if value is None:
        return "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return fmt(value)


def short(text: str, limit: int) -> str:
    """`text` cut to `limit` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
