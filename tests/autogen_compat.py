"""Checks of what code written for AutoGen's ``JupyterCodeExecutor`` relies on, run by the
client's tests on every path (agent sessions, and the kernels API of plain servers).

AutoGen's own test file for that executor (AG2 Classic's
``test/coding/test_embedded_ipython_code_executor.py``) asserts the same behaviour.
"""

from __future__ import annotations

import uuid

from jupyter_exec_client import CodeBlock, IPythonCodeResult, JupyterCodeExecutor

#: An install of a package that is there already: without -q pip says "Requirement already
#: satisfied"; --no-index keeps it from asking an index.
SATISFIED_INSTALL = "pip install --no-index pip"


def run(executor: JupyterCodeExecutor, code: str, language: str = "python") -> IPythonCodeResult:
    """Run one block."""
    return executor.execute_code_blocks([CodeBlock(code=code, language=language)])


def check_pip_installs_are_quiet(executor: JupyterCodeExecutor) -> None:
    """``!pip install``, ``%pip install`` and a shell block's ``pip install`` print nothing when
    they succeed; a failed one still shows pip's ``ERROR:`` lines; ``-v`` is kept."""
    quiet = executor.execute_code_blocks(
        [
            CodeBlock(f"!{SATISFIED_INSTALL}", "python"),
            CodeBlock(f"def install():\n    ! {SATISFIED_INSTALL}\ninstall()", "python"),
            CodeBlock(f"!{SATISFIED_INSTALL}", "bash"),
            CodeBlock(f"echo shell\n{SATISFIED_INSTALL}", "bash"),
        ]
    )
    assert quiet == IPythonCodeResult(0, "shell", []), quiet.output
    magic = run(executor, f"%{SATISFIED_INSTALL}")
    assert magic.exit_code == 0
    assert "Requirement already satisfied" not in magic.output
    missing = f"no-such-package-{uuid.uuid4().hex}"
    failed = run(executor, f"!pip install --no-index {missing}")
    # As in IPython (and AutoGen): a failing `!` command does not fail the block.
    assert failed.exit_code == 0
    assert "ERROR: " in failed.output
    assert missing in failed.output
    verbose = run(executor, f"!{SATISFIED_INSTALL} -v")
    assert "Requirement already satisfied" in verbose.output


def check_shell_blocks_of_ipython_lines_run_in_the_kernel(executor: JupyterCodeExecutor) -> None:
    """A ``bash`` block whose every command line starts with ``!`` runs as IPython, with the
    session's variables; any other shell block runs in bash, where ``!echo`` is no command."""
    assert run(executor, "answer = 6 * 7").exit_code == 0
    result = run(executor, '#!/bin/bash\n!echo "hello world!"\n\n  !echo {answer}\n', "bash")
    assert result.exit_code == 0, result.output
    # `!` output comes through IPython's pseudo-terminal, which ends lines with "\r\n".
    assert result.output.splitlines() == ["hello world!", "42"]
    assert run(executor, "!echo from-sh", "sh").output.splitlines() == ["from-sh"]
    mixed = run(executor, "echo from-bash\n!echo kernel", "bash")
    assert mixed.exit_code == 1
    assert mixed.output.startswith("from-bash\n")
    assert "exit status 127" in mixed.output
