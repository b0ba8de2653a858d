"""The README's Python example runs as written (with fewer optimisation steps, for time)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_python_example_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "steps=100" in code
    monkeypatch.chdir(ROOT)
    code = code.replace("steps=100", "steps=20").replace('"my-report"', repr(str(tmp_path / "my-report")))
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "my-report" / "report.html").is_file()
