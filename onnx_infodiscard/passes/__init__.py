"""Graph normalisation: an ordered list of small passes that make real exports convertible.

Each pass is a function `model -> (model, what_changed | None)`; the list in `passes()` is the
pipeline's documentation. Tensor names of the original graph are kept, so users choose layers by
the names their exporter wrote. One module per family of passes; `proto` holds the helpers they
share and `support` the one question asked of onnx2torch (is there a converter for this op).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx

from .batch import expand_batch_constants, free_batch_dim
from .cleanup import drop_unsupported_attributes, remove_inference_noops
from .constants import constants_to_initializers, fold_constants
from .inputs import (
    check_finite_weights,
    check_memory,
    drop_initializer_inputs,
    drop_unread_inputs,
    fix_input_shape,
    image_input,
)
from .lowering import explicit_split, lower_gelu
from .opset import convert_opset, lower_ir_version
from .padding import explicit_auto_pad, rewrite_asymmetric_average_pool
from .proto import default_opset, dims, shape_table
from .quantised import dequantise
from .shapes import infer_shapes
from .support import unconvertible_nodes

Pass = Callable[[onnx.ModelProto], "tuple[onnx.ModelProto, str | None]"]


@dataclass(frozen=True)
class PassReport:
    """A pass that changed the graph, and what it changed."""

    name: str
    detail: str


@dataclass(frozen=True)
class NormalisedModel:
    """A graph ready for onnx2torch: one image input with a free batch dim, weights as initializers.

    `source` is the graph as given to `normalise` (not copied; never modified), so a check can
    run the original (for instance quantised) graph in onnxruntime beside the normalised one.
    """

    proto: onnx.ModelProto
    input_name: str
    input_shape: tuple[int, ...]  # the model's own input dims at batch 1, in the model's layout
    passes: tuple[PassReport, ...]
    source: onnx.ModelProto | None = None

    @property
    def opset(self) -> int:
        return default_opset(self.proto)

    @property
    def dequantised(self) -> bool:
        """Whether the graph was quantised and is analysed through its float equivalent."""
        return any(report.name == "dequantise" for report in self.passes)


def normalise(
    model: onnx.ModelProto, input_name: str | None = None, input_shape: Sequence[int] | None = None
) -> NormalisedModel:
    """Run every pass in order on a copy of `model`; report the ones that changed something."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    reports = []
    for step in passes(input_name, input_shape):
        work, detail = step(work)
        if detail:
            reports.append(PassReport(step.__name__, detail))
    name = image_input(work, input_name).name
    shape = tuple(dims(image_input(work, name)))
    check_memory(work, name, shape)
    check_finite_weights(work)
    return NormalisedModel(work, name, (1, *shape[1:]), tuple(reports), source=model)


def passes(input_name: str | None = None, input_shape: Sequence[int] | None = None) -> list[Pass]:
    """The pipeline, in the order the fixes have to run."""

    def fix_input_shape_pass(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
        return fix_input_shape(model, input_name, input_shape)

    fix_input_shape_pass.__name__ = "fix_input_shape"
    return [
        lower_ir_version,
        constants_to_initializers,
        drop_initializer_inputs,
        drop_unread_inputs,
        fix_input_shape_pass,
        dequantise,
        remove_inference_noops,
        fold_constants,
        expand_batch_constants,
        lower_gelu,
        explicit_split,
        convert_opset,
        drop_unsupported_attributes,
        infer_shapes,
        explicit_auto_pad,
        rewrite_asymmetric_average_pool,
        free_batch_dim,
        infer_shapes,
    ]


__all__ = [
    "NormalisedModel",
    "Pass",
    "PassReport",
    "dims",
    "drop_initializer_inputs",
    "image_input",
    "normalise",
    "passes",
    "shape_table",
    "unconvertible_nodes",
]
