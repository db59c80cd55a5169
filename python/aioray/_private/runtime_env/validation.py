"""Checking a ``runtime_env`` as the user wrote it, before anything touches the cluster.

`parse_runtime_env` returns a normalised copy (Ray's forms: a requirements file becomes its list of
packages, a module object in ``py_modules`` becomes its path, empty fields are dropped) or raises a
``ValueError``/``TypeError`` that names the field. Every field Ray knows and aioray does not run is
refused by name, never dropped: a runtime environment half applied is worse than an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

SUPPORTED_FIELDS = ("env_vars", "working_dir", "py_modules", "pip", "uv", "excludes", "config")
# Ray fields that aioray does not implement: a clear refusal rather than an "unknown field".
UNSUPPORTED_FIELDS = {
    "conda": "use 'pip' or 'uv' (a virtual environment per node)",
    "container": "containers are not supported",
    "image_uri": "containers are not supported",
    "java_jars": "aioray runs Python workers only",
    "nsight": "profilers are not supported",
    "rocprof_sys": "profilers are not supported",
    "py_executable": "use 'pip' or 'uv' for a per-environment interpreter",
    "worker_process_setup_hook": "not supported",
    "_inject_current_ray": "not supported",
}
CONFIG_FIELDS = ("setup_timeout_seconds", "eager_install")
PIP_FIELDS = ("packages", "pip_check", "pip_install_options", "pip_version")
UV_FIELDS = ("packages", "uv_check", "uv_version", "uv_pip_install_options")
DEFAULT_UV_OPTIONS = ["--no-cache"]
# Packages already in the cluster's storage, by content: gcs://_ray_pkg_<hash>.zip (Ray's form).
_GCS_URI = re.compile(r"^gcs://[A-Za-z0-9_.-]+\.zip$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _is_uri(value: str) -> bool:
    return _SCHEME.match(value) is not None


def _check_uri(value: str, field: str) -> str:
    if _GCS_URI.match(value):
        return value
    scheme = _SCHEME.match(value)
    what = scheme.group(1) if scheme else value
    raise ValueError(
        f"runtime_env[{field!r}]: {value!r} is not supported: aioray takes local paths (packaged and "
        f"uploaded for you) and gcs://<name>.zip URIs of packages already uploaded, not {what}:// URIs"
    )


def _parse_env_vars(value: Any) -> dict[str, str] | None:
    if not isinstance(value, Mapping):
        raise TypeError(f"runtime_env['env_vars'] must be a dict of str to str, got {type(value).__name__}")
    for key, val in value.items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise TypeError(
                f"runtime_env['env_vars'] must be a dict of str to str, got {key!r}: {val!r} "
                f"({type(key).__name__}: {type(val).__name__})"
            )
        if not key or "=" in key or "\0" in key or "\0" in val:
            raise ValueError(f"runtime_env['env_vars']: {key!r} is not a valid environment variable name")
    return dict(value) or None


def _parse_working_dir(value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError(f"runtime_env['working_dir'] must be a string or a path, got {type(value).__name__}")
    if _is_uri(value):
        return _check_uri(value, "working_dir")
    path = Path(value).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.is_file() and path.suffix == ".zip":
        return str(path.resolve())
    if not path.exists():
        raise ValueError(f"runtime_env['working_dir']: {value!r} does not exist")
    raise ValueError(f"runtime_env['working_dir']: {value!r} must be a directory or a .zip file")


def _module_path(module: ModuleType) -> str:
    paths = list(getattr(module, "__path__", []) or [])
    if paths:
        if len(paths) > 1:
            raise ValueError(
                f"runtime_env['py_modules']: module {module.__name__} spans several directories "
                f"({paths}); give one of them as a path"
            )
        return str(paths[0])
    file = getattr(module, "__file__", None)
    if not file:
        raise ValueError(f"runtime_env['py_modules']: module {module.__name__} has no file to ship")
    return str(file)


def _parse_py_modules(value: Any) -> list[str] | None:
    if not isinstance(value, list | tuple):
        raise TypeError(
            "runtime_env['py_modules'] must be a list of local paths, imported modules or gcs:// URIs, "
            f"got {type(value).__name__}"
        )
    out = []
    for entry in value:
        if isinstance(entry, ModuleType):
            entry = _module_path(entry)
        elif isinstance(entry, os.PathLike):
            entry = os.fspath(entry)
        if not isinstance(entry, str):
            raise TypeError(
                "runtime_env['py_modules'] entries must be paths, imported modules or gcs:// URIs, "
                f"got {type(entry).__name__}"
            )
        if _is_uri(entry):
            out.append(_check_uri(entry, "py_modules"))
            continue
        path = Path(entry).expanduser()
        if path.is_dir() or (path.is_file() and path.suffix == ".py"):
            out.append(str(path.resolve()))
        elif not path.exists():
            raise ValueError(f"runtime_env['py_modules']: {entry!r} does not exist")
        else:
            raise ValueError(
                f"runtime_env['py_modules']: {entry!r} must be a package directory or a .py file "
                "(wheels are not supported: list them in 'pip')"
            )
    return out or None


def _requirements_file(path: str, field: str) -> list[str]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"runtime_env[{field!r}]: {path!r} is not a requirements file")
    lines = [line.strip() for line in file.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _string_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{what} must be a list of strings, got {value!r}")
    return list(value)


def _parse_packages(value: Any, field: str, fields: tuple[str, ...], check_key: str) -> dict[str, Any] | None:
    """pip and uv take a list of requirements, a requirements file, or a dict of `fields`."""
    if isinstance(value, str):
        spec: dict[str, Any] = {"packages": _requirements_file(value, field)}
    elif isinstance(value, list):
        spec = {"packages": _string_list(value, f"runtime_env[{field!r}]")}
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ValueError(
                f"runtime_env[{field!r}] can only have the fields {', '.join(fields)}, got {', '.join(unknown)}"
            )
        if "packages" not in value:
            raise ValueError(f"runtime_env[{field!r}] needs a 'packages' field, got {dict(value)!r}")
        packages = value["packages"]
        spec = dict(value)
        if isinstance(packages, str) and field == "pip":
            spec["packages"] = _requirements_file(packages, field)
        else:
            spec["packages"] = _string_list(packages, f"runtime_env[{field!r}]['packages']")
        for key in fields:
            if key.endswith("_check") and key in value and not isinstance(value[key], bool):
                raise TypeError(f"runtime_env[{field!r}][{key!r}] must be a bool, got {value[key]!r}")
            if key.endswith("_version") and key in value and not isinstance(value[key], str):
                raise TypeError(f"runtime_env[{field!r}][{key!r}] must be a string, got {value[key]!r}")
            if key.endswith("_options") and key in value:
                spec[key] = _string_list(value[key], f"runtime_env[{field!r}][{key!r}]")
    else:
        raise TypeError(
            f"runtime_env[{field!r}] must be a list of requirements, a requirements file or a dict, "
            f"got {type(value).__name__}"
        )
    spec["packages"] = list(dict.fromkeys(spec["packages"]))  # pip refuses duplicates
    spec[check_key] = bool(spec.get(check_key, False))
    if field == "uv":
        spec.setdefault("uv_pip_install_options", list(DEFAULT_UV_OPTIONS))
    return spec if spec["packages"] else None


def _parse_excludes(value: Any) -> list[str] | None:
    return _string_list(value, "runtime_env['excludes']") or None


def _parse_config(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        raise TypeError(f"runtime_env['config'] must be a dict, got {type(value).__name__}")
    unknown = sorted(set(value) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(
            f"runtime_env['config'] can only have the fields {', '.join(CONFIG_FIELDS)}, got {', '.join(unknown)}"
        )
    out: dict[str, Any] = {}
    timeout = value.get("setup_timeout_seconds")
    if timeout is not None:
        if not isinstance(timeout, int) or isinstance(timeout, bool) or (timeout <= 0 and timeout != -1):
            raise ValueError(
                f"runtime_env['config']['setup_timeout_seconds'] must be a positive integer or -1 (no limit), "
                f"got {timeout!r}"
            )
        out["setup_timeout_seconds"] = timeout
    eager = value.get("eager_install")
    if eager is not None:
        if not isinstance(eager, bool):
            raise TypeError(f"runtime_env['config']['eager_install'] must be a bool, got {eager!r}")
        if eager:
            raise ValueError(
                "runtime_env['config']['eager_install']=True is not supported by aioray: each node sets an "
                "environment up when the first task or actor that needs it arrives"
            )
    return out or None


_PARSERS = {
    "env_vars": _parse_env_vars,
    "working_dir": _parse_working_dir,
    "py_modules": _parse_py_modules,
    "excludes": _parse_excludes,
    "config": _parse_config,
}


def parse_runtime_env(value: Any) -> dict[str, Any] | None:
    """The normalised runtime_env, or None for none (None or an empty dict: inherit the parent's)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"runtime_env must be a dict (or a RuntimeEnv), got {type(value).__name__}")
    out: dict[str, Any] = {}
    for key, field_value in value.items():
        if key in UNSUPPORTED_FIELDS:
            raise ValueError(
                f"runtime_env field {key!r} is not supported by aioray ({UNSUPPORTED_FIELDS[key]}); "
                f"supported fields: {', '.join(SUPPORTED_FIELDS)}"
            )
        if key not in SUPPORTED_FIELDS:
            raise ValueError(
                f"unknown runtime_env field {key!r}; supported fields: {', '.join(SUPPORTED_FIELDS)}"
            )
        if field_value is None:
            continue
        if key == "pip":
            parsed: Any = _parse_packages(field_value, "pip", PIP_FIELDS, "pip_check")
        elif key == "uv":
            parsed = _parse_packages(field_value, "uv", UV_FIELDS, "uv_check")
        else:
            parsed = _PARSERS[key](field_value)
        if parsed is not None:
            out[key] = parsed
    if "pip" in out and "uv" in out:
        raise ValueError("runtime_env cannot have both 'pip' and 'uv': choose one installer")
    return out or None


__all__ = ["SUPPORTED_FIELDS", "parse_runtime_env"]
