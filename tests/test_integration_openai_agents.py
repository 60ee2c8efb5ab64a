"""jupyter_tool in an OpenAI Agents SDK run: a custom Model scripted with tool calls, no LLM,
against real servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_exec_client import (
    AsyncJupyterCodeExecutor,
    JupyterCodeExecutor,
    JupyterConnectionInfo,
    LocalJupyterServer,
)

pytest.importorskip("agents")
from agents import Agent, Runner, Usage, set_tracing_disabled
from agents.items import ModelResponse
from agents.models.interface import Model
from jupyter_exec_client.integrations.openai_agents import jupyter_tool
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from .framework_servers import BACKENDS, PLOT, local_server, plain_jupyter_server, server_target  # noqa: F401

Target = tuple[str, LocalJupyterServer | JupyterConnectionInfo]
CODES = ["x = 21\nprint('set')", PLOT, "print('before')\n{}['missing']"]


class ScriptedModel(Model):
    """Calls the tool with each code of the script, then answers; keeps what it was sent."""

    def __init__(self) -> None:
        self.turns: list[Any] = [
            ResponseFunctionToolCall(
                arguments=json.dumps({"code": code}),
                call_id=f"call-{i}",
                name="run_python",
                type="function_call",
                id=f"fc-{i}",
                status="completed",
            )
            for i, code in enumerate(CODES)
        ]
        self.turns.append(
            ResponseOutputMessage(
                id="answer",
                content=[
                    ResponseOutputText(text="The answer is 42.", type="output_text", annotations=[])
                ],
                role="assistant",
                status="completed",
                type="message",
            )
        )
        self.inputs: list[Any] = []
        self.tools: list[Any] = []

    async def get_response(self, system_instructions: Any, input: Any, model_settings: Any,
                           tools: Any, *args: Any, **kwargs: Any) -> ModelResponse:  # fmt: skip
        self.inputs.append(input)
        self.tools = tools
        return ModelResponse(output=[self.turns.pop(0)], usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError


def tool_outputs(model: ScriptedModel) -> list[Any]:
    """The outputs of the tool calls, as the model got them on its last call."""
    return [
        item["output"]
        for item in model.inputs[-1]
        if isinstance(item, dict) and item.get("type") == "function_call_output"
    ]


async def agent_run(executor: JupyterCodeExecutor | AsyncJupyterCodeExecutor) -> None:
    model = ScriptedModel()
    agent = Agent(
        name="analyst", instructions="Compute.", model=model, tools=[jupyter_tool(executor)]
    )
    result = await Runner.run(agent, "Double 21 and plot it.")
    assert result.final_output == "The answer is 42."
    (tool,) = model.tools
    assert tool.name == "run_python"
    assert list(tool.params_json_schema["properties"]) == ["code"]
    first, second, third = tool_outputs(model)
    assert first[0]["type"] == "input_text"
    assert first[0]["text"].strip() == "set"
    text, image = second
    assert "doubled 42" in text["text"]
    assert image["type"] == "input_image"
    assert image["image_url"].startswith("data:image/png;base64,iVBORw0KGgo")
    assert "KeyError" in third[0]["text"]
    assert "before" in third[0]["text"]
    assert "[the code failed]" in third[0]["text"]


@pytest.fixture(autouse=True)
def no_tracing() -> None:
    # The SDK would send traces to OpenAI's servers.
    set_tracing_disabled(True)


def test_agent_run_with_an_async_executor(server_target: Target, tmp_path: Path) -> None:
    name, server = server_target

    async def scenario() -> None:
        async with AsyncJupyterCodeExecutor(server, output_dir=tmp_path, timeout=30) as executor:
            await agent_run(executor)
            assert executor.backend == BACKENDS[name]

    asyncio.run(scenario())


def test_agent_run_with_a_blocking_executor(
    local_server: LocalJupyterServer, tmp_path: Path
) -> None:
    with JupyterCodeExecutor(local_server, output_dir=tmp_path) as executor:
        asyncio.run(agent_run(executor))
