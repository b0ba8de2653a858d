"""The `infodiscard` command line: a thin Typer layer over `onnx_infodiscard`."""
