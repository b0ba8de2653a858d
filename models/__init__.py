"""The shipped models, installed as the package `onnx_infodiscard_models` (data only).

Each folder holds one model, its card (`MODEL.onnx.json`), README and, where the card names them,
images, boxes and training images. `onnx_infodiscard.embedded` finds them with importlib.resources.
The build scripts (`*/build.py`, `common/`) stay in the source tree; the wheel does not ship them.
"""
