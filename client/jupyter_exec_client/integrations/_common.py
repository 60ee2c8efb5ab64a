"""What the tool adapters share: run the code a model sent, and split the result into the
text a model reads and the images it can look at."""

from __future__ import annotations

import asyncio
import mimetypes
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_exec_client.blocks import CodeBlock, IPythonCodeResult
from jupyter_exec_client.executor import AsyncJupyterCodeExecutor, JupyterCodeExecutor

__all__ = ["TOOL_DESCRIPTION", "AnyExecutor", "CodeRun", "Image", "run_code", "run_code_async"]

AnyExecutor = JupyterCodeExecutor | AsyncJupyterCodeExecutor

#: What the tools tell a model about themselves.
TOOL_DESCRIPTION = (
    "Run Python code in a stateful Jupyter kernel: variables, imports and functions persist "
    "from one call to the next. Printed text, results and tracebacks come back as text; "
    "plots and images (matplotlib figures, PIL images, IPython.display.Image) come back as "
    "images. Shell commands run with a leading '!' (for example '!pip install requests')."
)

# One call at a time per blocking executor: tools of async frameworks run it in threads,
# and an executor's connection serves one request at a time.
_locks: weakref.WeakKeyDictionary[JupyterCodeExecutor, threading.Lock] = weakref.WeakKeyDictionary()
_locks_lock = threading.Lock()


@dataclass
class Image:
    """An image the code showed: its bytes, its media type and where it was saved."""

    data: bytes
    mime_type: str
    path: Path


@dataclass
class CodeRun:
    """One run of a model's code: did it succeed, its text, its images."""

    ok: bool
    text: str
    images: list[Image] = field(default_factory=list)
    result: IPythonCodeResult | None = None

    @classmethod
    def from_result(cls, result: IPythonCodeResult) -> CodeRun:
        """Read the images the executor saved into ``output_dir`` back in."""
        images = []
        for name in result.output_files:
            path = Path(name)
            mime_type = mimetypes.guess_type(path.name)[0] or ""
            # SVG is text a model's image input does not take; it stays a saved file.
            if mime_type.startswith("image/") and mime_type != "image/svg+xml":
                images.append(Image(path.read_bytes(), mime_type, path))
        return cls(result.exit_code == 0, result.output, images, result)

    def text_for_model(self) -> str:
        """The text, saying so when the code failed (a model may not see an exit status)."""
        text = self.text if self.text.strip() else "(no output)"
        return text if self.ok else f"{text}\n[the code failed]"


def _lock_of(executor: JupyterCodeExecutor) -> threading.Lock:
    with _locks_lock:
        lock = _locks.get(executor)
        if lock is None:
            lock = _locks[executor] = threading.Lock()
        return lock


def run_code(executor: JupyterCodeExecutor, code: str) -> CodeRun:
    """Run Python ``code`` in the executor's session (blocking)."""
    if not isinstance(code, str):
        raise TypeError(f"code must be a string of Python code, not {type(code).__name__}")
    with _lock_of(executor):
        result = executor.execute_code_blocks([CodeBlock(code=code, language="python")])
    return CodeRun.from_result(result)


async def run_code_async(executor: AnyExecutor, code: str) -> CodeRun:
    """Run Python ``code`` in the executor's session; a blocking executor runs in a thread."""
    if isinstance(executor, AsyncJupyterCodeExecutor):
        if not isinstance(code, str):
            raise TypeError(f"code must be a string of Python code, not {type(code).__name__}")
        result = await executor.execute_code_blocks([CodeBlock(code=code, language="python")])
        return CodeRun.from_result(result)
    return await asyncio.to_thread(run_code, executor, code)


def check_executor(executor: object) -> AnyExecutor:
    """The executor, or a TypeError saying what a tool needs."""
    if not isinstance(executor, JupyterCodeExecutor | AsyncJupyterCodeExecutor):
        raise TypeError(
            "executor must be a jupyter_exec_client JupyterCodeExecutor or "
            f"AsyncJupyterCodeExecutor, not {type(executor).__name__}"
        )
    return executor
