"""A Jupyter server with the agent-session extension, run as a subprocess of this Python.

The server runs in a process group of its own and is stopped, with every kernel it started
and whatever those kernels started, by :meth:`LocalJupyterServer.stop`, at the end of a
``with`` block, when the object is garbage-collected, or when the interpreter exits.
Nothing of Jupyter is imported here: the server is only a subprocess.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import logging.handlers
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import IO

import requests

from .connection import JupyterConnectionInfo
from .errors import ServerStartError

__all__ = ["LocalJupyterServer"]

#: Seconds between two looks at a starting server: short, so the first call is not delayed.
_POLL_INTERVAL = 0.025
#: Lines of the server's log kept in memory to explain a failed start.
_LOG_TAIL_LINES = 40
_EXTENSION = "jupyter_exec_ext"
_PORT_ATTEMPTS = 3


class LocalJupyterServer:
    """A ``jupyter server`` with the agent-session API on this machine (AutoGen's API).

    The server listens on ``ip``:``port`` (a free port when None) with ``token`` (64 random
    hex digits when None), serves ``root_dir`` (the current directory when None), and
    writes its log (and its kernels' stderr) to ``log_file``, rotated past
    ``log_max_bytes`` with ``log_backup_count`` old files kept. The constructor returns
    when the API answers.

    By default the server loads only the agent-session extension, which starts it faster;
    ``other_extensions=True`` loads the environment's other server extensions as well (for
    JupyterLab at ``connection_info.base_url + "lab"``). ``kernel_pool`` kernels are kept
    started ahead of time for new sessions (None: the server's configuration).
    ``sandbox`` is how session kernels are isolated: ``"bubblewrap"`` runs each in a
    bubblewrap sandbox that sees only its own folder and no network (Linux, with ``bwrap``
    installed; session creation fails where it cannot be made), ``"none"`` runs them as your
    user, None leaves it to the server's configuration (``"none"`` by default).
    ``extra_args`` are added to the server's command line.
    """

    def __init__(  # noqa: PLR0917 - AutoGen's signature, positional arguments included
        self,
        ip: str = "127.0.0.1",
        port: int | None = None,
        token: str | None = None,
        log_file: str | PathLike[str] = "jupyter_gateway.log",
        log_level: str = "INFO",
        log_max_bytes: int = 1048576,
        log_backup_count: int = 3,
        *,
        root_dir: str | PathLike[str] | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        kernel_pool: int | None = 1,
        sandbox: str | None = None,
        other_extensions: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        """Start the server and wait until its agent-session API answers."""
        missing = [name for name in (_EXTENSION, "jupyter_server") if not _importable(name)]
        if missing:
            raise ServerStartError(
                f"{' and '.join(missing)} cannot be imported in {sys.executable}: install "
                "jupyter-exec-ext into this Python environment to run a local server "
                "(or connect to a running server with JupyterConnectionInfo)."
            )
        self.ip = ip
        self.token = token if token is not None else secrets.token_hex(32)
        self.log_file = Path(log_file).resolve()
        self.root_dir = Path(root_dir if root_dir is not None else os.getcwd()).resolve()
        self.log_level = log_level
        self._stop_timeout = stop_timeout
        if sandbox not in (None, "none", "bubblewrap"):
            raise ValueError(f"sandbox must be 'none', 'bubblewrap' or None, not {sandbox!r}")
        self._options = _server_options(kernel_pool, sandbox, other_extensions, extra_args)
        log_handler = logging.handlers.RotatingFileHandler(
            self.log_file, maxBytes=log_max_bytes, backupCount=log_backup_count, encoding="utf-8"
        )
        try:
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                self.port = port if port is not None else _free_port(ip)
                process = self._launch(log_handler)
                try:
                    self._wait_until_ready(process, start_timeout)
                    break
                except _PortTaken:
                    process.stop(self._stop_timeout, close_log=False)
                    if port is not None or attempt == _PORT_ATTEMPTS:
                        raise ServerStartError(
                            f"Port {self.port} on {ip} is in use; the end of the server's log "
                            f"({self.log_file}):\n{process.log_tail()}"
                        ) from None
                except BaseException:
                    process.stop(self._stop_timeout)
                    raise
        except BaseException:
            log_handler.close()
            raise
        self._process: _ServerProcess | None = process
        # Runs on stop(), on garbage collection, or at interpreter exit, whichever is first;
        # it holds the process, not self, so it does not keep the server object alive.
        self._finalizer = weakref.finalize(self, process.stop, self._stop_timeout)

    @property
    def connection_info(self) -> JupyterConnectionInfo:
        """The address and token of the server."""
        return JupyterConnectionInfo(
            host=_connect_host(self.ip), use_https=False, port=self.port, token=self.token
        )

    @property
    def pid(self) -> int | None:
        """The process id of the server, None once it is stopped."""
        return self._process.popen.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.popen.poll() is None

    def stop(self) -> None:
        """Stop the server and every process it started; calling it again does nothing."""
        self._process = None
        self._finalizer()

    def __enter__(self) -> LocalJupyterServer:
        """The running server."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    def __repr__(self) -> str:
        """Where the server is; never its token."""
        return f"<LocalJupyterServer {self.connection_info.base_url} pid={self.pid}>"

    # -- starting ------------------------------------------------------------------------

    def _launch(self, log_handler: logging.Handler) -> _ServerProcess:
        command = [
            sys.executable,
            "-m",
            # jupyter server, less a second of imports nothing here uses (see its docstring).
            "jupyter_exec_ext.launch",
            "--no-browser",
            f"--ServerApp.ip={self.ip}",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={self.root_dir}",
            f"--Application.log_level={self.log_level}",
            f"--ServerApp.jpserver_extensions={_EXTENSION}=True",
            *self._options,
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")
        # The token goes by environment, not argument: other users can read command lines.
        env = {**os.environ, "JUPYTER_TOKEN": self.token}
        env.pop("JUPYTER_TOKEN_FILE", None)
        log_handler.handle(
            logging.makeLogRecord(
                {
                    "msg": f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting "
                    f"a Jupyter server on port {self.port} ---"
                }
            )
        )
        # A process group of its own: a Ctrl-C in the terminal (sent to our group) does not
        # reach the server, which we stop in order instead, and its group can be killed.
        popen = subprocess.Popen(
            command,
            cwd=self.root_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=sys.platform != "win32",
            creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0),
        )
        return _ServerProcess(popen, log_handler)

    def _wait_until_ready(self, process: _ServerProcess, start_timeout: float) -> None:
        url = self.connection_info.url("api/agent-sessions")
        deadline = time.monotonic() + start_timeout
        with requests.Session() as http:
            http.headers["Authorization"] = f"token {self.token}"
            while True:
                status = _status_of(http, url)
                if status == 200:
                    return
                if status in (401, 403):
                    raise ServerStartError(
                        f"The local Jupyter server refused its own token at {url}: a Jupyter "
                        "configuration file probably sets IdentityProvider.token."
                    )
                if status == 404:
                    raise ServerStartError(
                        f"The local Jupyter server has no agent-session API at {url}: the "
                        f"{_EXTENSION} extension did not load. The end of its log "
                        f"({self.log_file}):\n{process.log_tail()}"
                    )
                exit_code = process.popen.poll()
                if exit_code is not None:
                    tail = process.log_tail(wait=True)
                    if "already in use" in tail:
                        raise _PortTaken
                    raise ServerStartError(
                        f"The local Jupyter server exited with status {exit_code} while "
                        f"starting. The end of its log ({self.log_file}):\n{tail}"
                    )
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"The local Jupyter server did not answer at {url} within "
                        f"{start_timeout:g} s. The end of its log ({self.log_file}):\n"
                        f"{process.log_tail()}"
                    )
                time.sleep(_POLL_INTERVAL)


class _PortTaken(Exception):
    """The chosen port was taken between choosing it and the server binding it."""


class _ServerProcess:
    """The server's process, the thread copying its output to the log, and how to end both."""

    def __init__(self, popen: subprocess.Popen[bytes], log_handler: logging.Handler) -> None:
        self.popen = popen
        self._log_handler = log_handler
        self._tail: deque[str] = deque(maxlen=_LOG_TAIL_LINES)
        assert popen.stdout is not None
        self._log_pump = threading.Thread(
            target=self._copy_log,
            args=(popen.stdout,),
            name=f"jupyter-server-{popen.pid}-log",
            daemon=True,
        )
        self._log_pump.start()
        self._stopped = False

    def _copy_log(self, stream: IO[bytes]) -> None:
        """Copy the server's output (and its kernels') to the log file, line by line."""
        with stream:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self._tail.append(line)
                self._log_handler.handle(logging.makeLogRecord({"msg": line}))

    def log_tail(self, *, wait: bool = False) -> str:
        """The last lines of the server's output; ``wait`` lets the copy catch up first."""
        if wait:
            self._log_pump.join(timeout=1.0)
        return "\n".join(self._tail)

    def stop(self, timeout: float, *, close_log: bool = True) -> None:
        """SIGTERM the server (it shuts its kernels down), wait, then SIGKILL what is left.

        What is left means every process group of the server's process tree, as it was just
        before the SIGTERM: kernels run in groups of their own, and so do what they start.
        """
        if self._stopped:
            return
        self._stopped = True
        groups = _process_groups(self.popen.pid) if self.popen.poll() is None else set()
        if self.popen.poll() is None:
            self.popen.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        _kill_groups(groups, self.popen)
        self.popen.wait()
        self._log_pump.join(timeout=2.0)
        if close_log:
            self._log_handler.close()


# -- helpers ---------------------------------------------------------------------------------


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _server_options(
    kernel_pool: int | None, sandbox: str | None, other_extensions: bool, extra_args: Sequence[str]
) -> list[str]:
    options = []
    if kernel_pool is not None:
        options.append(f"--AgentSessionManager.kernel_pool=python3={kernel_pool}")
    if sandbox is not None:
        options.append(f"--AgentSessionManager.sandbox={sandbox}")
    if not other_extensions:
        options += [f"--ServerApp.jpserver_extensions={name}=False" for name in _other_extensions()]
    return [*options, *extra_args]


def _other_extensions() -> list[str]:
    """Names of the server extensions the Jupyter configuration enables, but ours.

    jupyter_server adds every extension named in a ``jupyter_server_config.json`` (or its
    ``.d`` folder) unless the command line names it; so each is named there, as disabled.
    """
    try:
        from jupyter_core.paths import jupyter_config_path  # noqa: PLC0415 - only here
    except ImportError:
        return []
    names: set[str] = set()
    for folder in map(Path, jupyter_config_path()):
        files = [folder / "jupyter_server_config.json"]
        files += sorted((folder / "jupyter_server_config.d").glob("*.json"))
        for file in files:
            try:
                config = json.loads(file.read_text(encoding="utf-8"))
                extensions = config["ServerApp"]["jpserver_extensions"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if isinstance(extensions, dict):
                names.update(str(name) for name in extensions)
    names.discard(_EXTENSION)
    return sorted(names)


def _free_port(ip: str) -> int:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((ip, 0))
        port: int = probe.getsockname()[1]
        return port


def _connect_host(ip: str) -> str:
    """The address to connect to a server listening on ``ip`` (any-address means loopback)."""
    if ip in ("", "0.0.0.0"):
        return "127.0.0.1"
    if ip == "::":
        return "::1"
    return ip


def _status_of(http: requests.Session, url: str) -> int | None:
    """The status of a GET on ``url``, None when nothing answers yet."""
    try:
        with http.get(url, timeout=5) as answer:
            return answer.status_code
    except requests.RequestException:
        return None


def _process_groups(root_pid: int) -> set[int]:
    """The process groups of ``root_pid`` and all its descendants (POSIX; empty elsewhere)."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _group) in table.items():
        children.setdefault(parent, []).append(pid)
    groups: set[int] = set()
    pending = [root_pid]
    while pending:
        pid = pending.pop()
        if pid in table:
            groups.add(table[pid][1])
        pending.extend(children.get(pid, []))
    if hasattr(os, "getpgrp"):
        groups.discard(os.getpgrp())  # never our own group
    return groups


def _process_table() -> dict[int, tuple[int, int]]:
    """Every process: pid -> (parent pid, process group)."""
    table: dict[int, tuple[int, int]] = {}
    if sys.platform == "win32":
        return table
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name, in parentheses, may itself hold spaces and parentheses.
            fields = stat.rsplit(")", 1)[1].split()
            table[int(entry.name)] = (int(fields[1]), int(fields[2]))
        return table
    try:
        listing = subprocess.run(
            ["ps", "-A", "-o", "pid=", "-o", "ppid=", "-o", "pgid="],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return table
    for line in listing.splitlines():
        numbers = line.split()
        if len(numbers) == 3 and all(n.isdigit() for n in numbers):
            table[int(numbers[0])] = (int(numbers[1]), int(numbers[2]))
    return table


def _kill_groups(groups: set[int], popen: subprocess.Popen[bytes]) -> None:
    """SIGKILL every process still in ``groups`` and the server itself."""
    if sys.platform == "win32":
        if popen.poll() is None:
            subprocess.run(
                ["taskkill", "/F", "/T", "/PID", str(popen.pid)],
                capture_output=True,
                check=False,
            )
        return
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    if popen.poll() is None:
        popen.kill()
