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
    "is_ipython_shell_lines",
    "quiet_pip_installs",
]

#: Fence languages run as Python (IPython) code; a fence without a language is Python too.
PYTHON_LANGUAGES = frozenset({"", "python", "python3", "py", "ipython"})
#: Fence languages run as shell scripts in the session: by ``sh`` for ``sh``, else by bash.
SHELL_LANGUAGES = frozenset({"bash", "sh", "shell"})

# A pip install at the start of a line: `pip`, `pip3`, `python -m pip` (with or without a path),
# then `install`; in Python blocks behind IPython's `!` or `%`. The rule kernel_helper applies
# in the kernel, for kernels that have no helper.
_PIP_COMMAND = r"(?:\S*python[\d.]*[ \t]+-m[ \t]+)?(?:\S*/)?pip[\d.]*[ \t]+install"
_PIP_INSTALL_LINES = {
    "shell": re.compile(rf"^(?P<head>[ \t]*{_PIP_COMMAND})(?P<tail>(?:[ \t].*)?)$", re.MULTILINE),
    "ipython": re.compile(
        rf"^(?P<head>[ \t]*(?:![ \t]*|%){_PIP_COMMAND})(?P<tail>(?:[ \t].*)?)$", re.MULTILINE
    ),
}
# An option that sets pip's verbosity: a command that has one is left as written.
_PIP_VERBOSITY = re.compile(r"(?:^|\s)(?:-[qv]+|--quiet|--verbose)(?=\s|$)")

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


def code_for_kernel(code: str, language: str, *, quiet_pip: bool = False) -> str | None:
    """The code to send to an IPython kernel for a block, or None for a language it can't run.

    Shell blocks become an IPython ``%%bash`` (``%%sh`` for ``sh``) cell: their output streams as
    it comes, an interrupt stops the script, and since IPython 8 a non-zero exit status
    raises ``CalledProcessError``, so a failing script fails the block. A shell block written
    as IPython shell lines (see :func:`is_ipython_shell_lines`) is sent as IPython code, as
    AutoGen sends every block (each line's indent removed, which Python would refuse).

    ``quiet_pip`` adds ``-qqq`` to its pip installs (``!pip install`` and ``%pip install`` lines
    of IPython code, ``pip install`` lines of shell scripts), for a kernel without
    kernel_helper, which does that in the kernel.
    """
    language = language.strip().lower()
    if language in SHELL_LANGUAGES and is_ipython_shell_lines(code):
        # Indented as a script may be, the lines would be an IndentationError in Python.
        code = "\n".join(line.lstrip() for line in code.splitlines())
        language = "ipython"
    if language in PYTHON_LANGUAGES:
        return quiet_pip_installs(code, "ipython") if quiet_pip else code
    if language in SHELL_LANGUAGES:
        magic = "sh" if language == "sh" else "bash"
        script = quiet_pip_installs(code, "shell") if quiet_pip else code
        return f"%%{magic}\n{script}"
    return None


def is_ipython_shell_lines(code: str) -> bool:
    """Whether a shell block is written as IPython shell lines: ``!echo hi``, ``!pip install x``.

    True when every line that is neither blank nor a ``#`` comment starts with ``!`` (and
    there is one). Models taught by AutoGen's prompts write such ``bash`` blocks, which a
    shell cannot run (``!echo`` is no command there), so they run in the kernel as IPython.
    """
    commands = [
        line for line in (raw.strip() for raw in code.splitlines()) if line and line[0] != "#"
    ]
    return bool(commands) and all(line.startswith("!") for line in commands)


def quiet_pip_installs(code: str, syntax: str) -> str:
    """Add ``-qqq`` to the lines of ``code`` that are pip installs without a verbosity option.

    ``syntax`` is ``"ipython"`` (``!pip install`` and ``%pip install`` lines) or ``"shell"``
    (``pip install`` lines of a script). The lines change as written; a line inside a string
    literal that looks like one changes too (kernel_helper, working on the parsed code, does
    not do that).
    """

    def add_quiet_option(match: re.Match[str]) -> str:
        if _PIP_VERBOSITY.search(match["tail"]):
            return match[0]  # the command says how verbose pip should be
        return f"{match['head']} -qqq{match['tail']}"

    return _PIP_INSTALL_LINES[syntax].sub(add_quiet_option, code)
