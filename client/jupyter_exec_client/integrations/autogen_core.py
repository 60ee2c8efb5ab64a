"""An autogen-core ``CodeExecutor`` on a Jupyter server: stateful Python with images.

``pip install "jupyter-exec-client[autogen-core]"``. For autogen-agentchat's
``CodeExecutorAgent`` and autogen-ext's ``PythonCodeExecutionTool``::

    from autogen_agentchat.agents import CodeExecutorAgent
    from jupyter_exec_client import LocalJupyterServer
    from jupyter_exec_client.integrations.autogen_core import JupyterCodeExecutor

    with LocalJupyterServer() as server:
        async with JupyterCodeExecutor(server, output_dir="out") as executor:
            agent = CodeExecutorAgent("executor", code_executor=executor)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autogen_core import CancellationToken, Component
from autogen_core.code_executor import CodeBlock, CodeExecutor, CodeResult
from pydantic import BaseModel, Field, SecretStr
from typing_extensions import Self

from jupyter_exec_client.connection import (
    JupyterConnectionInfo,
    as_connection_info,
)
from jupyter_exec_client.executor import AsyncJupyterCodeExecutor

__all__ = ["JupyterCodeExecutor", "JupyterCodeExecutorConfig", "JupyterCodeResult"]


class JupyterCodeResult(CodeResult):
    """A result with the files saved from rich output, as autogen-ext's Jupyter executor has.

    ``workspace_changes`` lists the files the code created, modified or deleted in the
    session's working folder (empty on servers without the agent-session API).
    """

    output_files: list[Path]
    workspace_changes: list[dict[str, Any]]

    def __init__(
        self,
        exit_code: int,
        output: str,
        output_files: list[Path],
        workspace_changes: list[dict[str, Any]] | None = None,
    ) -> None:
        """The fields; ``workspace_changes`` empty by default."""
        super().__init__(exit_code=exit_code, output=output)
        self.output_files = output_files
        self.workspace_changes = workspace_changes or []


class JupyterCodeExecutorConfig(BaseModel):
    """What ``dump_component()`` keeps of an executor: the server and the arguments.

    The token and the environment's values are secrets: pydantic shows them as ``**********``
    when the config is written as JSON (``model_dump_json``), as autogen's API keys are.
    """

    url: str = Field(description="The server's base URL, e.g. http://127.0.0.1:8888/.")
    token: SecretStr | None = None
    verify: bool | str = Field(
        default=True, description="Check TLS certificates: True, False, or a CA bundle's path."
    )
    kernel_name: str = "python3"
    timeout: float = Field(default=60, ge=1, description="Seconds a code block may run.")
    output_dir: str = Field(default=".", description="Where images and other files are saved.")
    fallback: bool = Field(
        default=True, description="Use a plain server's kernels API when it lacks the extension."
    )
    env: dict[str, SecretStr] = Field(default_factory=dict)


class JupyterCodeExecutor(
    AsyncJupyterCodeExecutor, CodeExecutor, Component[JupyterCodeExecutorConfig]
):
    """Runs code blocks in a stateful Jupyter kernel of its own (an autogen-core executor).

    The arguments are those of :class:`jupyter_exec_client.AsyncJupyterCodeExecutor`: a
    server (a ``LocalJupyterServer``, anything with ``connection_info``, or a
    ``JupyterConnectionInfo``), ``kernel_name``, ``timeout`` (seconds per block; the kernel is
    interrupted and what was printed kept), ``output_dir`` (images, HTML and other files are
    saved there and named in ``output``), ``fallback`` and ``env``.

    The session is created by :meth:`start` (``async with``, or the first execution) and
    deleted by :meth:`stop`; :meth:`restart` clears its state. A cancelled
    ``cancellation_token`` interrupts the kernel. The config that ``dump_component()`` gives
    names the server by URL and token: a config loaded back connects to that server, which
    must be running then.
    """

    component_config_schema = JupyterCodeExecutorConfig
    component_provider_override = (
        "jupyter_exec_client.integrations.autogen_core.JupyterCodeExecutor"
    )

    async def execute_code_blocks(  # type: ignore[override]
        self, code_blocks: list[CodeBlock], cancellation_token: CancellationToken | None = None
    ) -> JupyterCodeResult:
        """Run the blocks in order (Python, or bash/sh/shell); ``exit_code`` 0 when all
        succeeded. After a failing block the rest are not run; earlier output is kept.
        Cancelling ``cancellation_token`` cancels the call and interrupts the kernel."""
        result = await super().execute_code_blocks(code_blocks, cancellation_token)
        return JupyterCodeResult(
            exit_code=result.exit_code,
            output=result.output,
            output_files=[Path(path) for path in result.output_files],
            workspace_changes=result.workspace_changes,
        )

    async def __aenter__(self) -> Self:
        """Start the executor (both bases do; this says it returns this class)."""
        await self.start()
        return self

    def _to_config(self) -> JupyterCodeExecutorConfig:
        info = self.connection_info
        return JupyterCodeExecutorConfig(
            url=info.base_url,
            token=SecretStr(info.token) if info.token is not None else None,
            verify=info.verify,
            kernel_name=self.kernel_name,
            timeout=self.timeout,
            output_dir=str(self.output_dir),
            fallback=self._core.fallback,
            env={name: SecretStr(value) for name, value in self._core.env.items()},
        )

    @classmethod
    def _from_config(cls, config: JupyterCodeExecutorConfig) -> Self:
        token = config.token.get_secret_value() if config.token is not None else None
        info = JupyterConnectionInfo.from_url(config.url, token=token, verify=config.verify)
        return cls(
            as_connection_info(info),
            kernel_name=config.kernel_name,
            timeout=config.timeout,
            output_dir=config.output_dir,
            fallback=config.fallback,
            env={name: value.get_secret_value() for name, value in config.env.items()},
        )
