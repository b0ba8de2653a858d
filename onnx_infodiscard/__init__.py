"""onnx-infodiscard: how much of an image's information each layer of an ONNX model discards."""

from .analysis import analyze
from .check import PreparedModel, open_model, prepare
from .errors import ConversionError, InfodiscardError, InputError
from .foreground import Foreground
from .layers import Layer, list_layers, select_layers
from .load import LoadedModel, load_model
from .localize import Localization, localize
from .output.analysis import write_report
from .output.localization import write_localization
from .perturb import SolverSettings
from .results import LayerResult, Report
from .session import Session, open_session

__version__ = "0.1.0"

__all__ = [
    "Foreground",
    "Session",
    "open_session",
    "LayerResult",
    "Report",
    "SolverSettings",
    "analyze",
    "write_report",
    "Localization",
    "localize",
    "write_localization",
    "ConversionError",
    "InfodiscardError",
    "InputError",
    "Layer",
    "LoadedModel",
    "PreparedModel",
    "list_layers",
    "load_model",
    "open_model",
    "prepare",
    "select_layers",
    "__version__",
]
