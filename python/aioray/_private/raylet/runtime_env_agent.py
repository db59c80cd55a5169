"""The runtime environments of one node: set up on demand, cached, shared, removed at the node's end.

`RuntimeEnvAgent.ensure(info)` turns a resolved environment (`pb.RuntimeEnvInfo`, see
`aioray._private.runtime_env.resolver`) into a `WorkerEnv`: the interpreter, working directory,
``PYTHONPATH`` entries and variables that workers of that environment start with. Everything is
content-addressed and set up once per node: packages (``gcs://...zip``, read from the GCS key-value
store in the chunked form `aioray._private.runtime_env.upload` writes) are unpacked under the
node's cache folder, and a ``pip``/``uv`` requirement set gets one virtual environment. Concurrent
requests for one environment, package or virtual environment wait on the same set-up.

A virtual environment is made with ``--system-site-packages`` plus a ``.pth`` file adding this
interpreter's own site folders, so aioray and what the node already has stay importable while the
listed requirements take precedence. Set-up is bounded by the environment's
``config.setup_timeout_seconds`` (600 s unless given); an installer that outlives it is killed.
A failure raises `RuntimeEnvSetupFailed` with the reason (an installer's output tail included); the
next request for the environment tries again.

The cache lives in the node's spill folder (``<spill dir>/runtime_env``), which the raylet removes
when it stops and which a later node start reclaims if the raylet was killed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import site
import sys
import time
import uuid
import zipfile
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aioray._private.common import packages
from aioray._proto.aioray import v1 as pb

log = logging.getLogger("aioray.raylet")

# Shared with the driver's side (aioray._private.runtime_env), which this component may not import.
ENV_VAR = "AIORAY_RUNTIME_ENV"
PACKAGE_KEY_PREFIX = packages.KEY_PREFIX
DEFAULT_SETUP_TIMEOUT_S = 600.0
MARKER = "aioray-env.json"  # written last into a finished virtual environment
OUTPUT_TAIL_CHARS = 3000
DEFAULT_PIP_OPTIONS = ["--disable-pip-version-check", "--no-cache-dir"]
DEFAULT_UV_OPTIONS = ["--no-cache"]
_PACKAGE_URI = re.compile(r"^gcs://([A-Za-z0-9_.-]+)\.zip$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
T = TypeVar("T")


class RuntimeEnvSetupFailed(Exception):
    pass


def expand(value: str, base: Mapping[str, str]) -> str:
    """``${NAME}`` in a value is NAME's value in `base` (empty if unset), as Ray's env_vars allow."""
    return _VAR.sub(lambda m: base.get(m.group(1), ""), value)


@dataclass(frozen=True)
class WorkerEnv:
    """How to start a worker of one runtime environment."""

    hash: str
    serialized: str
    python: str
    cwd: str | None = None
    env_vars: tuple[tuple[str, str], ...] = ()
    pythonpath: tuple[str, ...] = ()
    venv: str | None = None

    def environ(self, base: Mapping[str, str]) -> dict[str, str]:
        env = dict(base)
        for key, value in self.env_vars:
            env[key] = expand(value, base)
        if self.pythonpath:
            rest = env.get("PYTHONPATH")
            env["PYTHONPATH"] = os.pathsep.join([*self.pythonpath, *([rest] if rest else [])])
        if self.venv is not None:
            env["VIRTUAL_ENV"] = self.venv
            env["PATH"] = os.pathsep.join([os.path.join(self.venv, "bin"), env.get("PATH", os.defpath)])
        env[ENV_VAR] = self.serialized
        return env


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - OUTPUT_TAIL_CHARS))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _unpack(data: bytes, dest: Path) -> None:
    """Unpacks a zip into `dest` atomically (a temporary sibling, then a rename); no member may
    land outside it."""
    tmp = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            root = tmp.resolve()
            for member in zf.infolist():
                target = (tmp / member.filename).resolve()
                if target != root and root not in target.parents:
                    raise RuntimeEnvSetupFailed(f"the package holds a path outside it: {member.filename!r}")
                zf.extract(member, tmp)
                mode = (member.external_attr >> 16) & 0o777
                if mode and not member.is_dir():
                    os.chmod(target, mode)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another set-up unpacked it meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _site_dirs() -> list[str]:
    """This interpreter's site folders (the raylet's virtualenv, if any): where aioray is."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dirs if os.path.isdir(d)]


