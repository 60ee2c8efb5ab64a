"""A LangChain tool that runs Python in a stateful Jupyter kernel: ``JupyterTool(executor=...)``.

``pip install "jupyter-exec-client[langchain]"`` (langchain-core 1.x)::

    from jupyter_exec_client import JupyterCodeExecutor, LocalJupyterServer
    from jupyter_exec_client.integrations.langchain import JupyterTool

    with LocalJupyterServer() as server, JupyterCodeExecutor(server, output_dir="out") as executor:
        tool = JupyterTool(executor=executor)
        model_with_tools = chat_model.bind_tools([tool])
"""

from __future__ import annotations

import base64
from typing import Any

from langchain_core.tools import BaseTool
from pydantic import BaseModel, ConfigDict, Field

from jupyter_exec_client.executor import AsyncJupyterCodeExecutor
from jupyter_exec_client.integrations._common import (
    TOOL_DESCRIPTION,
    AnyExecutor,
    CodeRun,
    check_executor,
    run_code,
    run_code_async,
)

__all__ = ["JupyterTool", "JupyterToolInput"]


class JupyterToolInput(BaseModel):
    """The tool's one argument."""

    code: str = Field(description="The Python code to run in the kernel.")


class JupyterTool(BaseTool):
    """Runs the model's Python code in the executor's session; state lives across calls.

    The tool message's content is the text (printed output, results, tracebacks), then each
    image the code showed as an image content block (base64); its ``artifact`` is
    ``{"exit_code", "output_files", "workspace_changes"}``. It runs sync (``invoke``) with a
    ``JupyterCodeExecutor`` and async (``ainvoke``) with either executor (a blocking one in
    a thread); an ``AsyncJupyterCodeExecutor`` cannot serve ``invoke``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = "run_python"
    description: str = TOOL_DESCRIPTION
    args_schema: type[BaseModel] = JupyterToolInput
    response_format: str = "content_and_artifact"  # type: ignore[assignment]
    executor: Any = Field(exclude=True)

    def __init__(self, *, executor: AnyExecutor, **kwargs: Any) -> None:
        """A tool on ``executor`` (ours, sync or async); other fields as BaseTool's."""
        super().__init__(executor=check_executor(executor), **kwargs)

    def _run(self, code: str, **kwargs: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        if isinstance(self.executor, AsyncJupyterCodeExecutor):
            raise TypeError(
                "JupyterTool on an AsyncJupyterCodeExecutor runs only asynchronously "
                "(ainvoke); use a JupyterCodeExecutor for invoke"
            )
        return _tool_output(run_code(self.executor, code))

    async def _arun(self, code: str, **kwargs: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return _tool_output(await run_code_async(self.executor, code))


def _tool_output(run: CodeRun) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The content blocks of the tool message, and its artifact."""
    content: list[dict[str, Any]] = [{"type": "text", "text": run.text_for_model()}]
    content.extend(
        {
            "type": "image",
            "base64": base64.b64encode(image.data).decode("ascii"),
            "mime_type": image.mime_type,
        }
        for image in run.images
    )
    result = run.result
    artifact = {
        "exit_code": 0 if run.ok else 1,
        "output_files": list(result.output_files) if result else [],
        "workspace_changes": list(result.workspace_changes) if result else [],
    }
    return content, artifact
