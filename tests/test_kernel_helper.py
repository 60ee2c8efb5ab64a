"""Tests for kernel_helper, run against real IPython kernels (no mocks).

Each test sends code to a kernel started with jupyter_client and looks at the
iopub messages a frontend would see.
"""

from __future__ import annotations

import builtins
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager, start_new_kernel

import kernel_helper

REPO_ROOT = Path(__file__).resolve().parents[1]

Output = list[tuple[str, dict[str, Any]]]


def kernel_env(*, helper_importable: bool) -> dict[str, str]:
    """Environment for a kernel; kernel_helper is importable only if asked for."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if helper_importable:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p
        )
    return env


def start_kernel(cwd: Path, *, helper_importable: bool = True) -> tuple[KernelManager, Any]:
    """Start a python3 kernel in ``cwd``; return its manager and blocking client."""
    env = kernel_env(helper_importable=helper_importable)
    return start_new_kernel(kernel_name="python3", cwd=str(cwd), env=env)


def stop_kernel(km: KernelManager, kc: BlockingKernelClient) -> None:
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def run(
    kc: BlockingKernelClient,
    code: str,
    *,
    timeout: float = 60,
    silent: bool = False,
    allow_stdin: bool = True,
) -> Output:
    """Execute ``code``; return its iopub messages as (msg_type, content).

    Waits until the kernel reports idle for this request; raises if that takes
    longer than ``timeout`` seconds in total (so a hanging kernel fails the test).
    ``allow_stdin`` defaults to True, as in a notebook frontend: without our
    patch, ``input()`` would then wait for a reply that never comes.
    """
    msg_id = kc.execute(code, silent=silent, store_history=not silent, allow_stdin=allow_stdin)
    deadline = time.monotonic() + timeout
    output: Output = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"kernel did not finish within {timeout}s: {code!r}")
        msg = kc.get_iopub_msg(timeout=remaining)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        msg_type, content = msg["msg_type"], msg["content"]
        if msg_type == "status":
            if content["execution_state"] == "idle":
                break
            continue
        if msg_type != "execute_input":
            output.append((msg_type, content))
    # Consume the reply too, so that later shell messages match their requests.
    shell_reply(kc, msg_id, timeout=max(deadline - time.monotonic(), 1))
    return output


def shell_reply(kc: BlockingKernelClient, msg_id: str, timeout: float = 30) -> dict[str, Any]:
    """Return the shell reply to request ``msg_id``, skipping stale replies."""
    while True:
        reply: dict[str, Any] = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def run_ok(kc: BlockingKernelClient, code: str, **kwargs: Any) -> Output:
    """Like run(), but fail the test if the code raised."""
    output = run(kc, code, **kwargs)
    errors = [c for t, c in output if t == "error"]
    assert not errors, "\n".join(errors[0]["traceback"])
    return output


def evaluate(kc: BlockingKernelClient, expression: str) -> Any:
    """Return the value of ``expression`` in the kernel (via its repr)."""
    results = [c for t, c in run_ok(kc, expression) if t == "execute_result"]
    assert len(results) == 1, results
    return eval(results[0]["data"]["text/plain"])


def images(output: Output, mime: str = "image/png") -> list[dict[str, Any]]:
    """Displayed outputs (execute_result or display_data) that carry ``mime``."""
    return [
        c
        for t, c in output
        if t in ("execute_result", "display_data") and mime in c.get("data", {})
    ]


def setup_kernel(kc: BlockingKernelClient, working_dir: Path | None = None) -> None:
    """Run the helper's setup code silently, as the server does."""
    wd = None if working_dir is None else str(working_dir)
    output = run(kc, kernel_helper.setup_code(working_dir=wd), silent=True)
    assert output == [], output  # silent setup shows nothing


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A directory that does not exist yet: setup() has to create it.
    return tmp_path_factory.mktemp("session") / "work dir"


@pytest.fixture(scope="module")
def kernel(
    tmp_path_factory: pytest.TempPathFactory, workdir: Path
) -> Iterator[BlockingKernelClient]:
    """One set-up kernel shared by the tests that only run cells in it."""
    km, kc = start_kernel(tmp_path_factory.mktemp("kernel-cwd"))
    try:
        setup_kernel(kc, workdir)
        run_ok(kc, "import matplotlib.pyplot as plt")
        yield kc
    finally:
        stop_kernel(km, kc)


@pytest.fixture
def fresh_kernel(tmp_path: Path) -> Iterator[BlockingKernelClient]:
    """A kernel of its own, not yet set up, for tests that change global state."""
    km, kc = start_kernel(tmp_path, helper_importable=False)
    try:
        yield kc
    finally:
        stop_kernel(km, kc)


