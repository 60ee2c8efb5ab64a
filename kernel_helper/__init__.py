"""In-kernel helper that makes an IPython kernel behave well for an LLM agent.

The server runs the text returned by :func:`setup_code` (silently) in every agent
session's kernel right after the kernel starts. That text calls :func:`setup`,
which, inside the running kernel:

* changes to the session's working directory;
* selects matplotlib's inline PNG backend and makes every figure come out exactly
  once (figures are closed once they have been shown);
* shows PIL images as a single ``image/png`` (no extra ``image/jpeg`` copy);
* makes ``input()`` and ``getpass.getpass()`` fail at once instead of waiting
  for a human who will never type;
* makes ``pip install`` quiet, as AutoGen's executor does: ``!pip install``,
  ``%pip install`` and the ``pip install`` lines of ``%%bash``/``%%sh`` cells get
  ``-qqq`` (a successful install prints nothing, a failed one its ``ERROR:`` lines),
  and every pip run has no progress bars, colours or upgrade nags;
* keeps input history in memory, not in the SQLite file all kernels share (busy
  sessions made it print "database is locked" into their output);
* sends text with lone surrogates (``print("\\ud800")``) with those characters
  escaped, instead of losing the message, and keeps the kernel's own log lines
  out of the output;
* sends long texts in bounded pieces (see :func:`_send_long_texts_in_pieces`), and makes
  IOPub wait for a slow reader instead of dropping messages, so the server's memory stays
  bounded whatever the size of an output, and nothing is lost.

This file must stay self-contained: the server may send its source to a kernel
whose Python does not have this package installed, where it is run through
``exec()``. So it imports only the standard library at module level, imports
IPython lazily, and never imports matplotlib or PIL itself (a pooled kernel imports
what the server's ``kernel_pool_preload`` names, through :func:`preload`).
"""

from __future__ import annotations

import ast
import builtins
import getpass
import importlib.util
import io
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

__version__ = "0.1.0"

__all__ = [
    "CONTINUED_KEY",
    "PIECE_CHARS",
    "TEXT_PIECE_MSG_TYPE",
    "__version__",
    "setup",
    "setup_code",
]

#: Most characters of text one output message of the kernel carries. A longer printed text
#: goes out as several ``stream`` messages; a longer result, display or error text is cut in
#: its message and its whole text follows in ``TEXT_PIECE_MSG_TYPE`` messages. A reader thus
#: holds one message of bounded size at a time, and ZMQ's queues (counted in messages) hold a
#: bounded number of bytes: 64 KiB x ~140 messages (a high-water mark of 1,000 frames) ~ 9 MB.
PIECE_CHARS = 64 * 1024
#: IOPub message type of a piece of a cut text: content ``{"field": ..., "text": ...}``.
#: Frontends ignore message types they do not know.
TEXT_PIECE_MSG_TYPE = "kernel_helper_text"
#: Key, in the metadata of a message whose texts were cut, of ``{field: length}``: the fields
#: whose whole text follows in pieces (``text/plain`` of a result or display; ``evalue`` and
#: ``traceback``, the lines joined by newlines, of an error).
CONTINUED_KEY = "kernel_helper_continued"
#: Characters kept of a cut text in its own message (half head, half tail), for frontends.
_KEPT_IN_MESSAGE = PIECE_CHARS // 2
_DATA_MSG_TYPES = frozenset({"execute_result", "display_data", "update_display_data"})
_SEND_WRAPPED_MARKER = "_kernel_helper_sends_pieces"

_INLINE_BACKEND = "module://matplotlib_inline.backend_inline"

# Set on our display-formatter wrapper so a second setup() (possibly from another
# copy of this module) recognises it and does not wrap it again.
_WRAPPED_MARKER = "_kernel_helper_closes_figures"

# Set on our AST transformer (as a class attribute), so a second setup() (possibly from
# another copy of this module) finds it among the shell's transformers and adds no other.
_QUIET_PIP_MARKER = "_kernel_helper_quiet_pip"

