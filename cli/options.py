"""The options several commands share, declared once. Defaults come from `SolverSettings`, choices
from the library's own tables, so a changed default or a new precision needs no edit here.

Use as `tau: Tau = SOLVER.tau`; `solver_settings(...)` builds the settings the library takes.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from onnx_infodiscard import SolverSettings
from onnx_infodiscard.perturb import MEMORY_FORMATS, PRECISIONS
from onnx_infodiscard.preprocess import PRESETS
from onnx_infodiscard_cli import validate
from onnx_infodiscard_cli.validate import MAX_GRID, MAX_SAMPLES, MAX_SEED, MAX_STEPS

SOLVER = SolverSettings()


def _choices(name: str, values) -> type[Enum]:
    return Enum(name, [(value, value) for value in values], type=str)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Layout(str, Enum):
    nchw = "nchw"
    nhwc = "nhwc"


Precision = _choices("Precision", PRECISIONS)
MemoryFormat = _choices("MemoryFormat", MEMORY_FORMATS)
Preset = _choices("Preset", PRESETS)

Model = Annotated[Path, typer.Argument(help="Path of the .onnx model.", show_default=False)]
Layers = Annotated[
    Optional[list[str]],
    typer.Option(
        "--layer",
        "-l",
        help="Layer name, index, glob or 'auto'; repeatable (default: the card's suggested layers, else auto).",
    ),
]
InputShape = Annotated[
    Optional[str],
    typer.Option(
        "--input-shape", callback=validate.shape, help="Image input dims in the model's order, e.g. 1,3,224,224."
    ),
]
InputName = Annotated[Optional[str], typer.Option("--input", help="Name of the image input (graphs with several).")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON to stdout.")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder (written atomically).")]


def _checked_number(kind: type, what: str, low: float, high: float | None = None, *, help: str, **option) -> object:
    """An option of type `kind` refused outside [low, high] (`what`: the range, as errors say it)."""
    low_open = option.pop("low_open", False)
    decls = option.pop("decls", ())
    callback = validate.number(what, low, high, low_open=low_open)
    return Annotated[kind, typer.Option(*decls, callback=callback, help=help, **option)]


Tau = _checked_number(
    float,
    f"a finite distortion budget > 0 (default {SOLVER.tau})",
    0,
    low_open=True,
    help="Distortion budget D/(N·Var f), the same for every layer and model.",
)
Steps = _checked_number(
    int, f"1 to {MAX_STEPS} optimisation steps (default {SOLVER.steps})", 1, MAX_STEPS, help="Adam steps on log σ."
)
Samples = _checked_number(
    int,
    f"1 to {MAX_SAMPLES} noise samples (default {SOLVER.samples})",
    1,
    MAX_SAMPLES,
    help="Noise samples per image and layer per step.",
)
Grid = _checked_number(
    Optional[int],
    f"a grid size from 1 to {MAX_GRID}, e.g. 16",
    1,
    MAX_GRID,
    help="σ on a GRID×GRID lattice (default: one σ per pixel).",
)
SigmaMax = _checked_number(
    float,
    f"a finite σ > 0 (default {SOLVER.sigma_max}, the full pixel range)",
    0,
    low_open=True,
    decls=("--sigma-max",),
    help="Largest σ, canonical units (1 = full pixel range).",
)
Seed = _checked_number(
    int, f"a seed from 0 to {MAX_SEED}", 0, MAX_SEED, help="Seed of the noise; same seed, same numbers."
)
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where the model runs (auto: cuda when torch sees one).")]
PrecisionOpt = Annotated[
    Precision, typer.Option("--precision", help="Autocast of the optimisation steps (D/τ is always measured in fp32).")
]
MemoryFormatOpt = Annotated[
    MemoryFormat,
    typer.Option(
        "--memory-format", help="Layout of 4-D activations (auto: channels_last on CUDA). Same answers, other speed."
    ),
]

Fg = Annotated[
    Optional[str],
    typer.Option("--fg", callback=validate.box, help="Foreground box x0,y0,x1,y1 in image pixels, or 'center'."),
]
FgMask = Annotated[Optional[Path], typer.Option("--fg-mask", help="Foreground mask image (non-zero = object).")]
FgBoxes = Annotated[Optional[Path], typer.Option("--fg-boxes", help="CSV with columns file,x0,y0,x1,y1.")]
FailIf = Annotated[
    Optional[list[str]],
    typer.Option(
        "--fail-if",
        help="Audit rule METRIC\\[LAYER] OP NUMBER, e.g. 'cid\\[-1] > 1.2' (metric: cid, delta_cid, "
        "concentration, ru; layer: name or index among the chosen layers); exit 1 if any holds. "
        "Repeatable.",
    ),
]


NoCache = Annotated[
    bool,
    typer.Option(
        "--no-cache",
        help="Neither read nor write the row cache (~/.cache/onnx-infodiscard/rows, or $INFODISCARD_CACHE).",
    ),
]
Ray = Annotated[
    Optional[str],
    typer.Option(
        "--ray",
        help="Solve the rows on Ray: 'auto' (a running cluster, else a local one) or a cluster address "
        "(pip install 'onnx-infodiscard\\[ray]').",
    ),
]
MaxMemory = Annotated[
    Optional[str],
    typer.Option(
        "--max-memory",
        callback=validate.memory,
        help="Memory budget of the solve, e.g. 4GB (default: half of what the process may use, CPU or GPU).",
    ),
]
NewSubfolder = Annotated[
    bool,
    typer.Option(
        "--new-subfolder",
        help="When --out holds files this tool did not write, ask for a new subfolder inside it instead of refusing.",
    ),
]


def row_cache(no_cache: bool):
    """The row cache of this run (None with --no-cache), checked writable before any work."""
    from onnx_infodiscard.rowcache import RowCache

    return None if no_cache else RowCache()


def solver_settings(**values) -> SolverSettings:
    """`SolverSettings` from option values (Enum choices as their strings), validated."""
    settings = SolverSettings(**{k: v.value if isinstance(v, Enum) else v for k, v in values.items()})
    settings.validate()
    return settings


def choice(value: Enum | str | None) -> str | None:
    """An Enum option's string, as the library takes it."""
    return value.value if isinstance(value, Enum) else value
