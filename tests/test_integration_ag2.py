"""jupyter_tool in an ag2 1.x agent (scripted with ag2.testing.TestConfig, no LLM), and our
JupyterCodeExecutor as AG2 Classic's (PyPI autogen 0.14) executor, against real servers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from jupyter_exec_client import (
    AsyncJupyterCodeExecutor,
    JupyterCodeExecutor,
    JupyterConnectionInfo,
    LocalJupyterServer,
)

pytest.importorskip("ag2")
pytest.importorskip("autogen")
from ag2 import Agent, BinaryInput, TextInput
from ag2.events import ToolCallEvent
from ag2.testing import TestConfig, TrackingConfig
from autogen import ConversableAgent
from jupyter_exec_client.integrations.ag2 import jupyter_tool

from .framework_servers import BACKENDS, PLOT, local_server, plain_jupyter_server, server_target  # noqa: F401

Target = tuple[str, LocalJupyterServer | JupyterConnectionInfo]
CODES = ["x = 21\nprint('set')", PLOT, "print('before')\n{}['missing']"]


def test_ag2_agent_keeps_state_sees_the_image_and_the_error(
    server_target: Target, tmp_path: Path
) -> None:
    name, server = server_target
    config = TrackingConfig(
        TestConfig(
            *(ToolCallEvent("run_python", arguments=json.dumps({"code": c})) for c in CODES),
            "The answer is 42.",
        )
    )

    async def scenario() -> Any:
        async with AsyncJupyterCodeExecutor(server, output_dir=tmp_path, timeout=30) as executor:
            agent = Agent("analyst", "Compute.", config=config, tools=[jupyter_tool(executor)])
            reply = await agent.ask("Double 21 and plot it.")
            assert executor.backend == BACKENDS[name]
            return reply

    reply = asyncio.run(scenario())
    assert reply.body == "The answer is 42."
    (schema,) = config.calls[0].tools
    assert schema.function.name == "run_python"
    assert list(schema.function.parameters["properties"]) == ["code"]
    # What the model got back from each tool call: the last event of its next call.
    results = [call.args[0].results[0].result.parts for call in config.mock.call_args_list[1:]]
    first, second, third = results
    assert isinstance(first[0], TextInput)
    assert first[0].content.strip() == "set"
    text, image = second
    assert "doubled 42" in text.content
    assert isinstance(image, BinaryInput)
    assert image.media_type == "image/png"
    assert image.data.startswith(b"\x89PNG")
    assert "KeyError" in third[0].content
    assert "[the code failed]" in third[0].content


def test_ag2_classic_conversable_agent_runs_code_on_our_executor(
    local_server: LocalJupyterServer, tmp_path: Path
) -> None:
    with JupyterCodeExecutor(local_server, output_dir=tmp_path, timeout=30) as executor:
        agent = ConversableAgent(
            "executor",
            llm_config=False,
            code_execution_config={"executor": executor},
            human_input_mode="NEVER",
        )

        def reply_to(code: str) -> str:
            message = {"role": "user", "content": f"```python\n{code}\n```"}
            answer = agent.generate_reply(messages=[message])
            return str(answer["content"] if isinstance(answer, dict) else answer)

        assert "exitcode: 0" in reply_to("x = 21\nprint('set')")
        plotted = reply_to(PLOT)
        assert "doubled 42" in plotted
        (png,) = tmp_path.glob("*.png")
        assert str(png) in plotted
        failed = reply_to("print('before')\n{}['missing']")
        assert "exitcode: 1" in failed
        assert "KeyError" in failed
