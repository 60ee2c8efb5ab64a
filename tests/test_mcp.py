"""MCP, both ways: the official SDK's client against a real server (Streamable HTTP at
``agent-sessions/mcp``) and against a real ``jupyter-exec mcp`` subprocess (stdio)."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from jupyter_exec_client import LocalJupyterServer

# The [mcp] extras (which [test] pulls); CI's compat runs have only test-base.
pytest.importorskip("mcp")
pytest.importorskip("PIL")
import httpx2
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

JUPYTER_EXEC = Path(sys.executable).with_name("jupyter-exec")

#: Four figures of 3000x2000 pixels: three come inline, the fourth as a link.
FOUR_BIG_FIGURES = """\
import matplotlib.pyplot as plt
for i in range(4):
    fig = plt.figure(figsize=(30, 20), dpi=100)
    plt.plot(range(100), [x * i for x in range(100)])
    plt.show()
"""
#: A photo-like image of 4000x3000 pixels (noise: PNG cannot make it small).
NOISE_IMAGE = """\
import numpy as np
from PIL import Image
from IPython.display import display
display(Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype="uint8")))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalJupyterServer]:
    """One real local server for the module."""
    root = tmp_path_factory.mktemp("mcp-server-root")
    with LocalJupyterServer(root_dir=root, log_file=root / "server.log", kernel_pool=0) as running:
        yield running


def rest(server: LocalJupyterServer, method: str, path: str = "") -> Any:
    """A call of the REST API, for what MCP clients cannot see."""
    info = server.connection_info
    response = requests.request(
        method,
        f"{info.base_url}api/agent-sessions{path}",
        headers={"Authorization": f"token {info.token}"},
        timeout=60,
    )
    response.raise_for_status()
    return response.json() if response.content else None


