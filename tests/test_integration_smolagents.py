"""smolagents' CodeAgent on our JupyterExecutor: a scripted model, a real server, no LLM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jupyter_exec_client import JupyterCodeExecutor, JupyterConnectionInfo, LocalJupyterServer

pytest.importorskip("smolagents")
from jupyter_exec_client.integrations.smolagents import JupyterExecutor
from smolagents import CodeAgent, tool
from smolagents.models import ChatMessage, MessageRole, Model
from smolagents.monitoring import AgentLogger, LogLevel
from smolagents.utils import AgentError

from .framework_servers import BACKENDS, local_server, plain_jupyter_server, server_target  # noqa: F401

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [step, 4, 9])\nplt.show()"


class ScriptedModel(Model):
    """A model that answers with the next code action of its script, and keeps what it saw."""

    def __init__(self, actions: list[str]) -> None:
        super().__init__(model_id="scripted")
        self.actions = list(actions)
        self.seen: list[list[ChatMessage]] = []

    def generate(self, messages: list[ChatMessage], **kwargs: Any) -> ChatMessage:
        self.seen.append(list(messages))
        code = self.actions.pop(0)
        return ChatMessage(
            role=MessageRole.ASSISTANT, content=f"Thought: next.\n<code>\n{code}\n</code>"
        )


def text_seen(model: ScriptedModel, call: int) -> str:
    """The text of every message the model got on its call number ``call``."""
    parts = []
    for message in model.seen[call]:
        content = message.content
        if isinstance(content, str):
            parts.append(content)
        else:
            parts.extend(str(item.get("text", "")) for item in content or [])
    return "\n".join(parts)


def images_seen(model: ScriptedModel, call: int) -> list[Any]:
    """The images among the messages of the model's call number ``call``."""
    return [
        item["image"]
        for message in model.seen[call]
        if isinstance(message.content, list)
        for item in message.content
        if item.get("type") == "image"
    ]


@pytest.fixture
def logger() -> AgentLogger:
    return AgentLogger(level=LogLevel.OFF)


@tool
def double(number: int) -> int:
    """Doubles a number.

    Args:
        number: The number to double.
    """
    return number * 2


def test_agent_keeps_state_sees_images_errors_and_tools_and_answers(
    server_target: tuple[str, LocalJupyterServer | JupyterConnectionInfo],
    tmp_path: Path,
    logger: AgentLogger,
) -> None:
    name, server = server_target
    model = ScriptedModel(
        [
            "step = 1\nprint('first step', double(21))",
            f"step += 1\n{PLOT}",
            "print('about to fail')\n{}['missing']",
            "final_answer({'step': step, 'text': 'x' * 250_000})",
        ]
    )
    executor = JupyterExecutor(server, [], logger, output_dir=tmp_path, timeout=30)
    assert executor.executor.backend == BACKENDS[name]
    agent = CodeAgent(
        tools=[double],
        model=model,
        executor=executor,
        logger=logger,
        step_callbacks=[executor.attach_images],
        max_steps=6,
    )
    with agent:
        answer = agent.run("Compute things.")
    # The final answer comes back whole: far past the server's 100,000-character cut.
    assert answer == {"step": 2, "text": "x" * 250_000}
    # A tool sent into the kernel, and state from step to step.
    assert "first step 42" in text_seen(model, 1)
    # The figure of step 2 reached the model as an image of the next call.
    (image,) = images_seen(model, 2)
    assert image.width > 300
    assert image.height > 200
    # The error with its earlier output and traceback reached the model.
    after_error = text_seen(model, 3)
    assert "about to fail" in after_error
    assert "KeyError" in after_error
    assert "'missing'" in after_error
    # cleanup() deleted the session.
    assert executor.executor.closed


def test_timeout_is_an_agent_error_and_state_survives(
    local_server: LocalJupyterServer, tmp_path: Path, logger: AgentLogger
) -> None:
    executor = JupyterExecutor(local_server, [], logger, output_dir=tmp_path, timeout=2)
    try:
        executor.send_variables({"given": [1, 2, 3]})
        with pytest.raises(AgentError, match="Timeout"):
            executor("kept = sum(given)\nimport time\ntime.sleep(60)")
        assert executor("print(kept)").logs.strip() == "6"
    finally:
        executor.cleanup()


def test_additional_imports_are_installed_quietly_and_an_executor_of_ours_works(
    local_server: LocalJupyterServer, tmp_path: Path, logger: AgentLogger
) -> None:
    with JupyterCodeExecutor(local_server, output_dir=tmp_path) as ours:
        executor = JupyterExecutor(additional_imports=["pip"], logger=logger, executor=ours)
        assert executor.installed_packages == ["pip"]
        assert executor("x = 5\nx * 2").logs.strip() == "10"
        executor.cleanup()
        assert ours.closed


def test_server_and_executor_together_are_refused(local_server: LocalJupyterServer) -> None:
    with pytest.raises(TypeError, match="either a server or an executor"):
        JupyterExecutor()


def test_importing_the_client_imports_no_framework() -> None:
    """The light client stays light: the frameworks load only with their adapter modules."""
    frameworks = [
        "autogen_core",
        "autogen",
        "ag2",
        "smolagents",
        "agents",
        "langchain_core",
        "pydantic",
    ]
    code = (
        "import sys, jupyter_exec_client, jupyter_exec_client.integrations\n"
        f"print([name for name in {frameworks!r} if name in sys.modules])"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
    adapter = (
        "import sys, jupyter_exec_client.integrations.smolagents\n"
        "print('smolagents' in sys.modules)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", adapter], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "True"
