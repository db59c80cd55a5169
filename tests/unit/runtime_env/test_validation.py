"""Checking a runtime_env: Ray's forms are normalised, anything aioray would not apply is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aioray._private.runtime_env.validation import parse_runtime_env
from aioray.runtime_env import RuntimeEnv, RuntimeEnvConfig


def test_empty_means_inherit() -> None:
    assert parse_runtime_env(None) is None
    assert parse_runtime_env({}) is None
    assert parse_runtime_env({"env_vars": {}, "pip": [], "excludes": []}) is None


def test_unknown_field_is_refused_by_name() -> None:
    with pytest.raises(
        ValueError, match=r"unknown runtime_env field 'no_such_field'.*supported fields: env_vars"
    ):
        parse_runtime_env({"no_such_field": 1})


@pytest.mark.parametrize("field", ["conda", "container", "image_uri", "java_jars", "py_executable"])
def test_ray_fields_aioray_does_not_run_are_refused_by_name(field: str) -> None:
    with pytest.raises(ValueError, match=rf"runtime_env field '{field}' is not supported by aioray"):
        parse_runtime_env({field: "x"})


def test_env_vars_must_be_strings() -> None:
    assert parse_runtime_env({"env_vars": {"A": "1"}}) == {"env_vars": {"A": "1"}}
    with pytest.raises(TypeError, match="env_vars"):
        parse_runtime_env({"env_vars": {"A": 1}})
    with pytest.raises(TypeError, match="env_vars"):
        parse_runtime_env({"env_vars": ["A=1"]})
    with pytest.raises(ValueError, match="not a valid environment variable name"):
        parse_runtime_env({"env_vars": {"A=B": "1"}})


def test_working_dir(tmp_path: Path) -> None:
    assert parse_runtime_env({"working_dir": str(tmp_path)}) == {"working_dir": str(tmp_path.resolve())}
    assert parse_runtime_env({"working_dir": tmp_path}) == {"working_dir": str(tmp_path.resolve())}
    uri = "gcs://_ray_pkg_0123abcd.zip"
    assert parse_runtime_env({"working_dir": uri}) == {"working_dir": uri}
    with pytest.raises(ValueError, match="does not exist"):
        parse_runtime_env({"working_dir": str(tmp_path / "missing")})
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match=r"must be a directory or a \.zip file"):
        parse_runtime_env({"working_dir": str(tmp_path / "f.txt")})
    with pytest.raises(ValueError, match="not https:// URIs"):
        parse_runtime_env({"working_dir": "https://example.com/x.zip"})
    with pytest.raises(TypeError, match="working_dir"):
        parse_runtime_env({"working_dir": 3})


def test_py_modules_paths_files_and_modules(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    single = tmp_path / "single.py"
    single.write_text("X = 1\n")
    parsed = parse_runtime_env({"py_modules": [str(pkg), single, json]})
    assert parsed is not None
    assert parsed["py_modules"][:2] == [str(pkg.resolve()), str(single.resolve())]
    assert parsed["py_modules"][2] == str(Path(json.__path__[0]).resolve())
    wheel = tmp_path / "x-1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    with pytest.raises(ValueError, match="wheels are not supported"):
        parse_runtime_env({"py_modules": [str(wheel)]})
    with pytest.raises(TypeError, match="py_modules"):
        parse_runtime_env({"py_modules": str(pkg)})


def test_pip_forms(tmp_path: Path) -> None:
    assert parse_runtime_env({"pip": ["six", "six", "pyjokes"]}) == {
        "pip": {"packages": ["six", "pyjokes"], "pip_check": False}
    }
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# a comment\npyjokes==0.8.3\n\nsix\n")
    assert parse_runtime_env({"pip": str(requirements)}) == {
        "pip": {"packages": ["pyjokes==0.8.3", "six"], "pip_check": False}
    }
    full = {"packages": ["six"], "pip_check": True, "pip_version": "==23.2.1", "pip_install_options": ["-q"]}
    assert parse_runtime_env({"pip": full}) == {"pip": full}
    with pytest.raises(ValueError, match="can only have the fields"):
        parse_runtime_env({"pip": {"packages": ["six"], "index": "x"}})
    with pytest.raises(ValueError, match="needs a 'packages' field"):
        parse_runtime_env({"pip": {"pip_check": True}})
    with pytest.raises(TypeError, match="pip_check"):
        parse_runtime_env({"pip": {"packages": ["six"], "pip_check": "yes"}})
    with pytest.raises(ValueError, match="is not a requirements file"):
        parse_runtime_env({"pip": str(tmp_path / "missing.txt")})


def test_uv_defaults_and_pip_uv_conflict() -> None:
    assert parse_runtime_env({"uv": ["six"]}) == {
        "uv": {"packages": ["six"], "uv_check": False, "uv_pip_install_options": ["--no-cache"]}
    }
    with pytest.raises(ValueError, match="both 'pip' and 'uv'"):
        parse_runtime_env({"pip": ["six"], "uv": ["six"]})


def test_config() -> None:
    assert parse_runtime_env({"config": {"setup_timeout_seconds": 5}}) == {
        "config": {"setup_timeout_seconds": 5}
    }
    assert parse_runtime_env({"config": {"setup_timeout_seconds": -1, "eager_install": False}}) == {
        "config": {"setup_timeout_seconds": -1}
    }
    with pytest.raises(ValueError, match="eager_install"):
        parse_runtime_env({"config": {"eager_install": True}})
    with pytest.raises(ValueError, match="setup_timeout_seconds"):
        parse_runtime_env({"config": {"setup_timeout_seconds": 0}})
    with pytest.raises(ValueError, match="can only have the fields"):
        parse_runtime_env({"config": {"retries": 3}})


def test_runtime_env_classes_are_checked_dicts(tmp_path: Path) -> None:
    env = RuntimeEnv(
        working_dir=str(tmp_path), env_vars={"A": "1"}, config=RuntimeEnvConfig(setup_timeout_seconds=9)
    )
    assert env == {
        "working_dir": str(tmp_path),
        "env_vars": {"A": "1"},
        "config": {"setup_timeout_seconds": 9, "eager_install": False},
    }
    assert parse_runtime_env(env) is not None
    with pytest.raises(ValueError, match="conda"):
        RuntimeEnv(conda="env")