FIGURE_CELLS = {
    "show": "plt.plot([1, 2]); plt.show()",
    "figure-last-expression": "fig = plt.figure(); plt.plot([1]); fig",
    "gcf-last-expression": "plt.plot([1]); plt.gcf()",
    "plot-last-line": "plt.plot([1])",
    "subplots-last-expression": "fig, ax = plt.subplots(2); ax[0].plot([1]); fig",
    "display-then-end": "fig = plt.figure(); plt.plot([1]); display(fig)",
    "display-then-show": "plt.plot([1]); display(plt.gcf()); plt.show()",
    "figure-method-show": "fig = plt.figure(); plt.plot([1]); fig.show()",
}


def assert_one_image_per_figure(kc: BlockingKernelClient, code: str, figures: int = 1) -> None:
    output = run_ok(kc, code)
    assert len(images(output)) == figures, output
    assert [c for t, c in output if t == "stream" and c["name"] == "stderr"] == []
    assert evaluate(kc, "len(plt.get_fignums())") == 0  # all closed once shown


@pytest.mark.parametrize("code", FIGURE_CELLS.values(), ids=FIGURE_CELLS.keys())
def test_each_figure_is_shown_exactly_once(kernel: BlockingKernelClient, code: str) -> None:
    assert_one_image_per_figure(kernel, code)


def test_two_figures_give_two_images(kernel: BlockingKernelClient) -> None:
    assert_one_image_per_figure(
        kernel, "plt.figure(); plt.plot([1]); plt.figure(); plt.plot([2]); plt.show()", 2
    )


def test_closed_figure_can_be_shown_again(kernel: BlockingKernelClient) -> None:
    run_ok(kernel, "again = plt.figure(); plt.plot([1]); plt.show()")
    assert len(images(run_ok(kernel, "again"))) == 1


def test_inline_backend_is_selected(kernel: BlockingKernelClient) -> None:
    backend = evaluate(kernel, "plt.get_backend()")
    assert "inline" in backend
    assert evaluate(kernel, "__import__('os').environ['MPLBACKEND']") == (
        "module://matplotlib_inline.backend_inline"
    )


def test_pil_image_is_png_only(kernel: BlockingKernelClient) -> None:
    output = run_ok(kernel, "from PIL import Image\nImage.new('RGB', (8, 8), 'red')")
    assert len(images(output, "image/png")) == 1
    assert images(output, "image/jpeg") == []


def test_pil_image_in_mode_png_cannot_store(kernel: BlockingKernelClient) -> None:
    output = run_ok(kernel, "from PIL import Image\nImage.new('CMYK', (8, 8))")
    assert len(images(output, "image/png")) == 1
    assert images(output, "image/jpeg") == []


@pytest.mark.parametrize(
    ("code", "what"),
    [
        ("input('x')", "input()"),
        ("import getpass; getpass.getpass()", "getpass.getpass()"),
    ],
)
@pytest.mark.parametrize("allow_stdin", [True, False])
def test_stdin_fails_at_once(
    kernel: BlockingKernelClient, code: str, what: str, allow_stdin: bool
) -> None:
    started = time.monotonic()
    output = run(kernel, code, timeout=10, allow_stdin=allow_stdin)
    assert time.monotonic() - started < 10
    errors = [c for t, c in output if t == "error"]
    assert len(errors) == 1, output
    assert errors[0]["ename"] == "StdinNotImplementedError"
    assert f"{what} is not available" in errors[0]["evalue"]


def test_input_from_background_thread_fails_between_cells(kernel: BlockingKernelClient) -> None:
    # Between executions ipykernel puts back the input() it saved; that must be
    # ours too, or a thread calling input() would block on the kernel's stdin.
    run_ok(
        kernel,
        "import threading, time\n"
        "_bg_result = []\n"
        "def _bg():\n"
        "    time.sleep(0.3)\n"
        "    try:\n"
        "        input('x')\n"
        "    except Exception as e:\n"
        "        _bg_result.append(type(e).__name__)\n"
        "_bg_thread = threading.Thread(target=_bg, daemon=True)\n"
        "_bg_thread.start()",
    )
    time.sleep(1)  # the kernel is idle while the thread calls input()
    assert evaluate(kernel, "_bg_thread.join(5) or _bg_result") == ["StdinNotImplementedError"]


def test_working_dir_is_created_and_entered(kernel: BlockingKernelClient, workdir: Path) -> None:
    assert evaluate(kernel, "__import__('os').getcwd()") == str(workdir)
    assert workdir.is_dir()


