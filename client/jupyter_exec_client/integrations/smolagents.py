"""A smolagents remote executor on a Jupyter server: ``CodeAgent(executor=JupyterExecutor(...))``.

``pip install "jupyter-exec-client[smolagents]"``::

    from smolagents import CodeAgent
    from jupyter_exec_client import LocalJupyterServer
    from jupyter_exec_client.integrations.smolagents import JupyterExecutor

    with LocalJupyterServer() as server:
        executor = JupyterExecutor(server, [], logger, output_dir="out")
        agent = CodeAgent(tools=[], model=model, executor=executor,
                          step_callbacks=[executor.attach_images])
"""

from __future__ import annotations

import re
from os import PathLike
from pathlib import Path
from typing import Any

import PIL.Image
from smolagents.local_python_executor import CodeOutput  # type: ignore[import-untyped]
from smolagents.monitoring import AgentLogger, LogLevel  # type: ignore[import-untyped]
from smolagents.remote_executors import RemotePythonExecutor  # type: ignore[import-untyped]
from smolagents.utils import AgentError  # type: ignore[import-untyped]

from jupyter_exec_client.blocks import CodeBlock
from jupyter_exec_client.connection import JupyterConnectable, JupyterConnectionInfo
from jupyter_exec_client.executor import JupyterCodeExecutor
from jupyter_exec_client.integrations._common import CodeRun

__all__ = ["JupyterExecutor"]

#: The type of the display that carries a final answer out of the kernel whole: as a file,
#: it is never cut the way ``output`` is past the server's ``max_output_chars``.
FINAL_ANSWER_MIME_TYPE = "application/vnd.jupyter-exec.smolagents-final-answer"

# Run after a cell that raised smolagents' FinalAnswerException: IPython keeps the exception
# in sys.last_value, and its value (smolagents' "safe:..."/"pickle:..." text) goes out as
# base64 in a display of its own type. Names are cleaned up: the agent's namespace stays its own.
_SEND_FINAL_ANSWER = f"""
def _jupyter_exec_send_final_answer():
    import base64, sys
    from IPython.display import publish_display_data
    error = getattr(sys, "last_value", None)
    if type(error).__name__ == {RemotePythonExecutor.FINAL_ANSWER_EXCEPTION!r}:
        value = str(getattr(error, "value", error))
        data = base64.b64encode(value.encode("utf-8", "surrogatepass")).decode("ascii")
        publish_display_data({{{FINAL_ANSWER_MIME_TYPE!r}: data}})
    sys.last_value = None
_jupyter_exec_send_final_answer()
del _jupyter_exec_send_final_answer
"""
_FINAL_ANSWER_FILE = re.compile(re.escape(FINAL_ANSWER_MIME_TYPE) + r" data saved to (.+)")


class JupyterExecutor(RemotePythonExecutor):  # type: ignore[misc]  # smolagents is untyped
    """Runs a ``CodeAgent``'s code in a stateful kernel of its own on a Jupyter server.

    ``server`` is a ``LocalJupyterServer``, anything with ``connection_info``, or a
    ``JupyterConnectionInfo``; ``additional_imports`` are pip-installed into the kernel (as
    smolagents' other remote executors do); ``logger`` is the agent's ``AgentLogger`` (a new
    one when None). ``kernel_name``, ``timeout`` (seconds per step: the kernel is interrupted,
    the agent sees a ``Timeout:`` error and its variables survive), ``output_dir`` (where
    images are saved), ``fallback`` and ``env`` are :class:`JupyterCodeExecutor`'s. An
    ``executor`` of ours may be given instead of ``server``: it is used as it is, and stopped
    by :meth:`cleanup`.

    Each step's images (figures, PIL images) are in :attr:`last_images`; the step's output is
    the last of them when there is one. ``step_callbacks=[executor.attach_images]`` shows them
    to a vision model as the step's observation images.
    """

    def __init__(
        self,
        server: JupyterConnectable | JupyterConnectionInfo | None = None,
        additional_imports: list[str] | None = None,
        logger: AgentLogger | None = None,
        allow_pickle: bool = False,
        *,
        kernel_name: str = "python3",
        timeout: int | float = 60,
        output_dir: str | PathLike[str] = ".",
        fallback: bool = True,
        env: dict[str, str] | None = None,
        executor: JupyterCodeExecutor | None = None,
    ) -> None:
        """Open the session and install ``additional_imports`` into it."""
        if (server is None) == (executor is None):
            raise TypeError("JupyterExecutor needs either a server or an executor, not both")
        super().__init__(
            list(additional_imports or []),
            logger if logger is not None else AgentLogger(level=LogLevel.INFO),
            allow_pickle,
        )
        if executor is None:
            assert server is not None
            executor = JupyterCodeExecutor(
                server, kernel_name, timeout, output_dir, fallback=fallback, env=env
            )
        self.executor = executor
        #: The images the last step showed, as PIL images.
        self.last_images: list[PIL.Image.Image] = []
        try:
            self.installed_packages = self.install_packages(self.additional_imports)
        except BaseException:
            self.executor.stop()
            raise
        self.logger.log(
            f"Jupyter session {self.executor.session_id or self.executor.kernel_id} is running",
            level=LogLevel.INFO,
        )

    def run_code_raise_errors(self, code: str) -> CodeOutput:
        """Run ``code``; a ``final_answer`` call ends it with the answer, decoded whole.

        Raises smolagents' ``AgentError`` with the printed output and the traceback when the
        code fails (a timeout and a kernel death included).
        """
        run = CodeRun.from_result(
            self.executor.execute_code_blocks([CodeBlock(code=code, language="python")])
        )
        self.last_images = [PIL.Image.open(image.path) for image in run.images]
        if not run.ok:
            if RemotePythonExecutor.FINAL_ANSWER_EXCEPTION in run.text:
                answer = self._final_answer()
                if answer is not None:
                    return CodeOutput(
                        output=self._deserialize_final_answer(answer, self.allow_pickle),
                        logs=_before_traceback(run.text),
                        is_final_answer=True,
                    )
            raise AgentError(f"Executing code yielded an error:\n{run.text}", self.logger)
        output = self.last_images[-1] if self.last_images else None
        return CodeOutput(output=output, logs=run.text, is_final_answer=False)

    def _final_answer(self) -> str | None:
        """The serialized value of the FinalAnswerException just raised, read whole."""
        result = self.executor.execute_code_blocks([CodeBlock(_SEND_FINAL_ANSWER, "python")])
        match = _FINAL_ANSWER_FILE.search(result.output)
        if match is None:
            return None
        path = Path(match[1].strip())
        try:
            return path.read_bytes().decode("utf-8", "surrogatepass")
        finally:
            path.unlink(missing_ok=True)

    def attach_images(self, memory_step: Any, agent: Any = None) -> None:
        """A step callback: the step's images become its ``observations_images``."""
        if self.last_images and hasattr(memory_step, "observations_images"):
            memory_step.observations_images = [image.copy() for image in self.last_images]

    def cleanup(self) -> None:
        """Delete the session (``CodeAgent.cleanup()`` and its ``with`` block call this)."""
        self.executor.stop()


def _before_traceback(text: str) -> str:
    """What a step printed before its final answer: the text up to the traceback."""
    index = text.find("---------------------------------------------------------------------------")
    if index == -1:
        index = text.find("Traceback (most recent call last)")
    return text[:index].rstrip("\n") if index != -1 else ""
