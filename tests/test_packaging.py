"""Install-level checks: auto-enable on install, the spec, configuration, a real `jupyter server`."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from jupyter_exec_ext.handlers import default_handlers
from jupyter_exec_ext.live_transcript import LiveNotebooks
from jupyter_exec_ext.manager import AgentSessionManager
from jupyter_exec_ext.requirements import unmet_requirements
from jupyter_exec_ext.spec import load_spec

from .conftest import free_port


def test_extension_is_enabled_and_ok_after_install() -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "jupyter", "server", "extension", "list"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    text = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)
    assert re.search(r"jupyter_exec_ext enabled", text), text
    assert re.search(r"jupyter_exec_ext \S+ OK", text), text


def test_spec_is_valid_openapi() -> None:
    validate(load_spec())


def test_spec_and_routes_are_in_step() -> None:
    spec_paths = set(load_spec()["paths"])
    route_paths = set()
    for pattern, _handler in default_handlers:
        path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern).removesuffix("/?")
        route_paths.add(path)
    assert route_paths == spec_paths


def test_spec_documents_every_handler_method() -> None:
    spec = load_spec()["paths"]
    for pattern, handler in default_handlers:
        path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern).removesuffix("/?")
        implemented = {
            method
            for method in ("get", "post", "put", "patch", "delete")
            if method in vars(handler)
        }
        documented = {method for method in spec[path] if method != "parameters"}
        assert implemented == documented, path


def test_every_setting_is_documented() -> None:
    for configurable in (AgentSessionManager, LiveNotebooks):
        traits = configurable.class_traits(config=True)
        assert traits
        for name, trait in traits.items():
            assert trait.help and trait.help.endswith("."), name


@pytest.fixture
def jp_argv() -> list[str]:
    """Settings given on the command line, as a user would."""
    return ["--AgentSessionManager.max_output_chars=1234", "--AgentSessionManager.default_timeout=7"]


def test_settings_come_from_the_command_line(manager: Any) -> None:
    assert manager.max_output_chars == 1234
    assert manager.default_timeout == 7


def _call(url: str, token: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Authorization": f"token {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        with e:  # an HTTPError holds the connection open until it is closed
            return e.code, json.loads(e.read() or b"null")


@contextlib.contextmanager
def running_server(
    root_dir: Path, *, env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[tuple[str, str]]:
    """`jupyter server` as a user starts it (no flag names the extension): its URL and token."""
    port, token = free_port(), "ci-token"
    with contextlib.ExitStack() as stack:
        output = stack.enter_context(log.open("wb")) if log else subprocess.DEVNULL
        process = subprocess.Popen(
            [
                sys.executable, "-m", "jupyter", "server", "--no-browser", "--allow-root",
                f"--port={port}", f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={root_dir}",
            ],
            stdout=output,
            stderr=output,
            env={**os.environ, "JUPYTER_PLATFORM_DIRS": "1", **(env or {})},
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    _call(f"{url}/api/status", token)
                    break
                except OSError:
                    assert process.poll() is None, "jupyter server exited"
                    time.sleep(0.1)
            yield url, token
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


@pytest.fixture
def plain_jupyter_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`jupyter server` as a user starts it: no flag names the extension."""
    with running_server(tmp_path) as running:
        yield running


def test_plain_jupyter_server_serves_the_api(plain_jupyter_server: tuple[str, str]) -> None:
    url, token = plain_jupyter_server
    status, session = _call(f"{url}/api/agent-sessions", token, "POST", {})
    assert status == 201, session
    status, result = _call(
        f"{url}/api/agent-sessions/{session['id']}/execute", token, "POST", {"code": "6 * 7"}
    )
    assert status == 200
    assert result["output"] == "42\n"
    status, _ = _call(f"{url}/api/agent-sessions", "wrong-token")
    assert status == 403


def test_every_setting_is_in_the_readme() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for configurable in (AgentSessionManager, LiveNotebooks):
        for name in configurable.class_traits(config=True):
            assert f"| `{name}` |" in readme, name


# -- dependencies the installed package declares ----------------------------------------------


def installed_as(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A distribution record (``<name>-<version>.dist-info``, as pip writes one) in ``folder``.

    First on the path, it is what ``importlib.metadata`` finds for ``name``: an environment
    where that version is installed, the modules themselves staying the real ones.
    """
    record = folder / f"{name}-{version}.dist-info"
    record.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {requirement}" for requirement in requires]
    (record / "METADATA").write_text("\n".join(lines) + "\n")
    return folder


def test_unmet_requirements_name_what_is_missing_or_too_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    declared = (
        "jupyter_client>=99",
        "no-such-package-xyz>=1",
        "tornado>=6.2",
        'pytest>=99; extra == "test"',
        'jupyter_server>=99; extra == "kernel-gateway"',
    )
    monkeypatch.syspath_prepend(str(installed_as(tmp_path, "shadow_dist", "1.0", declared)))
    unmet = [found for _, found in unmet_requirements(distribution="shadow_dist")]
    client_version = importlib.metadata.version("jupyter_client")
    assert unmet == [
        f"jupyter_client {client_version} is installed",
        "no-such-package-xyz is not installed",
    ]
    with_extra = unmet_requirements("kernel-gateway", distribution="shadow_dist")
    assert [f"{req.name}{req.specifier}" for req, _ in with_extra][-1] == "jupyter_server>=99"
    assert unmet_requirements(distribution="no-such-distribution-xyz") == []


def test_a_dependency_too_old_leaves_the_extension_out_with_a_clear_line(tmp_path: Path) -> None:
    """jupyter_client 7.4.9 (the package declares >=8.0): the server starts without the
    extension, says why, and the API answers 404 at once, never a hang and a 500."""
    shadow = installed_as(tmp_path / "site", "jupyter_client", "7.4.9")
    path = os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))
    log = tmp_path / "server.log"
    with running_server(tmp_path, env={"PYTHONPATH": path}, log=log) as (url, token):
        request = urllib.request.Request(
            f"{url}/api/agent-sessions", data=b"{}", method="POST",
            headers={"Authorization": f"token {token}"},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        refused.value.close()
        assert refused.value.code == 404
        status, _ = _call(f"{url}/api/kernels", token)
        assert status == 200
    text = log.read_text()
    assert (
        "jupyter_exec_ext is not enabled: jupyter-client 7.4.9 is installed, it needs "
        "jupyter-client>=8.0. Install them with pip install 'jupyter-client>=8.0', then restart."
    ) in text
    listing = subprocess.run(
        [sys.executable, "-m", "jupyter", "server", "extension", "list"],
        check=False, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip
    said = listing.stderr + listing.stdout
    assert "jupyter_exec_ext is not enabled: jupyter-client 7.4.9" in said