def test_pip_has_no_progress_bars_colours_or_nags(kernel: BlockingKernelClient) -> None:
    env = evaluate(
        kernel,
        "{k: v for k, v in __import__('os').environ.items() if k.startswith('PIP_')}",
    )
    assert env["PIP_PROGRESS_BAR"] == "off"
    assert env["PIP_NO_COLOR"] == "1"
    assert env["PIP_DISABLE_PIP_VERSION_CHECK"] == "1"


def printed(output: Output) -> str:
    """The text of the stream messages of ``output``."""
    return "".join(c["text"] for t, c in output if t == "stream")


# An install of what is installed already: without -q, pip says "Requirement already
# satisfied"; --no-index keeps it from asking an index.
SATISFIED = "pip install --no-index pip"
QUIET_INSTALLS = {
    "bang": f"!{SATISFIED}",
    "bang-space-in-function": "def f(p):\n    ! pip install --no-index {p}\nf('pip')",
    "bang-bang": f"lines = !{SATISFIED}\nassert lines == [], lines",
    "python-m-pip": f"!{sys.executable} -m {SATISFIED}",
    "bash-cell": f"%%bash\necho ran\n  {SATISFIED}",
    "sh-cell": f"%%sh\n{SATISFIED}",
}


@pytest.mark.parametrize("code", QUIET_INSTALLS.values(), ids=QUIET_INSTALLS.keys())
def test_pip_install_is_quiet(kernel: BlockingKernelClient, code: str) -> None:
    output = run_ok(kernel, code)
    assert printed(output).replace("ran\n", "") == "", output


def test_pip_magic_install_is_quiet(kernel: BlockingKernelClient) -> None:
    output = printed(run_ok(kernel, f"%{SATISFIED}"))
    assert "Requirement already satisfied" not in output
    assert "restart the kernel" in output  # IPython's own note stays


def test_failed_pip_install_still_shows_its_error(kernel: BlockingKernelClient) -> None:
    output = printed(run_ok(kernel, "!pip install --no-index no-such-package-3f9c1e"))
    assert "ERROR: " in output
    assert "no-such-package-3f9c1e" in output


def test_pip_install_with_its_own_verbosity_is_left_alone(kernel: BlockingKernelClient) -> None:
    assert "Requirement already satisfied" in printed(run_ok(kernel, f"!{SATISFIED} -v"))
    # Other pip commands keep their output, and text that only looks like one is not changed.
    assert "pip" in printed(run_ok(kernel, "!pip list --no-index"))
    assert printed(run_ok(kernel, "print('!pip install x')")) == "!pip install x\n"


def test_user_namespace_has_no_helper_names(kernel: BlockingKernelClient) -> None:
    assert evaluate(kernel, "[k for k in dir() if 'helper' in k or k.startswith('_jx')]") == []


def test_installed_helper_is_used_when_importable(kernel: BlockingKernelClient) -> None:
    path = evaluate(kernel, "__import__('sys').modules['kernel_helper'].__file__")
    assert Path(path) == Path(kernel_helper.__file__)


def quiet_evaluate(kc: BlockingKernelClient, expression: str) -> Any:
    """Like evaluate(), but adds nothing to the user namespace or history."""
    msg_id = kc.execute(
        "", silent=True, store_history=False, user_expressions={"value": expression}
    )
    result = shell_reply(kc, msg_id)["content"]["user_expressions"]["value"]
    assert result["status"] == "ok", result
    return eval(result["data"]["text/plain"])


def user_names(kc: BlockingKernelClient) -> set[str]:
    """Names in the user namespace."""
    return set(quiet_evaluate(kc, "sorted(get_ipython().user_ns)"))


def test_fallback_when_helper_not_installed(fresh_kernel: BlockingKernelClient) -> None:
    kc = fresh_kernel
    # Belt and braces on top of the PYTHONPATH the kernel was started without.
    run_ok(kc, "import sys; sys.modules['kernel_helper'] = None", silent=True)
    before = user_names(kc)
    setup_kernel(kc)
    assert user_names(kc) == before  # nothing added to the user namespace
    assert evaluate(kc, "hasattr(__import__('sys').modules['kernel_helper'], '__file__')") is False
    run_ok(kc, "import matplotlib.pyplot as plt")
    assert_one_image_per_figure(kc, "fig = plt.figure(); plt.plot([1]); fig")
    output = run(kc, "input()", timeout=10)
    assert [c["ename"] for t, c in output if t == "error"] == ["StdinNotImplementedError"]


def load_other_helper_version(kc: BlockingKernelClient) -> None:
    """Make ``import kernel_helper`` in the kernel give a module of another version."""
    run_ok(
        kc,
        "import sys, types\n"
        "sys.modules['kernel_helper'] = types.ModuleType('kernel_helper')\n"
        "sys.modules['kernel_helper'].__version__ = '0.0.0'\n"
        "del sys, types",
    )


