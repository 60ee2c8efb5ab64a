"""JupyterTool in a LangChain tool-calling loop: a fake chat model scripted with tool calls
(langchain-core's GenericFakeChatModel), sync and async, against real servers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from jupyter_exec_client import (
    AsyncJupyterCodeExecutor,
    JupyterCodeExecutor,
    JupyterConnectionInfo,
    LocalJupyterServer,
)

pytest.importorskip("langchain_core")
from jupyter_exec_client.integrations.langchain import JupyterTool
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from .framework_servers import BACKENDS, PLOT, local_server, plain_jupyter_server, server_target  # noqa: F401

Target = tuple[str, LocalJupyterServer | JupyterConnectionInfo]


class ToolCallingFakeModel(GenericFakeChatModel):
    """GenericFakeChatModel that takes tools as a real chat model does, and keeps its inputs."""

    seen: list[list[BaseMessage]] = Field(default_factory=list)
    bound: list[dict[str, Any]] = Field(default_factory=list)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        self.bound = [convert_to_openai_tool(tool) for tool in tools]
        return self.bind(tools=self.bound, **kwargs)

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.seen.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


def script() -> list[AIMessage]:
    """Set a variable, plot with it, fail, answer."""
    codes = ["x = 21\nprint('set')", PLOT, "print('before')\n{}['missing']"]
    turns = [
        AIMessage(
            content="", tool_calls=[{"name": "run_python", "args": {"code": code}, "id": f"c{i}"}]
        )
        for i, code in enumerate(codes)
    ]
    return [*turns, AIMessage(content="The answer is 42.")]


def check_run(model: ToolCallingFakeModel, answer: BaseMessage, tmp_path: Path) -> None:
    """What the model saw of the three tool calls, and its answer."""
    (function,) = model.bound
    assert function["function"]["name"] == "run_python"
    assert list(function["function"]["parameters"]["properties"]) == ["code"]
    tool_messages = [m for m in model.seen[-1] if isinstance(m, ToolMessage)]
    assert len(tool_messages) == 3
    assert tool_messages[0].content[0]["text"].strip() == "set"
    text, image = tool_messages[1].content
    assert "doubled 42" in text["text"]
    assert image["type"] == "image"
    assert image["mime_type"] == "image/png"
    assert tool_messages[1].artifact["exit_code"] == 0
    assert [Path(p).suffix for p in tool_messages[1].artifact["output_files"]] == [".png"]
    failed = tool_messages[2].content[0]["text"]
    assert "before" in failed
    assert "KeyError" in failed
    assert "[the code failed]" in failed
    assert tool_messages[2].artifact["exit_code"] == 1
    assert answer.content == "The answer is 42."


def test_sync_tool_calling_loop(server_target: Target, tmp_path: Path) -> None:
    name, server = server_target
    with JupyterCodeExecutor(server, output_dir=tmp_path, timeout=30) as executor:
        tool = JupyterTool(executor=executor)
        model = ToolCallingFakeModel(messages=iter(script()), seen=[])
        with_tools = model.bind_tools([tool])
        messages: list[BaseMessage] = [HumanMessage("Double 21 and plot it.")]
        while True:
            reply = with_tools.invoke(messages)
            messages.append(reply)
            if not reply.tool_calls:
                break
            messages.extend(tool.invoke(call) for call in reply.tool_calls)
        assert executor.backend == BACKENDS[name]
    check_run(model, reply, tmp_path)


def test_async_tool_calling_loop_on_both_executors(
    local_server: LocalJupyterServer, tmp_path: Path
) -> None:
    async def loop(executor: JupyterCodeExecutor | AsyncJupyterCodeExecutor) -> None:
        tool = JupyterTool(executor=executor)
        model = ToolCallingFakeModel(messages=iter(script()), seen=[])
        with_tools = model.bind_tools([tool])
        messages: list[BaseMessage] = [HumanMessage("Double 21 and plot it.")]
        while True:
            reply = await with_tools.ainvoke(messages)
            messages.append(reply)
            if not reply.tool_calls:
                break
            messages.extend(await asyncio.gather(*(tool.ainvoke(c) for c in reply.tool_calls)))
        check_run(model, reply, tmp_path)

    async def scenario() -> None:
        async with AsyncJupyterCodeExecutor(local_server, output_dir=tmp_path) as executor:
            await loop(executor)
            # An async executor cannot serve invoke: a clear error.
            with pytest.raises(TypeError, match="ainvoke"):
                JupyterTool(executor=executor).invoke({"code": "1"})
        with JupyterCodeExecutor(local_server, output_dir=tmp_path) as blocking:
            await loop(blocking)

    asyncio.run(scenario())


def test_not_an_executor_is_refused() -> None:
    with pytest.raises(TypeError, match="JupyterCodeExecutor"):
        JupyterTool(executor="http://localhost:8888")
