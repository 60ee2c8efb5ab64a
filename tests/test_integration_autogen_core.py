"""autogen-core's CodeExecutor API on our executor: autogen-agentchat agents driven by
autogen-ext's ReplayChatCompletionClient (no LLM) against real servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_exec_client import JupyterConnectionInfo, LocalJupyterServer

pytest.importorskip("autogen_agentchat")
from autogen_agentchat.agents import (
    ApprovalRequest,
    ApprovalResponse,
    AssistantAgent,
    CodeExecutorAgent,
)
from autogen_agentchat.messages import TextMessage
from autogen_core import CancellationToken, FunctionCall
from autogen_core.code_executor import CodeBlock, CodeExecutor
from autogen_core.models import CreateResult, ModelInfo, RequestUsage
from autogen_ext.models.replay import ReplayChatCompletionClient
from autogen_ext.tools.code_execution import PythonCodeExecutionTool
from jupyter_exec_client.integrations.autogen_core import JupyterCodeExecutor

from .framework_servers import BACKENDS, PLOT, local_server, plain_jupyter_server, server_target  # noqa: F401

#: What the replayed model says it can do: call tools.
MODEL_INFO = ModelInfo(
    vision=False,
    function_calling=True,
    json_output=False,
    family="unknown",
    structured_output=False,
)

Target = tuple[str, LocalJupyterServer | JupyterConnectionInfo]


def tool_call(code: str, call_id: str) -> CreateResult:
    """A model turn that calls the code execution tool with ``code``."""
    return CreateResult(
        finish_reason="function_calls",
        content=[
            FunctionCall(id=call_id, name="CodeExecutor", arguments=json.dumps({"code": code}))
        ],
        usage=RequestUsage(prompt_tokens=0, completion_tokens=0),
        cached=False,
    )


def test_assistant_with_the_code_execution_tool(server_target: Target, tmp_path: Path) -> None:
    name, server = server_target

    async def scenario() -> None:
        async with JupyterCodeExecutor(server, output_dir=tmp_path, timeout=30) as executor:
            model = ReplayChatCompletionClient(
                [
                    tool_call("x = 21\nprint('set')", "1"),
                    tool_call(PLOT, "2"),
                    tool_call("print('before')\n{}['missing']", "3"),
                    "The answer is 42.",
                ],
                model_info=MODEL_INFO,
            )
            agent = AssistantAgent(
                "analyst", model, tools=[PythonCodeExecutionTool(executor)], max_tool_iterations=4
            )
            result = await agent.run(task="Double 21 and plot it.")
            assert executor.backend == BACKENDS[name]
        results = [
            item
            for message in result.messages
            if type(message).__name__ == "ToolCallExecutionEvent"
            for item in message.content
        ]
        assert [r.is_error for r in results] == [False, False, False]
        assert "set" in results[0].content
        # State across calls, and the figure saved as a PNG named in the output.
        assert "doubled 42" in results[1].content
        (png,) = await asyncio.to_thread(lambda: list(tmp_path.glob("*.png")))
        assert str(png) in results[1].content
        assert "KeyError" in results[2].content
        assert "before" in results[2].content
        assert result.messages[-1].content == "The answer is 42."

    asyncio.run(scenario())


async def last(stream: AsyncIterator[Any]) -> Any:
    """The last item of a stream: the TaskResult of run_stream."""
    last_item = None
    async for item in stream:
        last_item = item
    return last_item


def approve(request: ApprovalRequest) -> ApprovalResponse:
    """Every block is approved (CodeExecutorAgent warns when nobody is asked)."""
    return ApprovalResponse(approved=True, reason="test")


def test_code_executor_agent_runs_the_models_code(server_target: Target, tmp_path: Path) -> None:
    _, server = server_target

    async def scenario() -> None:
        async with JupyterCodeExecutor(server, output_dir=tmp_path, timeout=30) as executor:
            model = ReplayChatCompletionClient(
                # Each run: the code, then the agent's reflection on its result.
                ["```python\nx = 21\n```", "x is set.", f"```python\n{PLOT}\n```", "Done: 42."]
            )
            agent = CodeExecutorAgent(
                "coder",
                code_executor=executor,
                model_client=model,
                approval_func=approve,
            )
            # run_stream's result holds the code and its execution (run()'s holds only texts).
            first = await last(agent.run_stream(task="Set x."))
            second = await last(agent.run_stream(task="Double and plot."))
            (executed,) = [m.result for m in second.messages if hasattr(m, "result")]
            assert executed.exit_code == 0
            assert "doubled 42" in executed.output
            assert "Image data saved to" in executed.output
            assert [Path(p).suffix for p in executed.output_files] == [".png"]
            assert first.messages[-1].source == "coder"
            # Without a model: the code blocks of other agents' messages.
            plain = CodeExecutorAgent("runner", code_executor=executor, approval_func=approve)
            reply = await plain.on_messages(
                [TextMessage(content="```python\nprint(x + 1)\n1/0\n```", source="user")],
                CancellationToken(),
            )
            assert "22" in str(reply.chat_message.content)
            assert "ZeroDivisionError" in str(reply.chat_message.content)

    asyncio.run(scenario())


def test_cancellation_interrupts_the_kernel_and_state_survives(
    local_server: LocalJupyterServer, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with JupyterCodeExecutor(local_server, output_dir=tmp_path, timeout=60) as executor:
            token = CancellationToken()
            call = asyncio.ensure_future(
                executor.execute_code_blocks(
                    [CodeBlock("kept = 7\nimport time\ntime.sleep(60)", "python")], token
                )
            )
            await asyncio.sleep(2)
            token.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            # The kernel was interrupted: the next call runs at once, its state kept.
            result = await asyncio.wait_for(
                executor.execute_code_blocks([CodeBlock("print(kept)", "python")]), 20
            )
            assert result.output.strip() == "7"
            await executor.restart()
            result = await executor.execute_code_blocks(
                [CodeBlock("print('kept' in dir())", "python")]
            )
            assert result.output.strip() == "False"

    asyncio.run(scenario())


def test_config_round_trips_and_the_loaded_executor_runs(
    local_server: LocalJupyterServer, tmp_path: Path
) -> None:
    executor = JupyterCodeExecutor(local_server, timeout=17, output_dir=tmp_path, env={"MODE": "x"})
    model = executor.dump_component()
    assert model.provider == "jupyter_exec_client.integrations.autogen_core.JupyterCodeExecutor"
    # Written as JSON, the secrets are masked.
    assert local_server.connection_info.token not in model.model_dump_json()
    loaded = CodeExecutor.load_component(model)
    assert isinstance(loaded, JupyterCodeExecutor)
    assert (loaded.timeout, loaded.output_dir, loaded.kernel_name) == (
        17,
        tmp_path.resolve(),
        "python3",
    )
    assert loaded.connection_info.token == local_server.connection_info.token
    # Through the tool's config too, and it runs code on the server.
    tool = PythonCodeExecutionTool.load_component(
        PythonCodeExecutionTool(executor).dump_component()
    )

    async def scenario() -> None:
        result = await tool.run_json(
            {"code": "import os\nprint(os.environ['MODE'])"}, CancellationToken()
        )
        assert result.output.strip() == "x"
        await tool._executor.stop()

    asyncio.run(scenario())