# A pip install at the start of a line (after blanks): `pip`, `pip3`, `pip3.11` or
# `python -m pip`, each with or without a path, then `install` and its arguments.
_PIP_INSTALL_LINE = re.compile(
    r"^(?P<head>[ \t]*(?:\S*python[\d.]*[ \t]+-m[ \t]+)?(?:\S*/)?pip[\d.]*[ \t]+install)"
    r"(?P<tail>(?:[ \t].*)?)$",
    re.MULTILINE,
)
# An option that sets pip's verbosity: a command that has one is left as written.
_PIP_VERBOSITY = re.compile(r"(?:^|\s)(?:-[qv]+|--quiet|--verbose)(?=\s|$)")
# The cell magics whose body is a shell script.
_SHELL_CELL_MAGICS = ("bash", "sh")

_STDIN_MESSAGE = (
    "{what} is not available: this code runs in an agent session where nobody can "
    "type. Put the value in the code instead."
)

# Run by the kernel. Everything lives inside a dunder-named function that is
# deleted afterwards, so the user's namespace gains no names.
_SETUP_TEMPLATE = """\
def __kernel_helper_setup(source, version, options):
    import sys
    import types

    try:
        import kernel_helper as helper
    except Exception:  # not installed here (or broken): use the embedded copy
        helper = None
    if getattr(helper, "__version__", None) != version:
        helper = types.ModuleType("kernel_helper")
        helper.__dict__["_EMBEDDED_SOURCE"] = source
        exec(compile(source, "<kernel_helper>", "exec"), helper.__dict__)
        sys.modules["kernel_helper"] = helper
    helper.setup(**options)


try:
    __kernel_helper_setup({source!r}, {version!r}, {options!r})
finally:
    del __kernel_helper_setup
"""

# The same for a kernel that has loaded the helper already: without this file's source.
_LOADED_SETUP_TEMPLATE = """\
def __kernel_helper_setup(version, options):
    import kernel_helper as helper

    if getattr(helper, "__version__", None) != version:
        raise ImportError(f"kernel_helper {{version}} is not loaded in this kernel")
    helper.setup(**options)


try:
    __kernel_helper_setup({version!r}, {options!r})
finally:
    del __kernel_helper_setup
"""


def setup(working_dir: str | None = None, memory_limit: int | None = None) -> None:
    """Prepare the running kernel for an agent session.

    Safe to call more than once: nothing is wrapped twice. Without a running
    IPython shell only the process-wide parts are done (working directory,
    environment variables, memory limit).

    Args:
        working_dir: Directory to change into; created if it does not exist.
        memory_limit: Bytes of data memory the kernel process may use; past it
            allocations fail with MemoryError. None: no limit.
    """
    if working_dir is not None:
        os.makedirs(working_dir, exist_ok=True)
        os.chdir(working_dir)
    if memory_limit:
        _limit_memory(memory_limit)
    _quiet_pip()

    shell = _get_shell()
    _select_inline_backend(shell)
    if shell is None:
        return
    _close_figures_once_shown(shell)
    _show_pil_images_as_png(shell)
    _disable_stdin(shell)
    _keep_history_in_memory(shell)
    _quiet_pip_installs(shell)
    _send_odd_text_safely(shell)
    _keep_kernel_logs_out_of_output(shell)
    kernel = getattr(shell, "kernel", None)
    if kernel is not None:
        _send_long_texts_in_pieces(kernel)
        _make_iopub_wait_for_readers(kernel)


def _keep_history_in_memory(shell: Any) -> None:
    """Stop writing input history to IPython's shared SQLite file.

    Every kernel of the user writes to the same ``history.sqlite``; with many sessions busy,
    its saving thread hits "database is locked" and prints that into the current call's
    output. ``In``, ``Out`` and ``%history`` of the session keep working from memory.
    """
    history = getattr(shell, "history_manager", None)
    if history is None or not getattr(history, "enabled", False):
        return
    history.using_thread = False
    thread = getattr(history, "save_thread", None)
    if thread is not None:
        thread.stop()
        history.save_thread = None
    history.enabled = False


