"""Packaging a local ``working_dir`` or ``py_modules`` entry as a content-addressed zip.

A package is named by what it holds, ``gcs://_ray_pkg_<hash>.zip`` (Ray's form): the hash covers
every packaged file's name, mode and bytes after ``excludes``, ``.gitignore`` and ``.rayignore``, so
the same tree gives the same name on every machine and an unchanged tree is never uploaded twice.
Hashing reads the files once; the zip is only built when the cluster does not have it yet.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aioray._private.runtime_env.ignore import IgnoreRules, is_excluded

PKG_PREFIX = "_ray_pkg_"
IGNORE_FILES = (".gitignore", ".rayignore")
# Left out of a working_dir unless overridden (as Ray 2.60 does): VCS data, virtualenvs, bytecode.
DEFAULT_EXCLUDES = ".git,.venv,venv,__pycache__"
DEFAULT_EXCLUDES_ENV = "AIORAY_RUNTIME_ENV_DEFAULT_EXCLUDES"
# The largest package accepted, as Ray's (its gRPC message limit): the GCS keeps every package.
DEFAULT_MAX_PACKAGE_BYTES = 512 << 20
MAX_PACKAGE_BYTES_ENV = "AIORAY_RUNTIME_ENV_MAX_PACKAGE_BYTES"
_READ = 1 << 20


class PackageTooLargeError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    name: str  # path inside the zip, with "/"
    path: Path
    is_dir: bool
    size: int = 0


def max_package_bytes() -> int:
    return int(os.environ.get(MAX_PACKAGE_BYTES_ENV, DEFAULT_MAX_PACKAGE_BYTES))


def default_excludes() -> list[str]:
    value = os.environ.get(DEFAULT_EXCLUDES_ENV, DEFAULT_EXCLUDES)
    return [x.strip() for x in value.split(",") if x.strip()]


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def collect(root: Path, excludes: Iterable[str] = (), include_parent_dir: bool = False) -> list[Entry]:
    """The files and empty folders under `root` that go into its package, sorted by name.

    `excludes` are gitignore patterns relative to `root`; each folder's ignore files apply below it.
    With `include_parent_dir` the names start with the root's own name (a package directory that
    must stay importable by that name).
    """
    root = root.resolve()
    prefix = root.name + "/" if include_parent_dir else ""
    entries: list[Entry] = []
    seen: set[tuple[int, int]] = set()

    def walk(folder: Path, rel: str, rules: list[tuple[str, IgnoreRules]]) -> None:
        st = folder.stat()
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop
            return
        seen.add((st.st_dev, st.st_ino))
        local = [name for name in IGNORE_FILES if (folder / name).is_file()]
        if local:
            lines = [line for name in local for line in (folder / name).read_text().splitlines()]
            rules = [*rules, (rel, IgnoreRules(lines))]
        children = sorted(folder.iterdir(), key=lambda p: p.name)
        kept = 0
        for child in children:
            child_rel = f"{rel}/{child.name}" if rel else child.name
            is_dir = child.is_dir()
            if is_excluded(child_rel, is_dir, rules):
                continue
            kept += 1
            if is_dir:
                walk(child, child_rel, rules)
            elif child.is_file():
                entries.append(Entry(prefix + child_rel, child, False, child.stat().st_size))
        if not kept and rel:
            entries.append(Entry(prefix + rel + "/", folder, True))

    walk(root, "", [("", IgnoreRules(excludes))])
    if include_parent_dir and not entries:
        entries.append(Entry(prefix, root, True))
    entries.sort(key=lambda e: e.name)
    return entries


def single_file(path: Path) -> list[Entry]:
    """A one-file module (``py_modules`` entry ending in .py): the file at the package's top."""
    path = path.resolve()
    return [Entry(path.name, path, False, path.stat().st_size)]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def content_hash(entries: Iterable[Entry]) -> str:
    digest = hashlib.sha256()
    for e in entries:
        digest.update(e.name.encode() + b"\0")
        if e.is_dir:
            digest.update(b"D\n")
            continue
        file_digest = hashlib.sha256()
        try:
            with open(e.path, "rb") as f:
                while chunk := f.read(_READ):
                    file_digest.update(chunk)
        except OSError as err:
            raise ValueError(f"cannot read {e.path} to package it: {err}") from None
        digest.update(b"F%o:" % _mode(e.path) + file_digest.digest() + b"\n")
    return digest.hexdigest()[:40]


def uri_for(digest: str) -> str:
    return f"gcs://{PKG_PREFIX}{digest}.zip"


def build_zip(entries: Iterable[Entry], what: str, limit: int | None = None) -> bytes:
    """The zip of `entries`; PackageTooLargeError (naming `what`, the size and the limit) past `limit`."""
    limit = max_package_bytes() if limit is None else limit
    entries = list(entries)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for e in entries:
            if e.is_dir:
                info = zipfile.ZipInfo(e.name if e.name.endswith("/") else e.name + "/")
                info.external_attr = (0o40755 << 16) | 0x10
                zf.writestr(info, b"")
            else:
                info = zipfile.ZipInfo.from_file(e.path, e.name, strict_timestamps=False)
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(e.path, "rb") as src, zf.open(info, "w") as dst:
                    while chunk := src.read(_READ):
                        dst.write(chunk)
            if buf.tell() > limit:
                break
    size = buf.tell()
    if size > limit:
        raw = sum(e.size for e in entries)
        raise PackageTooLargeError(
            f"the package of {what} is over the size limit: it zips to more than {_mib(limit)} "
            f"(its {len(entries)} files hold {_mib(raw)}), and the limit is {_mib(limit)}. Leave large "
            "files out with runtime_env 'excludes' or a .gitignore/.rayignore file, or raise the limit "
            f"with {MAX_PACKAGE_BYTES_ENV}"
        )
    return buf.getvalue()


def zip_file_package(path: Path, what: str, limit: int | None = None) -> tuple[str, bytes]:
    """A local .zip given as a working_dir: uploaded as it is, named by its bytes."""
    limit = max_package_bytes() if limit is None else limit
    size = path.stat().st_size
    if size > limit:
        raise PackageTooLargeError(
            f"{what} is {_mib(size)}, over the size limit of {_mib(limit)} (raise it with {MAX_PACKAGE_BYTES_ENV})"
        )
    data = path.read_bytes()
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ValueError(f"{what} is not a zip file")
    return uri_for(hashlib.sha256(data).hexdigest()[:40]), data


__all__ = [
    "Entry",
    "PackageTooLargeError",
    "build_zip",
    "collect",
    "content_hash",
    "default_excludes",
    "max_package_bytes",
    "single_file",
    "uri_for",
    "zip_file_package",
]
