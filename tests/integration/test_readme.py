"""The README's quick start runs as written."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_readme_quick_start_runs() -> None:
    text = README.read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None, "the README has no python quick start"
    proc = subprocess.run([sys.executable, "-c", block.group(1)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert lines[:1] == ["[0,"] and "144" in lines and "1000" in lines and lines[-1] == "2", proc.stdout


def test_readme_where_work_runs_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "placement_group" in b)
    proc = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "[[0], [1]]" in proc.stdout, proc.stdout
