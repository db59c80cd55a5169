"""Gitignore-style patterns, for ``excludes`` and the ``.gitignore``/``.rayignore`` files of a package.

The rules are git's: blank lines and ``#`` comments are skipped; ``!`` re-includes; a trailing
``/`` matches directories only; a pattern with a ``/`` before its end is anchored at the folder
that holds it, one without matches at any depth; ``*`` and ``?`` stop at ``/``, ``**`` crosses
folders, ``[...]`` is a character class; ``\\`` escapes. The last pattern that matches decides. As
in git, a file inside an excluded folder cannot be re-included (the walk never enters the folder).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Pattern:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool


def _segment(seg: str) -> str:
    out = []
    i = 0
    while i < len(seg):
        c = seg[i]
        if c == "\\" and i + 1 < len(seg):
            out.append(re.escape(seg[i + 1]))
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = seg.find("]", i + 2 if seg[i + 1 : i + 2] in ("!", "^") else i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = seg[i + 1 : end]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def compile_pattern(line: str) -> Pattern | None:
    """One line of a gitignore file; None for a blank line or a comment."""
    if line.endswith("\n"):
        line = line[:-1]
    # Trailing spaces are dropped unless escaped.
    stripped = line.rstrip(" ")
    if stripped.endswith("\\") and len(stripped) < len(line):
        stripped += " "
    line = stripped
    if not line or line.startswith("#"):
        return None
    negate = line.startswith("!")
    if negate:
        line = line[1:]
    elif line.startswith(("\\!", "\\#")):
        line = line[1:]
    dir_only = line.endswith("/")
    line = line.rstrip("/")
    if not line:
        return None
    anchored = "/" in line
    segments = line.lstrip("/").split("/")
    parts = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "**":
            parts.append(".*" if last else "(?:[^/]+/)*")
        else:
            parts.append(_segment(seg) + ("" if last else "/"))
    body = "".join(parts)
    if not anchored:
        body = "(?:.*/)?" + body
    return Pattern(re.compile(f"^{body}$", re.DOTALL), negate, dir_only)


class IgnoreRules:
    """Patterns read from one folder (the package's root or a folder holding an ignore file)."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.patterns = [p for p in (compile_pattern(line) for line in lines) if p is not None]

    def decide(self, relpath: str, is_dir: bool) -> bool | None:
        """True: excluded; False: re-included; None: no pattern matches. `relpath` uses ``/``."""
        verdict: bool | None = None
        for p in self.patterns:
            if p.dir_only and not is_dir:
                continue
            if p.regex.match(relpath):
                verdict = not p.negate
        return verdict


def is_excluded(relpath: str, is_dir: bool, rules: Iterable[tuple[str, IgnoreRules]]) -> bool:
    """Whether `relpath` (from the package's root) is excluded by `rules`, each (folder, rules),
    outermost first; a deeper folder's rules win over its parent's, as in git."""
    excluded = False
    for folder, r in rules:
        if folder and not relpath.startswith(folder + "/"):
            continue
        verdict = r.decide(relpath[len(folder) + 1 :] if folder else relpath, is_dir)
        if verdict is not None:
            excluded = verdict
    return excluded


__all__ = ["IgnoreRules", "compile_pattern", "is_excluded"]
