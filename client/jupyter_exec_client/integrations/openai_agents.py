"""A tool of the OpenAI Agents SDK that runs Python in a stateful Jupyter kernel.

``pip install "jupyter-exec-client[openai-agents]"``::

    from agents import Agent, Runner
    from jupyter_exec_client import AsyncJupyterCodeExecutor, LocalJupyterServer
    from jupyter_exec_client.integrations.openai_agents import jupyter_tool

    with LocalJupyterServer() as server:
        async with AsyncJupyterCodeExecutor(server, output_dir="out") as executor:
            agent = Agent(name="analyst", tools=[jupyter_tool(executor)])
            result = await Runner.run(agent, "Plot y = x**2")
"""

from __future__ import annotations

import base64

from agents import FunctionTool, ToolOutputImage, ToolOutputText, function_tool

from jupyter_exec_client.integrations._common import (
    TOOL_DESCRIPTION,
    AnyExecutor,
    check_executor,
    run_code_async,
)

__all__ = ["jupyter_tool"]


def jupyter_tool(
    executor: AnyExecutor, *, name: str = "run_python", description: str = TOOL_DESCRIPTION
) -> FunctionTool:
    """A ``FunctionTool`` taking ``code`` and running it in ``executor``'s session.

    ``executor`` is ours, async or blocking (which then runs in a thread). The tool returns
    the text (printed output, results, tracebacks; a failure says so) as ``ToolOutputText``,
    then each image the code showed as a ``ToolOutputImage`` with a ``data:`` URL. Its
    session, timeout and ``output_dir`` are the executor's.
    """
    check_executor(executor)

    async def run_python(code: str) -> list[ToolOutputText | ToolOutputImage]:
        """Run Python code in the session's kernel.

        Args:
            code: The Python code to run.
        """
        run = await run_code_async(executor, code)
        outputs: list[ToolOutputText | ToolOutputImage] = [
            ToolOutputText(text=run.text_for_model())
        ]
        outputs.extend(
            ToolOutputImage(
                image_url=f"data:{image.mime_type};base64,"
                + base64.b64encode(image.data).decode("ascii")
            )
            for image in run.images
        )
        return outputs

    return function_tool(run_python, name_override=name, description_override=description)
