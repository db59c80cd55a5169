"""runtime_env on real clusters: env_vars, working_dir, py_modules, pip, merging, failures, remote nodes."""

from __future__ import annotations

import json
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import aioray
from aioray.exceptions import RuntimeEnvSetupError

JOB_ENV = {"env_vars": {"JOB_ONLY": "job", "BOTH": "job"}}


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    aioray.init(num_cpus=2, object_store_memory=256 << 20, runtime_env=JOB_ENV)
    try:
        yield
    finally:
        aioray.shutdown()


@aioray.remote
def env_of(*names: str) -> dict[str, str | None]:
    return {n: os.environ.get(n) for n in names}


@aioray.remote
def pid() -> int:
    return os.getpid()


class _Reader:
    def env(self, *names: str) -> dict[str, str | None]:
        return {n: os.environ.get(n) for n in names}


Reader = aioray.remote(_Reader)


def test_job_env_vars_reach_tasks_and_merge_with_their_own(cluster: None) -> None:
    assert aioray.get(env_of.remote("JOB_ONLY", "BOTH", "TASK"), timeout=60) == {
        "JOB_ONLY": "job",
        "BOTH": "job",
        "TASK": None,
    }
    own = env_of.options(runtime_env={"env_vars": {"BOTH": "task", "TASK": "t"}})
    assert aioray.get(own.remote("JOB_ONLY", "BOTH", "TASK"), timeout=60) == {
        "JOB_ONLY": "job",
        "BOTH": "task",
        "TASK": "t",
    }


def test_the_runtime_context_tells_the_env_and_the_job(cluster: None) -> None:
    ctx = aioray.get_runtime_context()
    assert ctx.runtime_env == JOB_ENV and json.loads(ctx.get_runtime_env_string()) == JOB_ENV
    job = ctx.get_job_id()

    @aioray.remote(runtime_env={"env_vars": {"TASK": "t"}})
    def inside() -> tuple[dict[str, Any], str]:
        c = aioray.get_runtime_context()
        return dict(c.runtime_env), c.get_job_id()

    env, task_job = aioray.get(inside.remote(), timeout=60)
    assert env == {"env_vars": {**JOB_ENV["env_vars"], "TASK": "t"}}
    assert task_job == job  # a worker tells the job of the task it runs


def test_actors_get_their_env_vars(cluster: None) -> None:
    actor = Reader.options(runtime_env={"env_vars": {"ACTOR": "a", "BOTH": "actor"}}).remote()
    assert aioray.get(actor.env.remote("ACTOR", "BOTH", "JOB_ONLY"), timeout=60) == {
        "ACTOR": "a",
        "BOTH": "actor",
        "JOB_ONLY": "job",
    }
    aioray.kill(actor)


def test_children_inherit_their_parents_env(cluster: None) -> None:
    @aioray.remote
    def parent() -> tuple[dict[str, str | None], dict[str, str | None]]:
        inherited = aioray.get(env_of.remote("PARENT", "BOTH", "CHILD"))
        merged = aioray.get(
            env_of.options(runtime_env={"env_vars": {"CHILD": "c"}}).remote("PARENT", "BOTH", "CHILD")
        )
        return inherited, merged

    inherited, merged = aioray.get(
        parent.options(runtime_env={"env_vars": {"PARENT": "p", "BOTH": "parent"}}).remote(), timeout=60
    )
    assert inherited == {"PARENT": "p", "BOTH": "parent", "CHILD": None}
    assert merged == {"PARENT": "p", "BOTH": "parent", "CHILD": "c"}


def test_workers_are_pooled_per_env(cluster: None) -> None:
    other = pid.options(runtime_env={"env_vars": {"POOL": "other"}})
    plain_pids = {aioray.get(pid.remote(), timeout=60) for _ in range(3)}
    other_pids = {aioray.get(other.remote(), timeout=60) for _ in range(3)}
    assert not plain_pids & other_pids
    assert aioray.get(env_of.remote("POOL"), timeout=60) == {"POOL": None}
    assert aioray.get(
        env_of.options(runtime_env={"env_vars": {"POOL": "other"}}).remote("POOL"), timeout=60
    ) == {"POOL": "other"}


def _module_dir(root: Path, name: str, value: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.py").write_text(f"VALUE = {value}\n")
    (root / "excluded.txt").write_text("not shipped\n")
    return root


def test_working_dir_is_the_cwd_and_importable(cluster: None, tmp_path: Path) -> None:
    name = f"only_in_wd_{uuid.uuid4().hex[:8]}"
    wd = _module_dir(tmp_path / "wd", name, 41)

    @aioray.remote
    def use() -> tuple[int, list[str]]:
        import importlib

        return importlib.import_module(name).VALUE, sorted(os.listdir("."))

    f = use.options(runtime_env={"working_dir": str(wd), "excludes": ["excluded.txt"]})
    value, listing = aioray.get(f.remote(), timeout=60)
    assert value == 41
    assert listing == [f"{name}.py"]
    with pytest.raises(ModuleNotFoundError):
        __import__(name)  # the driver's own path is unchanged


def test_py_modules(cluster: None, tmp_path: Path) -> None:
    name = f"shipped_pkg_{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .inner import VALUE\n")
    (pkg / "inner.py").write_text("VALUE = 'from py_modules'\n")
    single = tmp_path / f"single_{name}.py"
    single.write_text("OTHER = 3\n")

    @aioray.remote
    def use() -> tuple[str, int]:
        import importlib

        return importlib.import_module(name).VALUE, importlib.import_module(f"single_{name}").OTHER

    f = use.options(runtime_env={"py_modules": [str(pkg), str(single)]})
    assert aioray.get(f.remote(), timeout=60) == ("from py_modules", 3)


