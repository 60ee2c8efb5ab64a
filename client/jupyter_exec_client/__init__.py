"""jupyter_exec_client: run code in stateful Jupyter kernels, the way AutoGen's executor does.

A light client (only ``requests``) for the agent-session API of the ``jupyter_exec_ext``
server extension; servers without it (a plain Jupyter server, Kernel Gateway) are used
through their kernels API and a kernel websocket (``pip install
"jupyter-exec-client[websocket]"``)::

    from jupyter_exec_client import JupyterCodeExecutor, LocalJupyterServer, CodeBlock

    with LocalJupyterServer() as server, JupyterCodeExecutor(server) as executor:
        result = executor.execute_code_blocks([CodeBlock("x = 6 * 7\\nprint(x)", "python")])
        print(result.exit_code, result.output)
"""

from __future__ import annotations

from ._version import __version__
from .blocks import CodeBlock, IPythonCodeResult, MarkdownCodeExtractor
from .connection import JupyterConnectable, JupyterConnectionInfo

# Imports the docker package only when a DockerJupyterServer is made.
from .docker_server import DockerJupyterServer
from .errors import (
    APIError,
    AuthenticationError,
    BackgroundUnsupportedError,
    ExecutionNotFoundError,
    ExecutorClosedError,
    ExtensionMissingError,
    JupyterExecError,
    ServerConnectionError,
    ServerStartError,
    SessionLostError,
    SessionNotFoundError,
    UnknownKernelError,
    WorkspaceFileNotFoundError,
    WorkspacePathError,
    WorkspaceUnavailableError,
)
from .execution import AsyncExecution, Execution
from .executor import AsyncJupyterCodeExecutor, JupyterCodeExecutor
from .local_server import LocalJupyterServer
from .outputs import CodeError, Display
from .prompts import SYSTEM_MESSAGE

__all__ = [
    "SYSTEM_MESSAGE",
    "APIError",
    "AsyncExecution",
    "AsyncJupyterCodeExecutor",
    "AuthenticationError",
    "BackgroundUnsupportedError",
    "CodeBlock",
    "CodeError",
    "Display",
    "DockerJupyterServer",
    "Execution",
    "ExecutionNotFoundError",
    "ExecutorClosedError",
    "ExtensionMissingError",
    "IPythonCodeResult",
    "JupyterCodeExecutor",
    "JupyterConnectable",
    "JupyterConnectionInfo",
    "JupyterExecError",
    "LocalJupyterServer",
    "MarkdownCodeExtractor",
    "ServerConnectionError",
    "ServerStartError",
    "SessionLostError",
    "SessionNotFoundError",
    "UnknownKernelError",
    "WorkspaceFileNotFoundError",
    "WorkspacePathError",
    "WorkspaceUnavailableError",
    "__version__",
]