@asynccontextmanager
async def http_session(server: LocalJupyterServer) -> AsyncIterator[ClientSession]:
    """An MCP session with the server's own endpoint."""
    info = server.connection_info
    headers = {"Authorization": f"token {info.token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as client,
        streamable_http_client(info.base_url + "agent-sessions/mcp", http_client=client) as (
            read,
            write,
            *_,
        ),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def stdio_parameters(server: LocalJupyterServer | None) -> StdioServerParameters:
    """``jupyter-exec mcp`` pointed at ``server`` (None: it starts its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_EXEC_")}
    if server is not None:
        env["JUPYTER_EXEC_URL"] = server.connection_info.base_url
        env["JUPYTER_EXEC_TOKEN"] = server.connection_info.token or ""
    return StdioServerParameters(command=str(JUPYTER_EXEC), args=["mcp"], env=env)


@asynccontextmanager
async def stdio_session(server: LocalJupyterServer | None) -> AsyncIterator[ClientSession]:
    """An MCP session with a real ``jupyter-exec mcp`` subprocess."""
    async with (
        stdio_client(stdio_parameters(server)) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


async def new_session(session: ClientSession) -> str:
    result = await session.call_tool("create_session", {})
    assert not result.is_error, result.content
    text = result.content[0].text  # type: ignore[union-attr]
    return text.split()[1]


def text_of(result: Any) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


def test_tools_are_listed_with_schemas_and_annotations(server: LocalJupyterServer) -> None:
    async def scenario() -> None:
        async with stdio_session(server) as stdio, http_session(server) as http:
            stdio_tools = {t.name: t for t in (await stdio.list_tools()).tools}
            http_tools = {t.name: t for t in (await http.list_tools()).tools}
        names = {
            "create_session", "list_sessions", "close_session", "execute", "interrupt",
            "restart", "list_files", "read_file", "write_file", "get_image",
        }  # fmt: skip
        assert set(stdio_tools) == names
        assert set(http_tools) == names
        for tools in (stdio_tools, http_tools):
            for tool in tools.values():
                assert tool.description
                assert tool.input_schema["type"] == "object"
                for prop in tool.input_schema["properties"].values():
                    assert prop["description"]
            assert tools["list_sessions"].annotations.read_only_hint
            assert tools["read_file"].annotations.read_only_hint
            assert tools["close_session"].annotations.destructive_hint
            assert tools["restart"].annotations.destructive_hint
            assert not tools["execute"].annotations.read_only_hint
        # Over HTTP there is no implicit session; over stdio there is one.
        assert http_tools["execute"].input_schema["required"] == ["code", "session_id"]
        assert stdio_tools["execute"].input_schema["required"] == ["code"]

    run(scenario)


def test_state_across_calls_and_sessions_isolated_over_http(server: LocalJupyterServer) -> None:
    async def scenario() -> None:
        async with http_session(server) as mcp:
            missing = await mcp.call_tool("execute", {"code": "1"})
            assert missing.is_error
            assert "create_session" in text_of(missing)
            first, second = await new_session(mcp), await new_session(mcp)
            await mcp.call_tool("execute", {"code": "x = 41", "session_id": first})
            result = await mcp.call_tool("execute", {"code": "x + 1", "session_id": first})
            assert not result.is_error
            assert "42" in text_of(result)
            other = await mcp.call_tool("execute", {"code": "x", "session_id": second})
            assert other.is_error
            assert "NameError" in text_of(other)
            listed = text_of(await mcp.call_tool("list_sessions", {}))
            assert first in listed
            assert second in listed
            for session_id in (first, second):
                closed = await mcp.call_tool("close_session", {"session_id": session_id})
                assert not closed.is_error
        assert rest(server, "GET") == []

    run(scenario)


def test_stdio_state_workspace_and_default_session(server: LocalJupyterServer) -> None:
    async def scenario() -> None:
        async with stdio_session(server) as mcp:
            await mcp.call_tool("execute", {"code": "import os\ny = 'kept'"})
            assert "kept" in text_of(await mcp.call_tool("execute", {"code": "print(y)"}))
            wrote = await mcp.call_tool("write_file", {"path": "in/a.txt", "content": "héllo"})
            assert not wrote.is_error, text_of(wrote)
            assert text_of(await mcp.call_tool("read_file", {"path": "in/a.txt"})) == "héllo"
            listing = text_of(await mcp.call_tool("list_files", {"path": "in"}))
            assert "in/a.txt" in listing
            read = await mcp.call_tool("execute", {"code": "print(open('in/a.txt').read())"})
            assert "héllo" in text_of(read)
            escape = await mcp.call_tool("read_file", {"path": "../x"})
            assert escape.is_error

    run(scenario)


def test_images_are_downscaled_and_the_rest_linked(server: LocalJupyterServer) -> None:
    async def check(mcp: ClientSession, arguments: dict[str, str]) -> None:
        result = await mcp.call_tool("execute", {"code": FOUR_BIG_FIGURES, **arguments})
        assert not result.is_error, text_of(result)
        images = [c for c in result.content if c.type == "image"]
        links = [c for c in result.content if c.type == "resource_link"]
        assert len(images) == 3
        assert len(links) == 1
        for image in images:
            data = base64.b64decode(image.data)
            assert len(data) <= 750_000
            with Image.open(io.BytesIO(data)) as decoded:
                assert max(decoded.size) <= 1568
                assert max(decoded.size) >= 1000  # downscaled, not shrunk to nothing
        read = await mcp.read_resource(str(links[0].uri))
        blob = base64.b64decode(read.contents[0].blob)  # type: ignore[union-attr]
        with Image.open(io.BytesIO(blob)) as decoded:
            assert max(decoded.size) <= 1568
        file_id = links[0].name
        small = await mcp.call_tool("get_image", {"file_id": file_id, "max_size": 200, **arguments})
        with Image.open(io.BytesIO(base64.b64decode(small.content[0].data))) as decoded:  # type: ignore[union-attr]
            assert max(decoded.size) == 200

    async def scenario() -> None:
        async with stdio_session(server) as mcp:
            await check(mcp, {})
            noise = await mcp.call_tool("execute", {"code": NOISE_IMAGE})
            assert not noise.is_error, text_of(noise)
            sizes = []
            for block in noise.content:
                if block.type == "image":
                    data = base64.b64decode(block.data)
                else:
                    assert block.type in ("text", "resource_link")
                    if block.type == "text":
                        continue
                    read = await mcp.read_resource(str(block.uri))
                    data = base64.b64decode(read.contents[0].blob)  # type: ignore[union-attr]
                with Image.open(io.BytesIO(data)) as decoded:
                    assert max(decoded.size) <= 1568
                sizes.append(len(data))
            assert sizes
            assert max(sizes) <= 750_000
        async with http_session(server) as mcp:
            session_id = await new_session(mcp)
            await check(mcp, {"session_id": session_id})
            await mcp.call_tool("close_session", {"session_id": session_id})

    run(scenario)


def test_downscaling_route_checks_its_argument(server: LocalJupyterServer) -> None:
    session_id = requests.post(
        f"{server.connection_info.base_url}api/agent-sessions",
        headers={"Authorization": f"token {server.connection_info.token}"},
        json={},
        timeout=60,
    ).json()["id"]
    try:
        headers = {"Authorization": f"token {server.connection_info.token}"}
        result = requests.post(
            f"{server.connection_info.base_url}api/agent-sessions/{session_id}/execute",
            headers=headers,
            json={"code": "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()"},
            timeout=60,
        ).json()
        url = server.connection_info.base_url.rstrip("/") + result["files"][0]["url"]
        small = requests.get(url, params={"max_size": 100}, headers=headers, timeout=60)
        assert small.status_code == 200
        with Image.open(io.BytesIO(small.content)) as decoded:
            assert max(decoded.size) == 100
        for bad in ("0", "x", "99999"):
            refused = requests.get(url, params={"max_size": bad}, headers=headers, timeout=60)
            assert refused.status_code == 400
            assert "max_size" in refused.json()["message"]
    finally:
        rest(server, "DELETE", f"/{session_id}")


def test_errors_are_tool_errors(server: LocalJupyterServer) -> None:
    async def scenario() -> None:
        async with stdio_session(server) as mcp:
            failed = await mcp.call_tool("execute", {"code": "print('before')\n1/0"})
            assert failed.is_error
            assert "before" in text_of(failed)
            assert "ZeroDivisionError" in text_of(failed)
            assert "status: error" in text_of(failed)
            bad = await mcp.call_tool("execute", {"code": 3})
            assert bad.is_error
            assert "code" in text_of(bad)
            unknown = await mcp.call_tool("no_such_tool", {})
            assert unknown.is_error
            kernel = await mcp.call_tool("create_session", {"kernel_name": "no-such-kernel"})
            assert kernel.is_error
            assert "no-such-kernel" in text_of(kernel)
            sleeping = {"code": "import time; time.sleep(30)", "timeout": 1}
            timeout = await mcp.call_tool("execute", sleeping)
            assert timeout.is_error
            assert "Timeout" in text_of(timeout)

    run(scenario)


def test_a_session_deleted_under_the_client_is_a_clear_tool_error(
    server: LocalJupyterServer,
) -> None:
    async def scenario() -> None:
        async with stdio_session(server) as stdio, http_session(server) as http:
            for mcp in (stdio, http):
                arguments = {"session_id": await new_session(mcp)} if mcp is http else {}
                await mcp.call_tool("execute", {"code": "x = 1", **arguments})
                session_id = arguments.get("session_id") or rest(server, "GET")[0]["id"]
                rest(server, "DELETE", f"/{session_id}")
                result = await mcp.call_tool("execute", {"code": "x", "session_id": session_id})
                assert result.is_error
                assert f"Session {session_id} does not exist" in text_of(result)
                assert "create_session" in text_of(result)

    run(scenario)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("transport", ["http", "stdio"])
def test_progress_reaches_the_client_during_a_long_cell(
    server: LocalJupyterServer, transport: str
) -> None:
    code = "import time\nprint('started', flush=True)\ntime.sleep(12)\nprint('ended', flush=True)"

    async def scenario() -> None:
        opened = http_session(server) if transport == "http" else stdio_session(server)
        async with opened as mcp:
            arguments = {"session_id": await new_session(mcp)} if transport == "http" else {}
            heard: list[tuple[float, str | None]] = []

            async def on_progress(
                progress: float, total: float | None, message: str | None
            ) -> None:
                heard.append((time.monotonic(), message))

            begun = time.monotonic()
            result = await mcp.call_tool(
                "execute", {"code": code, **arguments}, progress_callback=on_progress
            )
            ended = time.monotonic()
            if arguments:
                await mcp.call_tool("close_session", arguments)
        assert not result.is_error, text_of(result)
        messages = [message for _, message in heard]
        assert messages[0] == "started\n"
        assert "ended\n" in messages
        # A notification at least every 10 s while the cell sleeps, so no client idles out.
        times = [begun] + [moment for moment, _ in heard] + [ended]
        assert max(b - a for a, b in itertools.pairwise(times)) < 10
        assert any(message and message.startswith("running for") for message in messages)

    run(scenario)


def test_unauthenticated_http_is_refused(server: LocalJupyterServer) -> None:
    url = server.connection_info.base_url + "agent-sessions/mcp"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    for token in (None, "wrong"):
        sent = {**headers, **({"Authorization": f"token {token}"} if token else {})}
        response = requests.post(url, json=body, headers=sent, timeout=30)
        assert response.status_code == 403
        assert "tools" not in response.text


@pytest.mark.timeout(180)
def test_stdio_server_leaves_no_session_or_kernel_behind(server: LocalJupyterServer) -> None:
    """Against a server (its sessions deleted) and with its own local server (stopped)."""

    def ours() -> list[psutil.Process]:
        return [
            p
            for p in psutil.Process().children(recursive=True)
            if "mcp" in " ".join(p.cmdline()) or "jupyter" in " ".join(p.cmdline())
        ]

    async def scenario() -> None:
        before = {p.pid for p in ours()}
        earlier = {model["id"] for model in rest(server, "GET")}
        async with stdio_session(server) as mcp:
            await mcp.call_tool("execute", {"code": "1"})
            second = await mcp.call_tool("create_session", {"name": "second-one"})
            assert not second.is_error
            assert len({model["id"] for model in rest(server, "GET")} - earlier) == 2
        assert {model["id"] for model in rest(server, "GET")} == earlier
        async with stdio_session(None) as mcp:
            result = await mcp.call_tool("execute", {"code": "import os; print(os.getpid())"})
            assert not result.is_error
            kernel_pid = int(text_of(result).splitlines()[1])
            spawned = [p for p in ours() if p.pid not in before]
            assert kernel_pid in {p.pid for p in spawned}
        deadline = time.monotonic() + 15
        while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in spawned):
            assert time.monotonic() < deadline, [p.cmdline() for p in spawned if p.is_running()]
            await asyncio.sleep(0.2)

    run(scenario)


def test_without_the_sdk_the_command_names_the_extra() -> None:
    # The SDK hidden from the command's own interpreter, as when the extra is not installed.
    code = (
        "import sys; sys.modules['mcp'] = None\n"
        "from jupyter_exec_client.cli import main\n"
        "sys.exit(main(['mcp', '--url', 'http://127.0.0.1:9/']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "pip install 'jupyter-exec-client[mcp]'" in done.stderr
