"""autogen-agentchat's CodeExecutorAgent on a Jupyter kernel
(pip install "./client[autogen-core]" autogen-agentchat autogen-ext).

A replayed model writes the code; put autogen-ext's OpenAIChatCompletionClient in its place.
"""

import asyncio

from autogen_agentchat.agents import ApprovalResponse, CodeExecutorAgent
from autogen_ext.models.replay import ReplayChatCompletionClient
from jupyter_exec_client import LocalJupyterServer
from jupyter_exec_client.integrations.autogen_core import JupyterCodeExecutor


async def main() -> None:
    model = ReplayChatCompletionClient(["```python\nx = 6 * 7\nprint(x)\n```", "x is 42."])
    with LocalJupyterServer() as server:
        async with JupyterCodeExecutor(server, output_dir=".") as executor:
            agent = CodeExecutorAgent(
                "coder",
                code_executor=executor,
                model_client=model,
                approval_func=lambda request: ApprovalResponse(approved=True, reason="example"),
            )
            async for message in agent.run_stream(task="Compute 6 * 7."):
                print(type(message).__name__, getattr(message, "content", ""))


asyncio.run(main())
