"""The ``jupyter-exec`` command: run a script cell by cell in a fresh session (its output
shown as it is printed, or in the background), follow a background run, list sessions, move
files in and out of a session's working folder."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mimetypes
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import IO

from ._api import AgentSessionsAPI
from ._executor_core import ExecutorCore, _saved_note
from ._transport import SyncTransport, run_sync
from .blocks import CodeBlock, IPythonCodeResult
from .connection import JupyterConnectable, JupyterConnectionInfo
from .errors import JupyterExecError, SessionNotFoundError
from .executor import JupyterCodeExecutor
from .local_server import LocalJupyterServer
from .outputs import CodeError, Display, OutputCallbacks

#: ``# %%`` starts a cell (the "percent" format of VS Code, Spyder, PyCharm and jupytext).
_CELL_MARKER = re.compile(r"^#\s*%%(?P<title>.*)$")
_MARKDOWN_CELL = re.compile(r"\[(markdown|md)\]")
#: Seconds a cell runs before the elapsed-time ticker shows, and between two updates.
_TICKER_DELAY = 1.0
_TICKER_INTERVAL = 0.25

EXIT_OK = 0
EXIT_CELL_FAILED = 1
EXIT_ERROR = 2


@dataclass
class Cell:
    """A cell of a script: its code and the line it starts on."""

    code: str
    line: int


def split_cells(source: str) -> list[Cell]:
    """The code cells of ``source``, split on ``# %%`` lines.

    Markdown cells (``# %% [markdown]``) and cells of only comments and blank lines are left
    out; a cell's line is that of its first non-blank line.
    """
    cells: list[Cell] = []
    lines: list[str] = []
    first_line, is_markdown = 1, False

    def close_cell() -> None:
        if is_markdown:
            return
        if all(not text.strip() or text.lstrip().startswith("#") for text in lines):
            return  # only comments: nothing to run
        for offset, text in enumerate(lines):
            if text.strip():  # the cell starts at its first non-blank line
                cells.append(Cell("\n".join(lines[offset:]).rstrip(), first_line + offset))
                return

    for number, line in enumerate(source.splitlines(), start=1):
        marker = _CELL_MARKER.match(line)
        if marker is None:
            lines.append(line)
            continue
        close_cell()
        lines, first_line = [], number + 1
        is_markdown = bool(_MARKDOWN_CELL.search(marker["title"]))
    close_cell()
    return cells


class ElapsedTicker:
    """Shows how long a cell has been running on a terminal; shows nothing elsewhere.

    Output goes through :meth:`write`, which clears the elapsed-time line first: the line
    shows only while the cell has been quiet for a second, at the start of a line.
    """

    def __init__(self, label: str, stream: IO[str]) -> None:
        """Write ``label`` and the elapsed seconds to ``stream`` while the block runs."""
        self.label = label
        self.stream = stream
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = False
        self._lock = threading.Lock()
        self._quiet_since = time.monotonic()
        #: Whether the last text written ended its line (or none was written).
        self.at_line_start = True

    def __enter__(self) -> ElapsedTicker:
        """Start ticking when the stream is a terminal."""
        if self.stream.isatty():
            self._thread = threading.Thread(target=self._tick, name="jupyter-exec-ticker")
            self._thread.daemon = True
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop ticking and clear the line."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._clear()

    def write(self, stream: IO[str], text: str) -> None:
        """Write the cell's ``text`` to ``stream`` at once, the elapsed-time line cleared."""
        if not text:
            return
        with self._lock:
            self._clear()
            stream.write(text)
            stream.flush()
            self.at_line_start = text.endswith("\n")
            self._quiet_since = time.monotonic()

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def _tick(self) -> None:
        started = time.monotonic()
        while not self._done.wait(_TICKER_INTERVAL):
            with self._lock:
                if self.at_line_start and time.monotonic() - self._quiet_since >= _TICKER_DELAY:
                    self._shown = True
                    self.stream.write(f"\r\x1b[K{self.label}: {time.monotonic() - started:.0f} s")
                    self.stream.flush()


class OutputPrinter:
    """Prints a cell's output as it arrives: printed text as printed (stdout and stderr),
    displays, errors and the server's notes on lines of their own, saved files named."""

    def __init__(self, ticker: ElapsedTicker) -> None:
        """Write through ``ticker``, which keeps its elapsed-time line out of the way."""
        self.ticker = ticker

    def callbacks(self) -> OutputCallbacks:
        """The callbacks of a run that print its output."""
        return OutputCallbacks(
            on_stdout=lambda text: self.ticker.write(sys.stdout, text),
            on_stderr=lambda text: self.ticker.write(sys.stderr, text),
            on_display=self._display,
            on_result=self._display,
            on_error=self._error,
            on_note=lambda text: self._block(f"[{text}]"),
        )

    def end_cell(self) -> None:
        """End the cell's last line, so the next output starts on a line of its own."""
        if not self.ticker.at_line_start:
            self.ticker.write(sys.stdout, "\n")

    def _display(self, display: Display) -> None:
        lines = [] if display.text is None else [display.text]
        for path in display.files:
            mime_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            lines.append(_saved_note(mime_type, path))
        self._block("\n".join(lines))

    def _error(self, error: CodeError) -> None:
        self._block("\n".join(error.traceback) or f"{error.ename}: {error.evalue}")

    def _block(self, text: str) -> None:
        prefix = "" if self.ticker.at_line_start else "\n"
        self.ticker.write(sys.stdout, f"{prefix}{text}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``jupyter-exec``."""
    parser = argparse.ArgumentParser(
        prog="jupyter-exec",
        description="Run Python in a stateful Jupyter kernel through the agent-session API.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--url",
        default=os.environ.get("JUPYTER_EXEC_URL"),
        help="a running Jupyter server with the agent-session API, such as "
        "http://127.0.0.1:8888/ (default: $JUPYTER_EXEC_URL)",
    )
    server.add_argument(
        "--token",
        default=os.environ.get("JUPYTER_EXEC_TOKEN"),
        help="the server's token (default: $JUPYTER_EXEC_TOKEN; prefer it: other users can "
        "read command lines)",
    )

    run = commands.add_parser(
        "run",
        parents=[server],
        help="run a file cell by cell (cells split on '# %%' lines) in a fresh session",
        description="Run a file cell by cell in one fresh session and print each cell's "
        "output as it is printed. Without --url a local server is started for the run. The "
        "exit status is 1 when a cell fails (later cells are not run). With --background "
        "the file runs as one execution on the server: its session and execution ids are "
        "printed and the command exits (follow it with 'jupyter-exec attach').",
    )
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", help="the Python file to run ('-' for stdin)")
    source.add_argument("-c", dest="code", metavar="CODE", help="run CODE as one cell")
    run.add_argument(
        "--output-dir",
        default=".",
        help="where images and HTML are saved (default: the current directory)",
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds a cell may run before it is interrupted (default: 300)",
    )
    run.add_argument("--kernel", default="python3", help="the kernel name (default: python3)")
    run.add_argument(
        "--sandbox",
        choices=("none", "bubblewrap"),
        help="isolate the local server's kernel: 'bubblewrap' sandboxes it (its own folder, "
        "no network; needs bwrap), 'none' does not (default: the server's configuration, "
        "which is 'none'); a server at --url decides for itself",
    )
    run.add_argument(
        "--log-file",
        help="keep the log of the local server in this file (default: not kept)",
    )
    run.add_argument(
        "--background",
        action="store_true",
        help="start the file as one background execution of a new session on the server "
        "(needs --url), print 'SESSION_ID EXECUTION_ID' and exit; the session stays",
    )
    run.add_argument(
        "--upload",
        action="append",
        default=[],
        metavar="LOCAL[:REMOTE]",
        help="copy a file into the session's working folder before the first cell (as REMOTE, "
        "by default its name); may be repeated. With --upload or --download the code runs in "
        "the session's working folder.",
    )
    run.add_argument(
        "--download",
        action="append",
        default=[],
        metavar="REMOTE[:LOCAL]",
        help="copy a file of the session's working folder out after the last cell (to LOCAL, "
        "by default into --output-dir); may be repeated",
    )
    run.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable of the session's kernel; may be repeated (values on a "
        "command line are visible to other users: prefer a variable of your own shell)",
    )
    run.set_defaults(handler=_run)

    attach = commands.add_parser(
        "attach",
        parents=[server],
        help="follow a background execution to its end",
        description="Print a background execution's output from its start (as it is "
        "printed while it runs) and exit when it ends: status 0 when it succeeded, 1 when "
        "it failed, 2 for a usage or server error (an unknown id).",
    )
    attach.add_argument(
        "session", help="the session id ('jupyter-exec run --background' printed it)"
    )
    attach.add_argument("execution", help="the execution id")
    attach.add_argument(
        "--output-dir",
        default=".",
        help="where images and HTML are saved (default: the current directory)",
    )
    attach.set_defaults(handler=_attach)

    files = commands.add_parser(
        "files",
        parents=[server],
        help="list, get, put or remove files of a session's working folder",
        description="Move files in and out of the working folder of a live session of a "
        "running server (see 'jupyter-exec sessions').",
    )
    files.add_argument(
        "--session", required=True, help="the session's id or name (see 'jupyter-exec sessions')"
    )
    actions = files.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("ls", help="list a folder (the working folder by default)")
    listing.add_argument("path", nargs="?", default="")
    listing.add_argument("--json", action="store_true", help="print the entries as JSON")
    get = actions.add_parser("get", help="download a file")
    get.add_argument("remote")
    get.add_argument("local", nargs="?", help="where to (default: its name, here)")
    put = actions.add_parser("put", help="upload a file (replacing one of the same path)")
    put.add_argument("local")
    put.add_argument("remote", nargs="?", help="where to (default: its name, at the top)")
    remove = actions.add_parser("rm", help="delete a file, or a folder and all in it")
    remove.add_argument("path")
    files.set_defaults(handler=_files)

    mcp = commands.add_parser(
        "mcp",
        parents=[server],
        help="serve the session tools to an MCP client over stdio (needs the [mcp] extra)",
        description="Serve MCP over stdin/stdout: tools to create sessions, run code in them "
        "(state persists between calls), and move files. Without --url a local server is "
        "started for the command's lifetime. The sessions it created are deleted when its "
        "client goes away.",
    )
    mcp.add_argument(
        "--kernel", default="python3", help="the kernel of new sessions (default: python3)"
    )
    mcp.add_argument(
        "--sandbox",
        choices=("none", "bubblewrap"),
        help="isolate the local server's kernels ('bubblewrap': own folder, no network)",
    )
    mcp.add_argument(
        "--log-file", help="keep the log of the local server in this file (default: not kept)"
    )
    mcp.set_defaults(handler=_mcp)

    sessions = commands.add_parser(
        "sessions", parents=[server], help="list the agent sessions of a running server"
    )
    sessions.add_argument("--json", action="store_true", help="print the session models as JSON")
    sessions.set_defaults(handler=_sessions)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with _sigterm_as_exit():
        try:
            status: int = args.handler(args, parser)
        except JupyterExecError as e:
            print(f"jupyter-exec: error: {e}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            print("jupyter-exec: interrupted", file=sys.stderr)
            return 130
    return status


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.code is not None:
        cells = [Cell(args.code, 1)]
    else:
        cells = split_cells(_read_source(args.file, parser))
    if not Path(args.output_dir).is_dir():
        parser.error(f"--output-dir {args.output_dir!r} is not a directory")
    if args.timeout < 1:
        parser.error("--timeout must be at least 1 second")
    env = dict(_name_and_value(item, parser) for item in args.env)
    uploads = [_pair(item, "--upload", parser) for item in args.upload]
    downloads = [_pair(item, "--download", parser) for item in args.download]
    for local, _remote in uploads:
        if not Path(local).is_file():
            parser.error(f"--upload {local!r}: no such file")
    if args.background:
        if downloads:
            parser.error("--download needs the run's end: it cannot go with --background")
        return _run_in_background(args, parser, cells, env, uploads)
    with contextlib.ExitStack() as stack:
        if args.url:
            if args.sandbox is not None:
                parser.error("--sandbox is for the local server: a server at --url has its own")
            connection: JupyterConnectable | JupyterConnectionInfo = _connection_info(args, parser)
        else:
            connection = stack.enter_context(_embedded_server(args.log_file, args.sandbox))
        executor = stack.enter_context(
            JupyterCodeExecutor(
                connection,
                kernel_name=args.kernel,
                timeout=args.timeout,
                output_dir=args.output_dir,
                env=env,
            )
        )
        if not args.url and not (uploads or downloads):
            # The embedded server's sessions work in its temporary folder; code run from
            # the command line expects the folder it was started in, as `python FILE` does.
            executor.execute_code_blocks(
                [CodeBlock(f"import os as _os\n_os.chdir({os.getcwd()!r})\ndel _os")]
            )
        for source, target in uploads:
            executor.upload(source, target)
        status = _run_cells(executor, cells)
        for remote, destination in downloads:
            # Whatever the cells did: what they wrote before failing is still worth having.
            saved = executor.download(remote, destination or args.output_dir)
            print(f"jupyter-exec: downloaded {remote} to {saved}", file=sys.stderr)
        return status
    return EXIT_OK  # pragma: no cover - the with block returns


def _mcp(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        from .mcp_stdio import serve  # noqa: PLC0415 - the [mcp] extra, optional
    except ImportError as e:
        if e.name is None or e.name.split(".")[0] not in ("mcp", "mcp_types", "anyio"):
            raise
        print(
            "jupyter-exec: error: 'jupyter-exec mcp' needs the MCP SDK: "
            "pip install 'jupyter-exec-client[mcp]'",
            file=sys.stderr,
        )
        return EXIT_ERROR
    with contextlib.ExitStack() as stack:
        if args.url:
            if args.sandbox is not None:
                parser.error("--sandbox is for the local server: a server at --url has its own")
            connection = _connection_info(args, parser)
        else:
            local = stack.enter_context(_embedded_server(args.log_file, args.sandbox))
            connection = local.connection_info
        asyncio.run(serve(connection, args.kernel))
    return EXIT_OK


def _pair(item: str, option: str, parser: argparse.ArgumentParser) -> tuple[str, str | None]:
    """``SOURCE[:TARGET]`` as (source, target or None)."""
    source, _, target = item.partition(":")
    if not source:
        parser.error(f"{option} {item!r}: name a file")
    return source, target or None


def _name_and_value(item: str, parser: argparse.ArgumentParser) -> tuple[str, str]:
    name, equals, value = item.partition("=")
    if not equals or not name:
        parser.error(f"--env {item!r}: use NAME=VALUE")
    return name, value


def _files(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not args.url:
        parser.error("files needs the server: give --url (or set JUPYTER_EXEC_URL)")
    info = _connection_info(args, parser)
    api = AgentSessionsAPI(info)
    transport = SyncTransport(info)
    try:
        session_id = _session_id(args.session, api, transport)
        if args.action == "ls":
            listing = run_sync(api.list_workspace(session_id, args.path), transport)
            _print_listing(listing["entries"], as_json=args.json)
        elif args.action == "get":
            remote = args.remote
            target = Path(args.local or PurePosixPath(remote.rstrip("/")).name)
            if target.is_dir():
                target /= PurePosixPath(remote.rstrip("/")).name
            partial = target.with_name(f".{target.name}.part")
            try:
                run_sync(api.download_workspace_file(session_id, remote, partial), transport)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
            print(f"{remote} -> {target}")
        elif args.action == "put":
            local = Path(args.local)
            if not local.is_file():
                parser.error(f"{args.local!r}: no such file")
            entry = run_sync(api.upload(session_id, local, args.remote or local.name), transport)
            print(f"{local} -> {entry['path']} ({entry['size']} bytes)")
        else:
            run_sync(api.delete_workspace_path(session_id, args.path), transport)
    finally:
        transport.close()
    return EXIT_OK


def _session_id(id_or_name: str, api: AgentSessionsAPI, transport: SyncTransport) -> str:
    """The id of the live session with that id or name."""
    models = run_sync(api.list_sessions(), transport)
    for model in models:
        if id_or_name in (model.get("id"), model.get("name")):
            return str(model["id"])
    known = ", ".join(str(model.get("name")) for model in models) or "none"
    raise SessionNotFoundError(
        404, f"No live session with the id or name {id_or_name!r} (sessions: {known})"
    )


def _print_listing(entries: list[dict[str, object]], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(entries, indent=2))
        return
    for entry in entries:
        suffix = "/" if entry.get("type") == "directory" else ""
        print(f"{entry.get('size', 0)!s:>12}  {entry.get('modified', '')}  {entry['path']}{suffix}")


def _run_cells(executor: JupyterCodeExecutor, cells: list[Cell]) -> int:
    for number, cell in enumerate(cells, start=1):
        where = f"cell {number}/{len(cells)} (line {cell.line})"
        if len(cells) > 1:
            print(f"--- {where} ---", file=sys.stderr, flush=True)
        with ElapsedTicker(f"running {where}", sys.stderr) as ticker:
            printer = OutputPrinter(ticker)
            shown = printer.callbacks()
            result = executor.run(
                cell.code,
                on_stdout=shown.on_stdout,
                on_stderr=shown.on_stderr,
                on_display=shown.on_display,
                on_result=shown.on_result,
                on_error=shown.on_error,
                on_note=shown.on_note,
            )
            printer.end_cell()
        if result.exit_code != 0:
            print(f"jupyter-exec: {where} failed", file=sys.stderr)
            return EXIT_CELL_FAILED
    return EXIT_OK


def _run_in_background(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    cells: list[Cell],
    env: dict[str, str],
    uploads: list[tuple[str, str | None]],
) -> int:
    if not args.url:
        parser.error(
            "--background needs a running server: give --url (or set JUPYTER_EXEC_URL); a "
            "local server would stop with this command"
        )
    info = _connection_info(args, parser)
    api = AgentSessionsAPI(info)
    transport = SyncTransport(info)
    try:
        session = run_sync(api.create_session(args.kernel, env=env), transport)
        for source, target in uploads:
            local = Path(source)
            run_sync(api.upload(session["id"], local, target or local.name), transport)
        code = "\n\n".join(cell.code for cell in cells)
        execution = run_sync(api.start_execution(session["id"], code, args.timeout), transport)
    finally:
        transport.close()
    print(f"{session['id']} {execution['id']}", flush=True)
    print(
        f"jupyter-exec: follow it with: jupyter-exec attach {session['id']} {execution['id']}",
        file=sys.stderr,
    )
    return EXIT_OK


def _attach(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not args.url:
        parser.error("attach needs the server: give --url (or set JUPYTER_EXEC_URL)")
    if not Path(args.output_dir).is_dir():
        parser.error(f"--output-dir {args.output_dir!r} is not a directory")
    info = _connection_info(args, parser)
    core = ExecutorCore(info, "python3", 60, args.output_dir)
    transport = SyncTransport(info)
    try:
        with ElapsedTicker(f"execution {args.execution}", sys.stderr) as ticker:
            printer = OutputPrinter(ticker)
            flow = core.follow_execution(args.session, args.execution, printer.callbacks())
            result: IPythonCodeResult = run_sync(flow, transport)
            printer.end_cell()
    finally:
        transport.close()
    if result.exit_code != 0:
        print(f"jupyter-exec: execution {args.execution} failed", file=sys.stderr)
        return EXIT_CELL_FAILED
    return EXIT_OK


def _sessions(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not args.url:
        parser.error("sessions needs the server: give --url (or set JUPYTER_EXEC_URL)")
    info = _connection_info(args, parser)
    transport = SyncTransport(info)
    try:
        models = run_sync(AgentSessionsAPI(info).list_sessions(), transport)
    finally:
        transport.close()
    if args.json:
        print(json.dumps(models, indent=2))
        return EXIT_OK
    if not models:
        print("No agent sessions.")
        return EXIT_OK
    columns = ("id", "name", "kernel_name", "status", "execution_count", "last_activity")
    rows = [[str(model.get(column, "")) for column in columns] for model in models]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    for row in [list(columns), *rows]:
        cells = (value.ljust(width) for value, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return EXIT_OK


def _connection_info(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> JupyterConnectionInfo:
    try:
        return JupyterConnectionInfo.from_url(args.url, token=args.token)
    except ValueError as e:
        parser.error(str(e))


@contextlib.contextmanager
def _embedded_server(log_file: str | None, sandbox: str | None) -> Iterator[LocalJupyterServer]:
    """A local server for one run, in a temporary folder removed with it."""
    with (
        tempfile.TemporaryDirectory(prefix="jupyter-exec-") as root,
        LocalJupyterServer(
            root_dir=root,
            log_file=log_file or Path(root, "server.log"),
            # One session: kernels started ahead of time would only compete for the CPU.
            kernel_pool=0,
            sandbox=sandbox,
        ) as server,
    ):
        yield server


def _read_source(file: str, parser: argparse.ArgumentParser) -> str:
    if file == "-":
        return sys.stdin.read()
    try:
        return Path(file).read_text(encoding="utf-8")
    except OSError as e:
        parser.error(f"cannot read {file}: {e.strerror or e}")


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so the local server and session are stopped."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
