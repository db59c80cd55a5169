"""Which token the job client sends where."""

from __future__ import annotations

from typing import Any

import pytest

from aioray._private import worker_api
from aioray._private.common import process
from aioray.job_submission import sdk


@pytest.fixture
def local_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    info: dict[str, Any] = {"dashboard_url": "http://127.0.0.1:8265", "token": "local-token"}
    monkeypatch.setattr(worker_api, "read_cluster_file", lambda address=None: info)
    monkeypatch.delenv(process.TOKEN_ENV, raising=False)


def test_the_local_token_goes_to_the_local_dashboard_only(local_cluster: None) -> None:
    assert sdk.default_token("http://127.0.0.1:8265") == "local-token"
    assert sdk.default_token("http://elsewhere.example:8265") == ""


def test_the_environments_token_is_the_users_choice(
    local_cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(process.TOKEN_ENV, "chosen")
    assert sdk.default_token("http://elsewhere.example:8265") == "chosen"
