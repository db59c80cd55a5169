"""Ray's ``ray.runtime_env`` module: `RuntimeEnv` and `RuntimeEnvConfig`.

Both are dicts, checked when they are made, and can be passed wherever a ``runtime_env`` dict goes
(``@remote(runtime_env=...)``, ``.options(...)``, ``init(...)``)::

    from aioray.runtime_env import RuntimeEnv
    env = RuntimeEnv(working_dir=".", env_vars={"MODE": "test"}, pip=["pyjokes"])
"""

from __future__ import annotations

from typing import Any

from aioray._private.runtime_env.validation import parse_runtime_env


class RuntimeEnvConfig(dict[str, Any]):
    """``setup_timeout_seconds`` (default 600; -1: no limit) bounds setting the environment up on a node."""

    def __init__(self, setup_timeout_seconds: int = 600, eager_install: bool = False) -> None:
        super().__init__(setup_timeout_seconds=setup_timeout_seconds, eager_install=eager_install)
        parse_runtime_env({"config": dict(self)})


class RuntimeEnv(dict[str, Any]):
    """A runtime environment: ``env_vars``, ``working_dir``, ``py_modules``, ``pip`` or ``uv``,
    ``excludes`` and ``config``. Other fields raise ValueError naming them."""

    def __init__(
        self,
        *,
        py_modules: list[Any] | None = None,
        working_dir: str | None = None,
        pip: list[str] | str | dict[str, Any] | None = None,
        uv: list[str] | str | dict[str, Any] | None = None,
        env_vars: dict[str, str] | None = None,
        excludes: list[str] | None = None,
        config: dict[str, Any] | RuntimeEnvConfig | None = None,
        **other: Any,
    ) -> None:
        fields = {
            "py_modules": py_modules,
            "working_dir": working_dir,
            "pip": pip,
            "uv": uv,
            "env_vars": env_vars,
            "excludes": excludes,
            "config": config,
            **other,
        }
        super().__init__({k: v for k, v in fields.items() if v is not None})
        parse_runtime_env(dict(self))  # refuses what would not work now, not at the first .remote()

    def to_dict(self) -> dict[str, Any]:
        return dict(self)


__all__ = ["RuntimeEnv", "RuntimeEnvConfig"]