def setup_code(
    working_dir: str | None = None, memory_limit: int | None = None, *, embed: bool = True
) -> str:
    """Return Python source that sets up a kernel when executed in it.

    The source uses an installed ``kernel_helper`` of the same version if the
    kernel can import one; otherwise it builds the module from a copy of this
    file embedded in the source, so the kernel's Python needs nothing installed.
    It leaves no names in the user's namespace. Execute it with ``silent=True``.

    Args:
        working_dir: Passed on to :func:`setup` in the kernel.
        memory_limit: Passed on to :func:`setup` in the kernel.
        embed: False for a kernel set up once before (a pooled one): the source
            then only calls the helper the kernel has loaded, and raises
            ImportError when it has none of this version. It is shorter by this
            whole file, which IPython takes ~4 ms to read.
    """
    options = {"working_dir": working_dir, "memory_limit": memory_limit}
    if not embed:
        return _LOADED_SETUP_TEMPLATE.format(version=__version__, options=options)
    return _SETUP_TEMPLATE.format(source=_own_source(), version=__version__, options=options)


# Run by a pooled kernel after the set-up: the modules go into sys.modules only.
_PRELOAD_TEMPLATE = """\
def __kernel_helper_preload(modules):
    import kernel_helper

    kernel_helper.preload(modules)


try:
    __kernel_helper_preload({modules!r})
finally:
    del __kernel_helper_preload
"""


def preload_code(modules: list[str]) -> str:
    """Return Python source that imports ``modules`` (see :func:`preload`) in a kernel set
    up by :func:`setup_code`. Execute it with ``silent=True``."""
    return _PRELOAD_TEMPLATE.format(modules=list(modules))


def preload(modules: list[str]) -> None:
    """Import ``modules`` ahead of the user's code, binding no names in the user's namespace.

    A later ``import pandas`` then finds the module in ``sys.modules`` and costs nothing.
    Modules that are not installed are skipped; after trying every module, the ones that
    failed to import raise one ImportError naming each and its error.
    """
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
                continue  # not installed here
            failed.append(f"{name} ({type(e).__name__}: {e})")
        except Exception as e:
            failed.append(f"{name} ({type(e).__name__}: {e})")
    if any(name.split(".")[0] == "matplotlib" for name in modules):
        try:
            _draw_a_first_figure()
        except Exception as e:
            failed.append(f"a first matplotlib figure ({type(e).__name__}: {e})")
    if failed:
        raise ImportError(f"could not preload {', '.join(failed)}")


def _draw_a_first_figure() -> None:
    """Render one small figure to PNG in memory, so a session's first plot finds fonts,
    text layout and the PNG writer loaded (~80 ms of a first plot, after the imports).

    It uses matplotlib's object API, not pyplot: no figure number is taken and nothing is
    left for the inline backend to show.
    """
    matplotlib = sys.modules.get("matplotlib")
    if matplotlib is None:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(figsize=(2, 1.5), dpi=50)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1])
    axes.set_title("warm-up")
    figure.savefig(io.BytesIO(), format="png")


def _own_source() -> str:
    """Return the source text of this module, also when it was built by exec()."""
    embedded = globals().get("_EMBEDDED_SOURCE")
    if isinstance(embedded, str):
        return embedded
    return Path(__file__).read_text(encoding="utf-8")


def _get_shell() -> Any:
    """Return the running IPython shell, or None outside IPython."""
    try:
        from IPython import get_ipython  # noqa: PLC0415 - IPython is slow to import
    except ImportError:
        return None
    return get_ipython()


