"""Packaging local paths: what goes in, content-addressed names, the size limit."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from aioray._private.runtime_env import packaging


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def names(entries: list[packaging.Entry]) -> list[str]:
    return [e.name for e in entries]


def test_excludes_ignore_files_and_default_excludes(tmp_path: Path) -> None:
    root = tree(
        tmp_path / "wd",
        {
            "main.py": "",
            "data/big.bin": "x",
            "data/keep.bin": "x",
            "logs/a.log": "",
            "pkg/__pycache__/m.pyc": "",
            "pkg/m.py": "",
            ".git/HEAD": "",
            "sub/.gitignore": "*.tmp\n!keep.tmp\n",
            "sub/x.tmp": "",
            "sub/keep.tmp": "",
            ".rayignore": "secret.txt\n",
            "secret.txt": "",
        },
    )
    entries = packaging.collect(root, [*packaging.default_excludes(), "data/big.bin", "logs/"])
    assert names(entries) == [
        ".rayignore",
        "data/keep.bin",
        "main.py",
        "pkg/m.py",
        "sub/.gitignore",
        "sub/keep.tmp",
    ]


def test_empty_folders_are_kept_and_parent_dir_names_modules(tmp_path: Path) -> None:
    root = tree(tmp_path / "mymod", {"__init__.py": "", "inner/x.py": ""})
    (root / "empty").mkdir()
    assert names(packaging.collect(root)) == ["__init__.py", "empty/", "inner/x.py"]
    assert names(packaging.collect(root, include_parent_dir=True)) == [
        "mymod/__init__.py",
        "mymod/empty/",
        "mymod/inner/x.py",
    ]


def test_the_name_follows_the_content(tmp_path: Path) -> None:
    a = tree(tmp_path / "a", {"m.py": "X = 1\n", "d/n.py": "Y = 2\n"})
    b = tree(tmp_path / "b", {"d/n.py": "Y = 2\n", "m.py": "X = 1\n"})
    hash_a = packaging.content_hash(packaging.collect(a))
    assert hash_a == packaging.content_hash(packaging.collect(b))
    (b / "m.py").write_text("X = 3\n")
    assert hash_a != packaging.content_hash(packaging.collect(b))
    (b / "m.py").write_text("X = 1\n")
    (b / "m.py").chmod(0o755)
    assert hash_a != packaging.content_hash(packaging.collect(b))
    uri = packaging.uri_for(hash_a)
    assert uri.startswith("gcs://_ray_pkg_") and uri.endswith(".zip")


def test_zip_holds_the_entries(tmp_path: Path) -> None:
    root = tree(tmp_path / "wd", {"m.py": "X = 1\n", "d/n.txt": "hello"})
    (root / "e").mkdir()
    data = packaging.build_zip(packaging.collect(root), "working_dir wd")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == ["d/n.txt", "e/", "m.py"]
        assert zf.read("d/n.txt") == b"hello"


def test_size_limit_names_the_size_and_the_limit(tmp_path: Path) -> None:
    root = tmp_path / "wd"
    root.mkdir()
    (root / "random.bin").write_bytes(bytes(range(256)) * 8192 + __import__("os").urandom(3 << 20))
    with pytest.raises(packaging.PackageTooLargeError) as e:
        packaging.build_zip(packaging.collect(root), f"working_dir {root}", limit=1 << 20)
    message = str(e.value)
    assert f"working_dir {root}" in message
    assert "1.0 MiB" in message and "5.0 MiB" in message  # the limit, and what the files hold
    assert "excludes" in message


def test_size_limit_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(packaging.MAX_PACKAGE_BYTES_ENV, "1234")
    assert packaging.max_package_bytes() == 1234


def test_a_local_zip_is_named_by_its_bytes(tmp_path: Path) -> None:
    archive = tmp_path / "wd.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("m.py", "X = 1\n")
    uri, data = packaging.zip_file_package(archive, "working_dir wd.zip")
    assert data == archive.read_bytes() and uri.startswith("gcs://_ray_pkg_")
    not_zip = tmp_path / "bad.zip"
    not_zip.write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a zip file"):
        packaging.zip_file_package(not_zip, "working_dir bad.zip")
