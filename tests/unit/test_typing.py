"""Typed remote calls: mypy --strict accepts tests/typing/sample_ok.py and, in
tests/typing/sample_bad.py, reports an error on exactly the lines marked ``# E:``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "typing"
ERROR_LINE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<message>.*)$")
MARK = re.compile(r"\S\s+# E:")  # a trailing `# E:` comment on a line of code


@pytest.fixture(scope="module")
def mypy_errors() -> dict[str, dict[int, list[str]]]:
    """mypy's errors on both samples (one run), by file name and line."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # the project's config: mypy_path, the shared cache
        stdout, stderr, status = api.run(
            [
                "--strict",
                "--config-file",
                "pyproject.toml",
                "--no-error-summary",
                str((SAMPLES / "sample_ok.py").relative_to(ROOT)),
                str((SAMPLES / "sample_bad.py").relative_to(ROOT)),
            ]
        )
    assert status in (0, 1), f"mypy did not run: {stderr}\n{stdout}"
    errors: dict[str, dict[int, list[str]]] = {}
    for line in stdout.splitlines():
        m = ERROR_LINE.match(line)
        if m:
            errors.setdefault(Path(m["path"]).name, {}).setdefault(int(m["line"]), []).append(m["message"])
    return errors


@pytest.mark.timeout(600)
def test_correct_use_type_checks(mypy_errors: dict[str, dict[int, list[str]]]) -> None:
    assert mypy_errors.get("sample_ok.py", {}) == {}


@pytest.mark.timeout(600)
def test_misuse_is_reported_on_each_marked_line(mypy_errors: dict[str, dict[int, list[str]]]) -> None:
    source = (SAMPLES / "sample_bad.py").read_text().splitlines()
    marked = {n for n, text in enumerate(source, start=1) if MARK.search(text)}
    assert len(marked) >= 10
    got = mypy_errors.get("sample_bad.py", {})
    assert sorted(marked - set(got)) == [], "marked lines without an error"
    unexpected = {n: got[n] for n in sorted(set(got) - marked)}
    assert unexpected == {}, "errors on lines not marked"