class RuntimeEnvAgent:
    def __init__(self, root: str, kv_get: Callable[[str], Awaitable[bytes | None]]) -> None:
        self.root = Path(root)
        self._kv_get = kv_get
        self.ready: dict[str, WorkerEnv] = {}
        self._setups: dict[str, asyncio.Task[WorkerEnv]] = {}
        self._packages: dict[str, asyncio.Task[str]] = {}
        self._venvs: dict[str, asyncio.Task[str]] = {}
        self._unpackers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="aioray-unpack")
        self.venv_builds = 0
        self.stopping = False

    # -- environments ----------------------------------------------------------------------------
    async def ensure(self, info: pb.RuntimeEnvInfo) -> WorkerEnv:
        """The environment `info` describes, set up on this node (once); RuntimeEnvSetupFailed if
        it cannot be."""
        done = self.ready.get(info.hash)
        if done is not None:
            return done
        if self.stopping:
            raise RuntimeEnvSetupFailed("the node is shutting down")
        task = self._shared(self._setups, info.hash, lambda: self._setup(info))
        worker_env = await asyncio.shield(task)
        self.ready[info.hash] = worker_env
        return worker_env

    def get(self, env_hash: str) -> WorkerEnv | None:
        return self.ready.get(env_hash)

    def forget(self, env_hash: str) -> None:
        """Sets the environment up again next time (its workers kept failing to start)."""
        self.ready.pop(env_hash, None)
        task = self._setups.get(env_hash)
        if task is not None and task.done():
            del self._setups[env_hash]

    def _shared(
        self, table: dict[str, asyncio.Task[T]], key: str, start: Callable[[], Coroutine[Any, Any, T]]
    ) -> asyncio.Task[T]:
        task = table.get(key)
        if task is None:
            task = table[key] = asyncio.get_running_loop().create_task(start())

            def done(t: asyncio.Task[T]) -> None:
                # A failed set-up is forgotten, so that the next request tries again.
                if t.cancelled() or t.exception() is not None:
                    if table.get(key) is t:
                        del table[key]

            task.add_done_callback(done)
        return task

    async def _setup(self, info: pb.RuntimeEnvInfo) -> WorkerEnv:
        try:
            env = json.loads(info.serialized)
            if not isinstance(env, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise RuntimeEnvSetupFailed(f"the runtime environment is not valid JSON: {e}") from None
        timeout_s = (env.get("config") or {}).get("setup_timeout_seconds", DEFAULT_SETUP_TIMEOUT_S)
        timeout = None if timeout_s == -1 else float(timeout_s)
        try:
            async with asyncio.timeout(timeout):
                worker_env = await self._build(info, env, timeout)
        except TimeoutError:
            raise RuntimeEnvSetupFailed(
                f"setting the runtime environment up took longer than {timeout_s} s "
                "(runtime_env config 'setup_timeout_seconds')"
            ) from None
        except RuntimeEnvSetupFailed:
            raise
        except Exception as e:
            raise RuntimeEnvSetupFailed(f"{type(e).__name__}: {e}") from e
        self.ready[info.hash] = worker_env
        return worker_env

    async def _build(self, info: pb.RuntimeEnvInfo, env: dict[str, Any], timeout: float | None) -> WorkerEnv:
        uris = [u for u in [env.get("working_dir"), *env.get("py_modules", [])] if u]
        paths = await asyncio.gather(*(self._package(u) for u in uris))
        cwd = paths[0] if env.get("working_dir") else None
        venv = None
        for kind in ("pip", "uv"):
            if env.get(kind):
                venv = await self._venv(kind, env[kind], timeout)
        python = os.path.join(venv, "bin", "python") if venv else sys.executable
        env_vars = tuple(sorted((env.get("env_vars") or {}).items()))
        return WorkerEnv(info.hash, info.serialized, python, cwd, env_vars, tuple(paths), venv)

    # -- packages --------------------------------------------------------------------------------
    async def _package(self, uri: str) -> str:
        return await asyncio.shield(self._shared(self._packages, uri, lambda: self._fetch(uri)))

    async def _fetch(self, uri: str) -> str:
        m = _PACKAGE_URI.match(uri)
        if m is None:
            raise RuntimeEnvSetupFailed(f"unsupported package URI {uri!r} (expected gcs://<name>.zip)")
        dest = self.root / "pkgs" / m.group(1)
        if dest.is_dir():
            return str(dest)
        raw = await self._kv_get(PACKAGE_KEY_PREFIX + uri)
        if raw is None:
            raise RuntimeEnvSetupFailed(f"package {uri} is not in the cluster's GCS (it was never uploaded)")
        meta = json.loads(raw)
        parts = []
        for i in range(int(meta["chunks"])):
            chunk = await self._kv_get(f"{PACKAGE_KEY_PREFIX}{uri}#{i}")
            if chunk is None:
                raise RuntimeEnvSetupFailed(f"package {uri} is incomplete in the GCS (chunk {i} is missing)")
            parts.append(chunk)
        data = b"".join(parts)
        if len(data) != meta["size"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise RuntimeEnvSetupFailed(f"package {uri} is corrupt in the GCS (its digest does not match)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            await asyncio.get_running_loop().run_in_executor(self._unpackers, _unpack, data, dest)
        except zipfile.BadZipFile as e:
            raise RuntimeEnvSetupFailed(f"package {uri} is not a valid zip: {e}") from None
        return str(dest)

    # -- virtual environments --------------------------------------------------------------------
    async def _venv(self, kind: str, spec: dict[str, Any], timeout: float | None) -> str:
        key = hashlib.sha256(
            json.dumps({"kind": kind, "spec": spec, "python": sys.version}, sort_keys=True).encode()
        ).hexdigest()[:24]
        task = self._shared(self._venvs, key, lambda: self._build_venv(key, kind, spec, timeout))
        return await asyncio.shield(task)

    async def _build_venv(self, key: str, kind: str, spec: dict[str, Any], timeout: float | None) -> str:
        path = self.root / "venvs" / key
        if (path / MARKER).is_file():
            return str(path)
        # The first request's time limit bounds the build itself, so an installer never outlives it.
        async with asyncio.timeout(timeout):
            await self._make_venv(path, kind, spec)
        return str(path)

    async def _make_venv(self, path: Path, kind: str, spec: dict[str, Any]) -> None:
        shutil.rmtree(path, ignore_errors=True)  # a build that was interrupted
        path.parent.mkdir(parents=True, exist_ok=True)
        output = path.parent / f"{path.name}.log"
        output.unlink(missing_ok=True)
        started = time.time()
        await self._run(
            [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(path)], output
        )
        python = str(path / "bin" / "python")
        purelib = await self._capture(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        )
        # aioray and the node's packages stay importable, after the environment's own.
        Path(purelib or "").joinpath("_aioray_parent_site.pth").write_text(
            "".join(f"import site; site.addsitedir({d!r})\n" for d in _site_dirs())
        )
        base = {k: v for k, v in os.environ.items() if k != ENV_VAR}
        packages = [expand(p, base) for p in spec["packages"]]
        requirements = path / "requirements.txt"
        requirements.write_text("".join(p + "\n" for p in packages))
        if kind == "pip":
            if await self._capture([python, "-c", "import pip"], check=False) is None:
                await self._run([python, "-m", "ensurepip", "--default-pip"], output)
            if spec.get("pip_version"):
                await self._run(
                    [python, "-m", "pip", "install", *DEFAULT_PIP_OPTIONS, "pip" + spec["pip_version"]],
                    output,
                )
            options = [expand(o, base) for o in spec.get("pip_install_options", DEFAULT_PIP_OPTIONS)]
            await self._run([python, "-m", "pip", "install", *options, "-r", str(requirements)], output)
            if spec.get("pip_check"):
                await self._run([python, "-m", "pip", "check", "--disable-pip-version-check"], output)
        else:
            has_uv = await self._capture([python, "-m", "uv", "--version"], check=False) is not None
            if not has_uv or spec.get("uv_version"):
                await self._run(
                    [python, "-m", "pip", "install", *DEFAULT_PIP_OPTIONS, "uv" + spec.get("uv_version", "")],
                    output,
                )
            options = [expand(o, base) for o in spec.get("uv_pip_install_options", DEFAULT_UV_OPTIONS)]
            uv = [python, "-m", "uv", "pip"]
            await self._run([*uv, "install", "--python", python, *options, "-r", str(requirements)], output)
            if spec.get("uv_check"):
                await self._run([*uv, "check", "--python", python], output)
        self.venv_builds += 1
        marker = {"kind": kind, "spec": spec, "built_at": started, "build_id": uuid.uuid4().hex}
        (path / MARKER).write_text(json.dumps(marker))
        log.info("built the %s environment %s in %.1f s", kind, path.name, time.time() - started)

    async def _run(self, argv: list[str], output: Path) -> None:
        out = output.open("ab")  # a local log: opening it does not wait on anything
        try:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # so that a timeout kills the installer's children too
                env={k: v for k, v in os.environ.items() if k != ENV_VAR},
            )
            code = await self._wait(proc)
        finally:
            out.close()
        if code != 0:
            raise RuntimeEnvSetupFailed(
                f"`{' '.join(argv[:5])} ...` failed (exit code {code}); its output ends with:\n{_tail(output)}"
            )

    async def _capture(self, argv: list[str], check: bool = True) -> str | None:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            stdout, _ = await proc.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        code = proc.returncode
        if code != 0:
            if check:
                raise RuntimeEnvSetupFailed(f"`{' '.join(argv[:3])} ...` failed (exit code {code})")
            return None
        return stdout.decode().strip()

    @staticmethod
    async def _wait(proc: asyncio.subprocess.Process) -> int:
        try:
            return await proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5)
            raise

    # -- lifecycle -------------------------------------------------------------------------------
    async def stop(self) -> None:
        """Ends every set-up under way (killing installers), then removes the cache folder."""
        self.stopping = True
        tasks = [*self._setups.values(), *self._packages.values(), *self._venvs.values()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        # An unpack under way finishes before the folder goes, or it would leave files behind.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(self._unpackers.shutdown, True, cancel_futures=True), 30)
        shutil.rmtree(self.root, ignore_errors=True)


__all__ = ["ENV_VAR", "RuntimeEnvAgent", "RuntimeEnvSetupFailed", "WorkerEnv", "expand"]
