"""Ctrl-C: at any moment one `error: interrupted` line and exit 130, never a traceback; an analysis
interrupted while solving leaves no complete-looking report, and the rerun works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onnx_infodiscard.embedded import DEFAULT_MODEL

CLI = [sys.executable, "-m", "onnx_infodiscard_cli.main"]
IMAGE = sorted((DEFAULT_MODEL.parent / "images").glob("*.png"))[0]


def _env() -> dict[str, str]:
    """Read when a test runs, so the per-test row cache of conftest.py applies (never the user's)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _as_in_a_terminal() -> None:
    """SIGINT back to its default in the child: a test runner started in the background (`&` in a
    script, xdist workers) ignores it, the child would inherit that, and Python then never raises
    KeyboardInterrupt; a user's terminal does not ignore it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_library(pid: int, name: str, timeout: float = 120) -> None:
    """Until the process has mapped a shared library whose path contains `name` (it is importing it)."""
    maps = Path(f"/proc/{pid}/maps")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if name in maps.read_text():
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"{name} was never loaded")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc to see what the process imports")
@pytest.mark.parametrize(
    ("signum", "code", "line"), [(signal.SIGINT, 130, "error: interrupted"), (signal.SIGTERM, 143, "error: terminated")]
)
def test_a_signal_while_importing(tmp_path, signum, code, line):
    process = subprocess.Popen(
        [*CLI, "analyze", "--out", str(tmp_path / "r")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        preexec_fn=_as_in_a_terminal,
    )
    _wait_for_library(process.pid, "numpy")  # the first compiled dependency the app imports; torch follows
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert stderr.strip().splitlines() == [line], stderr
    assert not (tmp_path / "r").exists()


def test_ctrl_c_while_solving_leaves_no_report_and_a_rerun_works(tmp_path):
    out = tmp_path / "r"
    args = [*CLI, "--debug", "analyze", str(DEFAULT_MODEL), str(IMAGE), "-l", "-1", "--samples", "4", "--out", str(out)]
    process = subprocess.Popen(
        [*args, "--steps", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        preexec_fn=_as_in_a_terminal,
    )
    lines = []
    for line in process.stderr:  # --debug prints a line when each stage starts
        lines.append(line)
        if line.startswith("debug: CID σ"):
            break
    else:
        raise AssertionError("".join(lines))
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    process.wait(timeout=120)
    stderr = "".join(lines) + rest
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in stderr, stderr
    assert not (out / "report.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name != "r"], list(tmp_path.iterdir())  # no half-written folder
    rerun = subprocess.run([*args, "--steps", "5", "--json"], capture_output=True, text=True, env=_env(), timeout=600)
    assert rerun.returncode in (0, 4), rerun.stderr
    assert json.loads((out / "report.json").read_text())["results"]