def _limit_memory(limit: int) -> None:
    """Cap the process's data segment (heap and anonymous mappings) at ``limit`` bytes.

    RLIMIT_DATA, not RLIMIT_AS: numerical libraries reserve large address ranges they
    never touch, which an address-space limit would refuse. The hard limit is lowered
    too, so code in the session cannot lift it again.
    """
    import resource  # noqa: PLC0415 - POSIX only

    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _quiet_pip() -> None:
    """Keep pip's progress bars, colours and upgrade nags out of the output.

    Environment variables reach every pip the kernel runs (``%pip``, ``!pip``, scripts).
    They do not make pip quiet: ``PIP_QUIET`` would also silence what ``pip list``,
    ``pip show`` and ``pip freeze`` are run for, so only installs are quietened, by
    :func:`_quiet_pip_installs`.
    """
    os.environ["PIP_PROGRESS_BAR"] = "off"
    os.environ["PIP_NO_COLOR"] = "1"
    os.environ["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"


# --- pip install ----------------------------------------------------------------


def _quiet_pip_installs(shell: Any) -> None:
    """Add ``-qqq`` to the pip installs that IPython's shell syntax runs.

    An AST transformer, not a text rewrite of the cell: IPython has turned ``!cmd`` into
    ``get_ipython().system('cmd')`` by then, so only commands really run are changed (a
    string that merely contains "!pip install" is not), wherever they stand (in a
    function, a loop, ``x = !pip install ...``), and ``{var}`` expansion is untouched.
    """
    if any(getattr(t, _QUIET_PIP_MARKER, False) for t in shell.ast_transformers):
        return
    shell.ast_transformers.append(_QuietPipInstalls())


class _QuietPipInstalls(ast.NodeTransformer):
    """Rewrites the command strings of ``get_ipython()`` calls that run ``pip install``.

    ``!`` and ``!!`` give ``system``/``getoutput`` calls, ``%pip`` a ``run_line_magic``
    call, ``%%bash`` and ``%%sh`` cells a ``run_cell_magic`` call with the script.
    """

    _kernel_helper_quiet_pip = True  # the name in _QUIET_PIP_MARKER

    def visit(self, node: ast.AST) -> ast.AST:
        # One ast.walk changing arguments in place: about half the time of NodeTransformer's
        # recursive visit, paid by every cell (5 us for `x = 1`).
        for call in ast.walk(node):
            if isinstance(call, ast.Call):
                _quiet_pip_call(call)
        return node


def _quiet_pip_call(node: ast.Call) -> None:
    """Add ``-qqq`` to the pip installs of one ``get_ipython().<method>(...)`` call."""
    func, args = node.func, node.args
    if not (isinstance(func, ast.Attribute) and _is_get_ipython_call(func.value)):
        return
    first = _constant(args[0]) if args else None  # the command, or the magic's name
    if func.attr in ("system", "getoutput") and args:
        _rewrite_constant(args, 0, _quiet_pip_install_lines)
    elif func.attr == "run_line_magic" and first == "pip" and len(args) >= 2:
        _rewrite_constant(args, 1, _quiet_pip_magic_line)
    elif func.attr == "run_cell_magic" and first in _SHELL_CELL_MAGICS and len(args) >= 3:
        _rewrite_constant(args, 2, _quiet_pip_install_lines)


def _is_get_ipython_call(node: ast.AST) -> bool:
    """Whether ``node`` is ``get_ipython()``."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "get_ipython"
        and not node.args
    )


def _constant(node: ast.AST) -> object:
    """The value of a constant node, None for any other."""
    return node.value if isinstance(node, ast.Constant) else None


def _rewrite_constant(args: list[ast.expr], index: int, rewrite: Callable[[str], str]) -> None:
    """Replace the string constant ``args[index]`` by ``rewrite(its value)``."""
    value = _constant(args[index])
    if isinstance(value, str):
        args[index] = ast.copy_location(ast.Constant(rewrite(value)), args[index])


def _quiet_pip_install_lines(text: str) -> str:
    """Add ``-qqq`` to each line of ``text`` that is a pip install without a verbosity option."""
    return _PIP_INSTALL_LINE.sub(_add_quiet_option, text)


def _quiet_pip_magic_line(line: str) -> str:
    """The same for the arguments of ``%pip`` (``install numpy``)."""
    return _quiet_pip_install_lines(f"pip {line}")[len("pip ") :]


def _add_quiet_option(match: re.Match[str]) -> str:
    """The matched pip install line with ``-qqq`` after ``install``."""
    head, tail = match["head"], match["tail"]
    if _PIP_VERBOSITY.search(tail):
        return match[0]  # the command says how verbose pip should be
    return f"{head} -qqq{tail}"


# --- matplotlib -------------------------------------------------------------


def _select_inline_backend(shell: Any) -> None:
    """Make matplotlib draw figures as inline PNG images.

    Importing matplotlib is slow, so normally only ``MPLBACKEND`` is set and
    matplotlib picks it up when the user imports it. If the user's code has
    already imported matplotlib, the running backend is switched too.
    """
    if importlib.util.find_spec("matplotlib_inline") is None:
        return
    os.environ["MPLBACKEND"] = _INLINE_BACKEND
    if shell is not None and "matplotlib" in sys.modules and not _inline_backend_active():
        # Same as `%matplotlib inline`, without the magic's printed output.
        shell.enable_matplotlib("inline")


def _inline_backend_active() -> bool:
    """Tell whether an already imported matplotlib uses the inline backend."""
    matplotlib = sys.modules.get("matplotlib")
    if matplotlib is None:
        return False
    backend = str(matplotlib.get_backend())
    return backend == "inline" or backend.endswith("matplotlib_inline.backend_inline")


def _close_figures_once_shown(shell: Any) -> None:
    """Close every matplotlib figure as soon as it has been formatted for display.

    Without this a figure that is the cell's last expression (``fig`` or
    ``plt.gcf()``), or that was passed to ``display()``, comes out twice: once
    from the display hook or ``display()``, and again from matplotlib_inline's
    ``flush_figures`` post-execute hook, which shows every figure still open.
    Closing the figure once it is formatted leaves ``flush_figures`` nothing to
    repeat. A closed figure can still be displayed again explicitly.
    """
    formatter = shell.display_formatter
    if getattr(formatter.format, _WRAPPED_MARKER, False):
        return
    original = formatter.format

    def format_and_close(obj: Any, include: Any = None, exclude: Any = None) -> Any:
        try:
            return original(obj, include=include, exclude=exclude)
        finally:
            _close_if_inline_figure(obj)

    format_and_close.__doc__ = original.__doc__
    setattr(format_and_close, _WRAPPED_MARKER, True)
    # An instance attribute: IPython's display hook and display() look up
    # `shell.display_formatter.format` on every call.
    formatter.format = format_and_close


def _close_if_inline_figure(obj: Any) -> None:
    """Close ``obj`` if it is a pyplot figure drawn by the inline backend."""
    figure_module = sys.modules.get("matplotlib.figure")
    pyplot = sys.modules.get("matplotlib.pyplot")
    if figure_module is None or pyplot is None:
        return  # matplotlib not in use, so obj cannot be a pyplot figure
    # Interactive backends (e.g. ipympl widgets) need their figures kept open.
    if isinstance(obj, figure_module.Figure) and _inline_backend_active():
        pyplot.close(obj)


# --- PIL ----------------------------------------------------------------------


def _show_pil_images_as_png(shell: Any) -> None:
    """Display PIL images as one lossless ``image/png`` and no ``image/jpeg``.

    Pillow offers both ``_repr_png_`` and ``_repr_jpeg_``, so by default every
    image is sent twice. Registering by name keeps PIL from being imported here.
    """
    formatters = shell.display_formatter.formatters
    if "image/png" in formatters:
        formatters["image/png"].for_type_by_name("PIL.Image", "Image", _pil_image_to_png)
    if "image/jpeg" in formatters:
        formatters["image/jpeg"].for_type_by_name("PIL.Image", "Image", _no_output)


def _pil_image_to_png(image: Any) -> bytes:
    """Encode a PIL image as PNG bytes, converting modes PNG cannot store."""
    buffer = io.BytesIO()
    try:
        image.save(buffer, format="PNG")
    except (OSError, ValueError, KeyError):  # e.g. CMYK or float images
        buffer = io.BytesIO()
        image.convert("RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def _no_output(obj: Any) -> None:
    """Formatter that produces nothing, so the MIME type is left out."""


# --- long texts ---------------------------------------------------------------


def _send_long_texts_in_pieces(kernel: Any) -> None:
    """Make every output message carry at most ``PIECE_CHARS`` characters of text.

    ipykernel sends what ``print`` wrote since its last flush as one message, and a result or
    an error as one message however long its text: a 100 MB print reaches the server as one
    100 MB message, which it must hold (several times, decoded) before it can cut it. Every
    message goes through the kernel's ``Session.send``, so wrapping it bounds them all: the
    streams, the display hook, ``display()`` and the error of a failing cell.
    """
    shell = getattr(kernel, "shell", None)
    candidates = [
        getattr(kernel, "session", None),
        getattr(sys.stdout, "session", None),
        getattr(sys.stderr, "session", None),
        getattr(getattr(shell, "displayhook", None), "session", None),
        getattr(getattr(shell, "display_pub", None), "session", None),
    ]
    sessions = {id(session): session for session in candidates if session is not None}
    for session in sessions.values():
        _wrap_send(session)


def _wrap_send(session: Any) -> None:
    """Replace ``session.send`` by one that sends long texts in pieces (once per session)."""
    send = session.send
    if getattr(send, _SEND_WRAPPED_MARKER, False):
        return

    def send_in_pieces(  # noqa: PLR0917 - Session.send's own signature
        stream: Any,
        msg_or_type: Any,
        content: Any = None,
        parent: Any = None,
        ident: Any = None,
        buffers: Any = None,
        track: bool = False,
        header: Any = None,
        metadata: Any = None,
    ) -> Any:
        if isinstance(msg_or_type, str):
            msg = session.msg(
                msg_or_type, content=content, parent=parent, header=header, metadata=metadata
            )
        else:
            msg = msg_or_type
        try:
            messages = _in_pieces(session, msg)
        except Exception:  # a message we do not understand goes out as it is
            messages = [msg]
        thread = _iopub_thread(stream)
        if len(messages) == 1 or thread is None:
            sent = send(stream, messages[0], ident=ident, buffers=buffers, track=track)
            for piece in messages[1:]:
                send(stream, piece, ident=ident)
            return sent

        # One event of the IOPub thread sends them all, on its socket: the pieces go out
        # together and in order, and a flush (which runs on that thread) does not schedule
        # an event per piece into the thread's own event pipe, which holds only ~2,000.
        def send_all() -> None:
            for piece in messages:
                send(thread.socket, piece, ident=ident)

        thread.schedule(send_all)
        return messages[0]
    send_in_pieces.__doc__ = send.__doc__
    setattr(send_in_pieces, _SEND_WRAPPED_MARKER, True)
    session.send = send_in_pieces


def _iopub_thread(stream: Any) -> Any:
    """The running IOPub thread of ipykernel that ``stream`` sends through, or None.

    None also in a forked child process, whose sends go through a pipe to its parent.
    """
    try:
        from ipykernel.iostream import BackgroundSocket, IOPubThread  # noqa: PLC0415
    except ImportError:
        return None
    if isinstance(stream, BackgroundSocket):
        stream = stream.io_thread
    if not isinstance(stream, IOPubThread) or stream.socket is None:
        return None
    return stream if stream.thread.is_alive() else None


def _in_pieces(session: Any, msg: dict[str, Any]) -> list[dict[str, Any]]:
    """``msg`` as messages that each carry at most ``PIECE_CHARS`` characters of text."""
    msg_type = msg["header"]["msg_type"]
    content = msg["content"]
    if msg_type == "stream":
        text = content.get("text")
        if not isinstance(text, str) or len(text) <= PIECE_CHARS:
            return [msg]
        parent = msg["parent_header"]
        return [
            session.msg("stream", {"name": content.get("name"), "text": piece}, parent=parent)
            for piece in _pieces(text)
        ]
    long_texts: dict[str, str] = {}
    new_content = dict(content)
    if msg_type in _DATA_MSG_TYPES and isinstance(content.get("data"), dict):
        text = content["data"].get("text/plain")
        if isinstance(text, str) and len(text) > PIECE_CHARS:
            long_texts["text/plain"] = text
            new_content["data"] = {**content["data"], "text/plain": _clip(text)}
    elif msg_type in ("error", "execute_reply") and content.get("status", "error") == "error":
        evalue, traceback = content.get("evalue"), content.get("traceback")
        if isinstance(evalue, str) and len(evalue) > PIECE_CHARS:
            long_texts["evalue"] = evalue
            new_content["evalue"] = _clip(evalue)
        if isinstance(traceback, list) and all(isinstance(line, str) for line in traceback):
            joined = "\n".join(traceback)
            if len(joined) > PIECE_CHARS:
                long_texts["traceback"] = joined
                new_content["traceback"] = _clip(joined).split("\n")
    if not long_texts:
        return [msg]
    if msg_type == "execute_reply":
        # The whole error goes out on IOPub; the reply only says how the cell ended.
        return [{**msg, "content": new_content}]
    lengths = {name: len(text) for name, text in long_texts.items()}
    metadata = {**msg.get("metadata", {}), CONTINUED_KEY: lengths}
    parent = msg["parent_header"]
    pieces = [
        session.msg(TEXT_PIECE_MSG_TYPE, {"field": field, "text": piece}, parent=parent)
        for field, text in long_texts.items()
        for piece in _pieces(text)
    ]
    return [{**msg, "content": new_content, "metadata": metadata}, *pieces]


def _pieces(text: str) -> list[str]:
    """``text`` in pieces of at most ``PIECE_CHARS``, cut after a newline where one is near.

    Cutting at line ends keeps ANSI codes (which never span lines) whole for the reader.
    """
    pieces = []
    start = 0
    while len(text) - start > PIECE_CHARS:
        end = text.rfind("\n", start + PIECE_CHARS // 2, start + PIECE_CHARS) + 1
        if not end:
            end = start + PIECE_CHARS
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


def _clip(text: str) -> str:
    """The head and tail of a long text, as a frontend other than the server is shown it."""
    half = _KEPT_IN_MESSAGE // 2
    cut = len(text) - 2 * half
    return f"{text[:half]}\n[... {cut} characters cut by kernel_helper ...]\n{text[-half:]}"


def _make_iopub_wait_for_readers(kernel: Any) -> None:
    """Make IOPub wait for a reader that is behind instead of dropping its messages.

    IOPub is a PUB socket: a message for a subscriber whose queue is full (1,000 frames by
    default, ~140 messages) is dropped without a word. Sent in pieces, a long output is many
    messages, and a kernel can write them faster than a busy server reads. With
    ``XPUB_NODROP`` (ipykernel >= 7 binds IOPub as XPUB) a send waits for room instead; the
    queues in between stay bounded, so the backlog waits in this kernel, which made it. Set
    on the IOPub thread, which owns the socket.
    """
    import zmq  # noqa: PLC0415 - only inside a kernel

    thread = getattr(kernel, "iopub_thread", None)
    socket = getattr(thread, "socket", None)
    if thread is None or socket is None or not hasattr(zmq, "XPUB_NODROP"):
        return

    def wait_for_readers() -> None:
        if socket.getsockopt(zmq.TYPE) == zmq.XPUB:
            socket.setsockopt(zmq.XPUB_NODROP, 1)

    thread.schedule(wait_for_readers)


# --- stdin ----------------------------------------------------------------------


def _disable_stdin(shell: Any) -> None:
    """Make ``input()`` and ``getpass.getpass()`` raise at once.

    ipykernel re-assigns ``builtins.input = kernel.raw_input`` and
    ``getpass.getpass = kernel.getpass`` before each execution and afterwards
    restores the values it saved in ``kernel._sys_raw_input`` and
    ``kernel._save_getpass``. Patching all of them keeps our versions in place
    during cells and between them (e.g. for background threads); the builtin
    ``input()`` would otherwise block on the kernel's stdin pipe for ever.
    """
    builtins.input = _no_input
    getpass.getpass = _no_getpass
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return
    kernel.raw_input = _no_input
    kernel.getpass = _no_getpass
    if hasattr(kernel, "_sys_raw_input"):
        kernel._sys_raw_input = _no_input
    if hasattr(kernel, "_save_getpass"):
        kernel._save_getpass = _no_getpass


def _no_input(prompt: object = "") -> NoReturn:
    """Stand-in for ``input()`` that fails at once."""
    raise _stdin_error("input()")


def _no_getpass(prompt: str = "Password: ", *args: Any, **kwargs: Any) -> NoReturn:
    """Stand-in for ``getpass.getpass()`` that fails at once."""
    raise _stdin_error("getpass.getpass()")


def _stdin_error(what: str) -> Exception:
    """Build the error raised when code asks for keyboard input."""
    from IPython.core.error import StdinNotImplementedError  # noqa: PLC0415 - see _get_shell

    return StdinNotImplementedError(_STDIN_MESSAGE.format(what=what))


# --- messages -------------------------------------------------------------------

_SAFE_PACK_MARKER = "_kernel_helper_escapes_surrogates"


def _send_odd_text_safely(shell: Any) -> None:
    """Escape lone surrogates in outgoing messages instead of losing the messages.

    jupyter_client's JSON packer encodes with ``surrogateescape``: a lone surrogate such as
    ``"\\ud800"`` (real data has them, e.g. text cut in the middle of a UTF-16 pair) makes
    it raise, so the output is lost and the kernel prints its own traceback into the call's
    output; and ``"\\udcff"`` (a byte that was not UTF-8, decoded with ``surrogateescape``)
    goes out as a byte no receiver can decode. This packer encodes strictly, and only when
    that fails escapes such characters (``\\ud800``, ``\\xff``), keeping the rest as is.
    Only jupyter_client's default packers (``json``, and ``orjson`` where it is installed,
    which falls back to the same ``surrogateescape`` encoding) are replaced: one configured on
    purpose stays.
    """
    session = getattr(getattr(shell, "kernel", None), "session", None)
    if session is None or getattr(session.pack, _SAFE_PACK_MARKER, False):
        return
    import json  # noqa: PLC0415 - only needed in a kernel

    from jupyter_client import session as session_module  # noqa: PLC0415
    from jupyter_client.jsonutil import json_default  # noqa: PLC0415

    original = session.pack
    fast = None
    if original is getattr(session_module, "orjson_packer", None) and session_module.has_orjson:
        import orjson  # noqa: PLC0415 - jupyter_client found it

        # orjson encodes strictly (a lone surrogate raises): what its packer does, minus the
        # surrogateescape fallback.
        options = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
        fast = lambda obj: orjson.dumps(obj, default=json_default, option=options)  # noqa: E731
    elif original is not session_module.json_packer:
        return

    def pack(obj: Any) -> bytes:
        if fast is not None:
            try:
                return bytes(fast(obj))
            except TypeError:  # orjson's error: a surrogate, or a value it cannot encode
                pass
        try:
            text = json.dumps(obj, default=json_default, ensure_ascii=False, allow_nan=False)
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return bytes(original(_escape_surrogates(obj)))
        except (TypeError, ValueError):
            return bytes(original(obj))  # jupyter_client's own fallback for odd values

    setattr(pack, _SAFE_PACK_MARKER, True)
    session.pack = pack


def _escape_surrogates(value: Any) -> Any:
    """``value`` with every string's lone surrogates written as backslash escapes."""
    if isinstance(value, str):
        return _SURROGATE.sub(_escape_surrogate, value)
    if isinstance(value, dict):
        return {_escape_surrogates(k): _escape_surrogates(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escape_surrogates(item) for item in value]
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    # U+DC80..U+DCFF stand for undecodable bytes (the ``surrogateescape`` error handler).
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def _keep_kernel_logs_out_of_output(shell: Any) -> None:
    """Send tornado's log lines to the kernel's real stderr, not into the running call's output.

    Tornado runs the kernel's message loops and logs their failures (``Uncaught exception in
    ZMQStream callback``) to file descriptor 2, which ipykernel captures so that C
    extensions' output reaches the notebook: an internal traceback then reads as if the
    agent's code printed it. ipykernel keeps a copy of the original descriptor, the server's
    log; tornado's handlers write there now. The session's own loggers are unaffected.
    """
    original = getattr(sys.stderr, "_original_stdstream_copy", None)
    if original is None or getattr(shell, "kernel", None) is None:
        return  # stderr is not captured: tornado's log goes to the real stderr already
    tornado_log = logging.getLogger("tornado")
    handlers = [
        handler
        for handler in tornado_log.handlers
        if isinstance(handler, logging.StreamHandler) and _writes_to_fd(handler.stream, 2)
    ]
    if not handlers:
        return  # none, or moved before: setup() runs again in a pooled kernel
    stream = open(  # noqa: SIM115 - lives as long as the kernel
        os.dup(original), "w", buffering=1, encoding="utf-8", errors="backslashreplace"
    )
    for handler in handlers:
        handler.setStream(stream)


def _writes_to_fd(stream: Any, fd: int) -> bool:
    """Whether ``stream`` writes to the file descriptor ``fd``."""
    try:
        return bool(stream.fileno() == fd)
    except (AttributeError, OSError, ValueError):
        return False