def test_fallback_when_installed_helper_has_other_version(
    fresh_kernel: BlockingKernelClient,
) -> None:
    kc = fresh_kernel
    load_other_helper_version(kc)
    setup_kernel(kc)
    assert evaluate(kc, "__import__('kernel_helper').__version__") == kernel_helper.__version__
    # The embedded copy can produce the setup code again.
    assert evaluate(kc, "__import__('kernel_helper').setup_code('/x')") == (
        kernel_helper.setup_code("/x")
    )


def test_setup_is_idempotent(fresh_kernel: BlockingKernelClient, tmp_path: Path) -> None:
    kc = fresh_kernel
    before = user_names(kc)
    setup_kernel(kc, tmp_path)
    module_id = quiet_evaluate(kc, "id(__import__('sys').modules['kernel_helper'])")
    transformers = quiet_evaluate(kc, "len(get_ipython().ast_transformers)")
    # Silent, so that the only new name is plt; the second setup sees pyplot imported.
    run_ok(kc, "import matplotlib.pyplot as plt", silent=True)
    setup_kernel(kc, tmp_path)
    assert quiet_evaluate(kc, "len(get_ipython().ast_transformers)") == transformers
    # The module built from the embedded source the first time is reused.
    assert quiet_evaluate(kc, "id(__import__('sys').modules['kernel_helper'])") == module_id
    assert user_names(kc) - before == {"plt"}
    for code in FIGURE_CELLS.values():
        assert_one_image_per_figure(kc, code)
    pil = run_ok(kc, "from PIL import Image\nImage.new('L', (4, 4))")
    assert (len(images(pil)), images(pil, "image/jpeg")) == (1, [])


def test_setup_moves_already_imported_pyplot_to_inline(fresh_kernel: BlockingKernelClient) -> None:
    kc = fresh_kernel
    run_ok(kc, "import matplotlib\nmatplotlib.use('agg')\nimport matplotlib.pyplot as plt")
    setup_kernel(kc)
    assert "inline" in evaluate(kc, "plt.get_backend()")
    assert_one_image_per_figure(kc, "plt.plot([1]); plt.show()")


def test_setup_outside_ipython(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the process-wide parts apply; input() is left alone outside a kernel.
    monkeypatch.chdir(tmp_path)  # restores the cwd afterwards
    for name in ("MPLBACKEND", "PIP_PROGRESS_BAR", "PIP_NO_COLOR", "PIP_DISABLE_PIP_VERSION_CHECK"):
        monkeypatch.delenv(name, raising=False)
    original_input = builtins.input
    target = tmp_path / "a" / "b"
    kernel_helper.setup(working_dir=str(target))
    kernel_helper.setup(working_dir=str(target))
    assert Path.cwd() == target
    assert os.environ["PIP_PROGRESS_BAR"] == "off"
    assert builtins.input is original_input


def test_setup_code_is_standalone_python() -> None:
    code = kernel_helper.setup_code("/some/dir")
    compile(code, "<setup>", "exec")
    assert "import kernel_helper" in code
    assert repr("/some/dir") in code


def test_history_stays_in_memory(kernel: BlockingKernelClient) -> None:
    # All kernels of a user share one history.sqlite; under load its saving thread printed
    # "database is locked" into calls' output. The session's own history still works.
    run_ok(kernel, "marker = 'remembered'")
    assert quiet_evaluate(kernel, "get_ipython().history_manager.enabled") is False
    assert quiet_evaluate(kernel, "any('remembered' in line for line in In)") is True


def test_short_setup_code_reuses_the_loaded_helper(
    fresh_kernel: BlockingKernelClient, tmp_path: Path
) -> None:
    # A pooled kernel: set up once without a folder, then for its session.
    kc = fresh_kernel
    setup_kernel(kc)
    target = tmp_path / "session"
    code = kernel_helper.setup_code(str(target), embed=False)
    assert kernel_helper._own_source() not in code
    assert run(kc, code, silent=True) == []
    assert quiet_evaluate(kc, "__import__('os').getcwd()") == str(target)


def test_short_setup_code_fails_without_the_helper_of_its_version(
    fresh_kernel: BlockingKernelClient,
) -> None:
    kc = fresh_kernel
    load_other_helper_version(kc)
    msg_id = kc.execute(kernel_helper.setup_code(embed=False), silent=True)
    reply = shell_reply(kc, msg_id)["content"]
    assert (reply["status"], reply["ename"]) == ("error", "ImportError")
    assert kernel_helper.__version__ in reply["evalue"]
