"""Code blocks in, results out: the data an agent framework exchanges with an executor."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "PYTHON_LANGUAGES",
    "SHELL_LANGUAGES",
    "CodeBlock",
    "CodeBlockLike",
    "IPythonCodeResult",
    "MarkdownCodeExtractor",
    "code_for_kernel",
]

#: Fence languages run as Python (IPython) code; a fence without a language is Python too.
PYTHON_LANGUAGES = frozenset({"", "python", "python3", "py", "ipython"})
#: Fence languages run as shell scripts in the session: by ``sh`` for ``sh``, else by bash.
SHELL_LANGUAGES = frozenset({"bash", "sh", "shell"})

# A fenced block: ``` and an optional language (more words on the fence line are ignored),
# the code, then ``` on a line of its own. The same shape AutoGen's extractor matches.
_FENCED_BLOCK = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\r?\n(.*?)\r?\n[ \t]*```", re.DOTALL)


class CodeBlockLike(Protocol):
    """Any code block: AutoGen's ``CodeBlock`` works as well as ours."""

    @property
    def code(self) -> str:
        """The code."""
        ...

    @property
    def language(self) -> str:
        """The language named on the fence."""
        ...


@dataclass
class CodeBlock:
    """A block of code and its language, as found in a message."""

    code: str
    language: str = "python"


@dataclass
class IPythonCodeResult:
    """What running code blocks gave (AutoGen's fields): ``exit_code`` 0 when all succeeded,
    the text ``output``, and the paths of the files saved from rich output.

    Beyond AutoGen's fields, ``workspace_changes`` lists the files the blocks created,
    modified or deleted in the session's working folder (``{"path", "size", "change"}``,
    paths relative to that folder; empty on servers without the agent-session API).
    """

    exit_code: int
    output: str
    output_files: list[str] = field(default_factory=list)
    workspace_changes: list[dict[str, Any]] = field(default_factory=list)


class MarkdownCodeExtractor:
    """Finds the fenced code blocks of a message written in markdown."""

    def extract_code_blocks(self, message: Any) -> list[CodeBlock]:
        """The fenced code blocks of ``message``, in order.

        ``message`` is a string, an AutoGen-style message (a dict or an object with
        ``content``), or a list of content parts (``{"type": "text", "text": ...}``). A fence
        without a language gives a Python block.
        """
        text = message_text(message)
        return [
            CodeBlock(code=code, language=language.lower() or "python")
            for language, code in _FENCED_BLOCK.findall(text)
        ]


def message_text(message: Any) -> str:
    """The text of a message in any of the shapes agent frameworks use."""
    if message is None:
        return ""
    if isinstance(message, str):
        return message
    if isinstance(message, dict):
        if "content" in message:
            return message_text(message["content"])
        return str(message["text"]) if message.get("type") == "text" else ""
    if isinstance(message, list | tuple):
        return "\n".join(text for part in message if (text := message_text(part)))
    content = getattr(message, "content", None)
    return message_text(content) if content is not None else ""


def code_for_kernel(code: str, language: str) -> str | None:
    """The code to send to an IPython kernel for a block, or None for a language it can't run.

    Shell blocks become an IPython ``%%bash`` (``%%sh`` for ``sh``) cell: their output streams as
    it comes, an interrupt stops the script, and since IPython 8 a non-zero exit status
    raises ``CalledProcessError``, so a failing script fails the block.
    """
    language = language.strip().lower()
    if language in PYTHON_LANGUAGES:
        return code
    if language in SHELL_LANGUAGES:
        magic = "sh" if language == "sh" else "bash"
        return f"%%{magic}\n{code}"
    return None
