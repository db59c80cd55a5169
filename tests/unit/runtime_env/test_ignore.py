"""Gitignore-style patterns for excludes and ignore files."""

from __future__ import annotations

import pytest

from aioray._private.runtime_env.ignore import IgnoreRules, is_excluded


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "excluded"),
    [
        ("*.log", "a.log", False, True),
        ("*.log", "deep/er/a.log", False, True),
        ("*.log", "a.logs", False, False),
        ("/top.txt", "top.txt", False, True),
        ("/top.txt", "sub/top.txt", False, False),
        ("build/", "build", True, True),
        ("build/", "build", False, False),
        ("build/", "src/build", True, True),
        ("docs/*.md", "docs/a.md", False, True),
        ("docs/*.md", "docs/sub/a.md", False, False),
        ("docs/*.md", "x/docs/a.md", False, False),
        ("**/cache", "a/b/cache", True, True),
        ("**/cache", "cache", True, True),
        ("a/**/z", "a/z", False, True),
        ("a/**/z", "a/b/c/z", False, True),
        ("a/**", "a/b/c", False, True),
        ("a/**", "a", True, False),
        ("file?.txt", "file1.txt", False, True),
        ("file?.txt", "file10.txt", False, False),
        ("[abc].py", "b.py", False, True),
        ("[!abc].py", "b.py", False, False),
        ("[!abc].py", "d.py", False, True),
        ("\\#hash", "#hash", False, True),
        ("# comment", "# comment", False, False),
        ("", "anything", False, False),
    ],
)
def test_patterns(pattern: str, path: str, is_dir: bool, excluded: bool) -> None:
    assert is_excluded(path, is_dir, [("", IgnoreRules([pattern]))]) is excluded


def test_negation_and_last_match_wins() -> None:
    rules = [("", IgnoreRules(["*.txt", "!keep.txt"]))]
    assert is_excluded("drop.txt", False, rules)
    assert not is_excluded("keep.txt", False, rules)
    assert is_excluded("keep.txt", False, [("", IgnoreRules(["!keep.txt", "*.txt"]))])


def test_a_deeper_folder_rules_below_it_only() -> None:
    rules = [("", IgnoreRules(["*.bin"])), ("sub", IgnoreRules(["!big.bin", "local.txt"]))]
    assert is_excluded("big.bin", False, rules)
    assert not is_excluded("sub/big.bin", False, rules)
    assert is_excluded("sub/local.txt", False, rules)
    assert not is_excluded("local.txt", False, rules)
