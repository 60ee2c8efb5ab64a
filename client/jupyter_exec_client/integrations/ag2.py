"""A tool for ag2 1.x agents (PyPI ``ag2``) that runs Python in a stateful Jupyter kernel.

``pip install "jupyter-exec-client[ag2]"``::

    from ag2 import Agent
    from jupyter_exec_client import AsyncJupyterCodeExecutor, LocalJupyterServer
    from jupyter_exec_client.integrations.ag2 import jupyter_tool

    with LocalJupyterServer() as server:
        async with AsyncJupyterCodeExecutor(server, output_dir="out") as executor:
            agent = Agent("analyst", "You analyse data.", config=config,
                          tools=[jupyter_tool(executor)])
            reply = await agent.ask("Plot y = x**2")

ag2 1.x's own ``SandboxCodeTool`` runs each call in a fresh process; here variables live on
from call to call, and plots come back as images. AG2 Classic (PyPI ``autogen`` 0.14) takes
:class:`jupyter_exec_client.JupyterCodeExecutor` itself as its executor.
"""

from __future__ import annotations

from typing import Any

from ag2 import ImageInput, TextInput
from ag2.events import ToolResult
from ag2.tools.final import tool
from ag2.tools.final.function_tool import FunctionTool

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
    """An ag2 1.x tool taking ``code`` and running it in ``executor``'s session.

    ``executor`` is ours, async or blocking (which then runs in a thread). The tool's result
    is the text (printed output, results, tracebacks; a failure says so) and each image the
    code showed as an ``ImageInput``, which ag2 sends to the model as an image. The session,
    timeout and ``output_dir`` are the executor's.
    """
    check_executor(executor)

    async def run_python(code: str) -> ToolResult:
        run = await run_code_async(executor, code)
        parts: list[Any] = [TextInput(run.text_for_model())]
        parts.extend(
            ImageInput(data=image.data, media_type=image.mime_type)  # type: ignore[call-overload]
            for image in run.images
        )
        return ToolResult(parts=parts)

    return tool(run_python, name=name, description=description)