def test_a_working_dir_over_the_limit_is_refused_at_remote(
    cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wd = tmp_path / "big"
    wd.mkdir()
    (wd / "blob.bin").write_bytes(os.urandom(300_000))
    monkeypatch.setenv("AIORAY_RUNTIME_ENV_MAX_PACKAGE_BYTES", str(100_000))
    with pytest.raises(ValueError, match=r"over the size limit.*0\.3 MiB.*limit is 0\.1 MiB"):
        pid.options(runtime_env={"working_dir": str(wd)}).remote()


def test_a_package_the_cluster_lacks_fails_the_task_and_the_actor(cluster: None) -> None:
    bad = {"working_dir": "gcs://_ray_pkg_never_uploaded.zip"}
    with pytest.raises(RuntimeEnvSetupError, match=r"never_uploaded.*not in the cluster's GCS"):
        aioray.get(pid.options(runtime_env=bad).remote(), timeout=60)
    actor = Reader.options(runtime_env=bad).remote()
    with pytest.raises(RuntimeEnvSetupError, match="not in the cluster's GCS"):
        aioray.get(actor.env.remote("X"), timeout=60)


def test_workers_that_cannot_start_fail_the_task_instead_of_hanging(cluster: None, tmp_path: Path) -> None:
    wd = tmp_path / "broken"
    wd.mkdir()
    (wd / "asyncio.py").write_text("raise SystemExit(3)\n")  # shadows the stdlib: workers exit at once
    with pytest.raises(RuntimeEnvSetupError, match="exited before they could register"):
        aioray.get(pid.options(runtime_env={"working_dir": str(wd)}).remote(), timeout=90)
    assert aioray.get(pid.remote(), timeout=60) > 0  # the node's other workers are unaffected


def test_a_failing_pip_install_fails_with_pips_output(cluster: None) -> None:
    env = {"pip": ["aioray-test-no-such-package-7f3a==1.0"]}
    with pytest.raises(RuntimeEnvSetupError, match=r"(?s)pip install.*aioray-test-no-such-package-7f3a"):
        aioray.get(pid.options(runtime_env=env).remote(), timeout=110)


def test_setup_has_a_time_limit(cluster: None) -> None:
    # An index that accepts connections and never answers: pip waits, the time limit ends it.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        index = f"http://127.0.0.1:{silent.getsockname()[1]}/simple"
        env = {
            "pip": {
                "packages": ["pyjokes"],
                "pip_install_options": ["--index-url", index, "--timeout", "100"],
            },
            "config": {"setup_timeout_seconds": 3},
        }
        with pytest.raises(RuntimeEnvSetupError, match="longer than 3 s"):
            aioray.get(pid.options(runtime_env=env).remote(), timeout=60)


@aioray.remote
def in_pip_env() -> dict[str, Any]:
    import pyjokes  # type: ignore[import-not-found]

    marker = json.loads(Path(sys.prefix, "aioray-env.json").read_text())
    return {"module": pyjokes.__file__, "prefix": sys.prefix, "build": marker["build_id"], "pid": os.getpid()}


def test_a_pip_env_is_built_once_and_reused(cluster: None) -> None:
    env = {"pip": ["pyjokes==0.8.3"]}
    first = aioray.get([in_pip_env.options(runtime_env=env).remote() for _ in range(2)], timeout=110)
    # Another environment with the same requirements (other env_vars) uses the same virtualenv.
    other = {**env, "env_vars": {"SAME_PIP": "1"}}
    second = aioray.get(in_pip_env.options(runtime_env=other).remote(), timeout=60)
    builds = {r["build"] for r in [*first, second]}
    assert len(builds) == 1, builds
    for r in [*first, second]:
        assert r["module"].startswith(r["prefix"]) and r["prefix"] != sys.prefix
    with pytest.raises(ModuleNotFoundError):
        __import__("pyjokes")


def test_a_uv_env(cluster: None) -> None:
    env = {"uv": {"packages": ["pyjokes==0.8.3"], "uv_check": True}}
    result = aioray.get(in_pip_env.options(runtime_env=env).remote(), timeout=110)
    assert result["module"].startswith(result["prefix"]) and result["prefix"] != sys.prefix
