"""The agent-session manager: owns every session, its kernel and its files."""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from jupyter_client.provisioning.factory import KernelProvisionerFactory
from jupyter_core.utils import ensure_async
from jupyter_server.services.contents.filemanager import (
    AsyncFileContentsManager,
    FileContentsManager,
)
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.ioloop import PeriodicCallback
from traitlets import Bool, Dict, Enum, Float, Integer, List, Type, Unicode, default
from traitlets.config import LoggingConfigurable

import kernel_helper

from .changes import WorkspaceChanges
from .events import AgentSessionEvents
from .executions import Execution, ExecutionRegistry
from .gateway import GatewayKernelConnection, is_gateway_kernel_manager, kernel_spec_from_model
from .kernel import KernelConnection, KernelDied
from .live_transcript import LiveNotebooks
from .pool import KernelPool
from .sandbox import (
    LAUNCH_ARGUMENT,
    PROVISIONER_NAME,
    SANDBOX_WORKING_DIR,
    SandboxError,
    SandboxOptions,
    check_bubblewrap,
)
from .session import AgentSession, SessionClosedError, utcnow
from .store import OutputStore, StoredFile
from .transcript import Transcript
from .workspace import UPLOAD_PREFIX, OpenedFile, Upload, Workspace, entry_model

#: Session names become folder names, so they are kept to a safe, portable alphabet.
SESSION_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


#: Names of environment variables, as POSIX shells accept them.
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Variables the interpreter or the dynamic loader read when a process starts: setting them
#: in a pooled kernel that is already running would not do what they say, so a session with
#: one of them starts a kernel of its own.
_START_ONLY_ENV_PREFIXES = ("PYTHON", "LD_", "DYLD_")

#: Tries to start a session's kernel: one more when a kernel dies while starting.
_KERNEL_START_ATTEMPTS = 2


def _runs_python(spec: Any) -> bool:
    """Whether kernels of ``spec`` run Python, so that the kernel helper can be loaded."""
    return str(getattr(spec, "language", "")).lower() == "python"


class AgentSessionManager(LoggingConfigurable):
    """Creates, finds, runs and deletes agent sessions; every knob of their behaviour is here."""

    default_timeout = Float(
        60.0,
        config=True,
        help="Seconds an execute call may run when the request names no timeout. When it "
        "passes, the kernel is interrupted and the call returns what was printed so far.",
    )

    max_timeout = Float(
        86_400.0,
        config=True,
        help="The largest timeout, in seconds, that a request may ask for.",
    )

    interrupt_grace = Float(
        3.0,
        config=True,
        help="Seconds a timed-out call waits for the interrupted kernel to stop. A kernel "
        "still busy after that is restarted (its state is lost) so the next call can run.",
    )

    max_output_chars = Integer(
        100_000,
        config=True,
        help="Characters of text an execution result keeps in 'output'. Beyond it the head and "
        "the tail are kept, the cut is marked, and the whole text is saved as a file. "
        "0 means no limit.",
    )

    sessions_dir = Unicode(
        "agent-sessions",
        config=True,
        help="Folder holding each session's working folder (<sessions_dir>/<session name>). "
        "A relative path is taken from the server's root_dir.",
    )

    output_store_dir = Unicode(
        "",
        config=True,
        help="Folder for the files sessions capture (images, HTML, full texts of cut output), "
        "one private subfolder per session, removed with it. Empty: a temporary folder made "
        "at start and removed at shutdown.",
    )

    transcripts = Bool(
        True,
        config=True,
        help="Write a transcript notebook for every session (one code cell per call) beside its "
        "working folder's files, and register the session with the server's session manager so "
        "JupyterLab lists it and can open it on the live kernel. Needs sessions_dir under the "
        "server's root_dir.",
    )

    transcript_write_interval = Float(
        1.0,
        config=True,
        help="Seconds a session's transcript gathers calls before they are written, so a burst "
        "of calls costs one write of the notebook instead of one each. A call shows in the "
        "transcript file at most this long after it ended. 0 writes after every call.",
    )

    transcript_name = Unicode(
        "transcript.ipynb",
        config=True,
        help="File name of a session's transcript in its working folder. When a file of that "
        "name is already there (from an earlier session of the same name), a number is added.",
    )

    kernel_pool = Dict(
        default_value={"python3": 2},
        key_trait=Unicode(),
        value_trait=Integer(min=0),
        config=True,
        help="Kernels kept started ahead of time, per kernel name, so a new session gets one at "
        "once; the pool refills in the background, and a pooled kernel serves one session only. "
        "An empty dict (or 0) turns the pool off.",
    )

    kernel_pool_preload = List(
        Unicode(),
        default_value=["numpy", "pandas", "matplotlib.pyplot"],
        config=True,
        help="Modules imported into each pooled Python kernel while it waits for a session, so "
        "a session's first import of them is instant (a first plot: ~0.2x the time of a new "
        "kernel instead of ~0.6x). They go into sys.modules only: the session's namespace stays "
        "empty until its code imports them; with matplotlib, one small figure is also drawn "
        "to memory (object API, no pyplot figure), so fonts and the PNG writer are loaded. "
        "Modules the kernel's Python lacks are skipped; one "
        "that fails to import is logged and the kernel is used anyway. Each pooled kernel holds "
        "what they take in memory (numpy, pandas and matplotlib: ~80 MB). Kernels started for "
        "a session (no pooled one ready, a sandbox with env) do not preload. An empty list "
        "turns preloading off.",
    )

    kernel_pool_refill_delay = Float(
        1.0,
        config=True,
        help="Seconds after a session takes a pooled kernel before the pool starts its "
        "replacement, so the replacement's boot and preload (over a second of CPU) do not "
        "slow the new session's first call, which usually comes at once. 0 refills at once.",
    )

    max_sessions = Integer(
        100,
        config=True,
        help="Most agent sessions one server runs at once; creating one more answers 429. "
        "0 means no limit.",
    )

    max_code_chars = Integer(
        1_000_000,
        config=True,
        help="Most characters of code one execute call may send; more answers 413. "
        "0 means no limit.",
    )

    max_session_file_bytes = Integer(
        512 * 1024 * 1024,
        config=True,
        help="Most bytes of captured files (images, HTML, full texts) one session keeps. Past "
        "it new files are not kept and the result says so. 0 means no limit.",
    )

    kernel_memory_limit = Integer(
        0,
        config=True,
        help="Bytes of data memory each session's (Python) kernel may use. Code that goes "
        "past it gets a 'memory limit' result and the session a fresh kernel; the server and "
        "other sessions are unaffected. A sandboxed kernel is also held to it with all its "
        "processes and its /tmp (a cgroup limit). 0 means no limit.",
    )

    cull_idle_timeout = Float(
        0.0,
        config=True,
        help="Seconds after its last call that an idle session is deleted (a session that is "
        "running code is never culled). 0 means sessions are never culled.",
    )

    cull_interval = Float(
        60.0,
        config=True,
        help="Seconds between two looks for idle sessions to cull.",
    )

    kernel_start_timeout = Float(
        60.0,
        config=True,
        help="Seconds to wait for a new kernel to answer before giving up.",
    )

    max_env_vars = Integer(
        100,
        config=True,
        help="Most environment variables a session may be created with ('env'); more answers "
        "400. 0 means no limit.",
    )

    max_env_bytes = Integer(
        65_536,
        config=True,
        help="Most bytes (UTF-8) of a session's environment variables, names and values "
        "together; more answers 400, naming the variable that went past it. 0 means no limit.",
    )

    max_upload_bytes = Integer(
        1 << 30,
        config=True,
        help="Most bytes one upload into a session's workspace (PUT) may have; a bigger one "
        "answers 413 and leaves no file behind. 0 means no limit.",
    )

    track_workspace_changes = Bool(
        True,
        config=True,
        help="List in each execution result the files the call created, modified or deleted "
        "in the session's working folder ('workspace_changes'). False leaves the list empty.",
    )

    max_workspace_entries = Integer(
        10_000,
        config=True,
        help="Most entries of a working folder looked at per call to find what it changed, "
        "and listed per folder by the workspace API. Past it the call's changes are cut "
        "(the result says so) and a listing is marked truncated. 0 means no limit.",
    )

    sandbox = Enum(
        ["none", "bubblewrap"],
        default_value="none",
        config=True,
        help="How session kernels are isolated. 'none': they run as the server's user and see "
        "what it sees (its files, environment, network). 'bubblewrap': each runs in a "
        "bubblewrap sandbox that sees only its own working folder (read-write), the system and "
        "Python read-only, a private /tmp and /proc, no network unless sandbox_network, with "
        "limits. When the sandbox cannot be made, creating a session fails (500) and no kernel "
        "runs unsandboxed.",
    )

    sandbox_network = Bool(
        False,
        config=True,
        help="Let sandboxed kernels use the server's network (loopback included: the server's "
        "own port). False: a network namespace with only its own loopback.",
    )

    sandbox_cpu_limit = Float(
        0.0,
        min=0.0,
        config=True,
        help="CPU cores each sandboxed kernel may use (1.5 = one and a half), with all its "
        "processes; needs writable cgroups. 0 means no limit.",
    )

    sandbox_process_limit = Integer(
        512,
        min=0,
        config=True,
        help="Processes and threads each sandboxed kernel may run at once, itself included "
        "(a fork bomb stops there). A cgroup limit; where cgroups are not writable, a per-user "
        "rlimit that does not bind root. 0 means no limit.",
    )

    sandbox_read_only_paths = List(
        Unicode(),
        config=True,
        help="More host paths sandboxed kernels see read-only, at the same place (data sets, "
        "another Python environment). The system (/usr, /etc) and the kernel's Python "
        "environment are always there.",
    )

    kernel_connection_class = Type(
        klass=KernelConnection,
        config=True,
        help="The class that talks to a session's kernel. By default GatewayKernelConnection "
        "when the server runs its kernels on a gateway (--gateway-url), else KernelConnection.",
    )

    @default("kernel_connection_class")
    def _default_kernel_connection_class(self) -> type[KernelConnection]:
        if is_gateway_kernel_manager(self.kernel_manager):
            return GatewayKernelConnection
        return KernelConnection

    def __init__(
        self,
        *,
        kernel_manager: Any,
        kernel_spec_manager: Any,
        root_dir: str,
        base_url: str = "/",
        contents_manager: Any = None,
        session_manager: Any = None,
        **kwargs: Any,
    ) -> None:
        """Manage sessions on the kernels of ``kernel_manager`` (a MappingKernelManager).

        Without a ``contents_manager`` and ``session_manager`` (Kernel Gateway has neither)
        sessions have no transcript.
        """
        super().__init__(**kwargs)
        self.kernel_manager = kernel_manager
        self.kernel_spec_manager = kernel_spec_manager
        self.contents_manager = contents_manager
        self.session_manager = session_manager
        # Agent session id -> the id of its row in the server's session manager.
        self._server_sessions: dict[str, str] = {}
        self.root_dir = Path(root_dir).expanduser()
        self.base_url = base_url
        self._sessions: dict[str, AgentSession] = {}
        # Names are reserved while their session starts, so two creations cannot share one.
        self._reserved_names: set[str] = set()
        self._store_root: Path | None = None
        self._owns_store_root = False
        self._pool: KernelPool | None = None
        self._culler: PeriodicCallback | None = None
        self._cull_task: asyncio.Future[None] | None = None
        #: Where transcripts are written live (set by the app; ``c.LiveNotebooks.*``).
        self.live_notebooks: LiveNotebooks | None = None
        #: Server events of sessions and their calls (set by the app; None: not sent).
        self.events: AgentSessionEvents | None = None
        #: Streamed and background executions; its settings are ``c.ExecutionRegistry.*``.
        self.executions = ExecutionRegistry(parent=self, log=self.log)
        self._sandbox_checked = False
        self._sandbox_kernels_dir: Path | None = None
        # Working folders of pooled sandboxed kernels, one per kernel: a session that takes
        # the kernel renames its folder to the session's (the sandbox's bind follows it).
        self._pool_folders: Path | None = None

    # -- lookups -------------------------------------------------------------------------

    def _check_session(self, session_id: str) -> AgentSession:
        """The session with this id, or a 404."""
        session = self._sessions.get(session_id)
        if session is None:
            raise web.HTTPError(404, f"Agent session not found: {session_id}")
        return session

    def list_sessions(self) -> list[dict[str, Any]]:
        """Models of all live sessions, oldest first."""
        return [session.model() for session in self._sessions.values()]

    def get_session(self, session_id: str) -> dict[str, Any]:
        """The model of one session."""
        return self._check_session(session_id).model()

    def get_file(self, session_id: str, file_id: str) -> StoredFile:
        """A file the session captured, or a 404."""
        stored = self._check_session(session_id).store.get(file_id)
        if stored is None:
            raise web.HTTPError(404, f"File not found in agent session {session_id}: {file_id}")
        return stored

    # -- the workspace -------------------------------------------------------------------

    def _workspace(self, session_id: str) -> Workspace:
        session = self._check_session(session_id)
        return Workspace(session.working_dir, session.name)

    def read_workspace(self, session_id: str, path: str) -> dict[str, Any] | OpenedFile:
        """A folder's listing or an open file of the session's working folder, or a 4xx."""
        return self._workspace(session_id).read(path, self.max_workspace_entries)

    def start_upload(self, session_id: str, path: str, declared_size: int | None) -> Upload:
        """Begin an upload into the session's working folder; 413 when it is too large."""
        workspace = self._workspace(session_id)
        if self.max_upload_bytes and declared_size is not None:
            self._check_upload_size(declared_size)
        return workspace.start_upload(path, self.max_upload_bytes)

    def finish_upload(self, upload: Upload) -> tuple[bool, dict[str, Any]]:
        """Put a complete upload in place: whether the file is new, and its listing model."""
        if upload.too_large:
            upload.discard()
            self._check_upload_size(upload.size)
        created = upload.commit()
        return created, entry_model(upload.relative, upload.target.lstat())

    def _check_upload_size(self, size: int) -> None:
        if size > self.max_upload_bytes:
            raise web.HTTPError(
                413,
                f"The upload is {size} bytes or more; this server accepts at most "
                f"{self.max_upload_bytes} bytes per file",
            )

    def delete_workspace_path(self, session_id: str, path: str) -> None:
        """Delete a file or folder of the session's working folder."""
        self._workspace(session_id).delete(path)

    def _track_changes(self, session: AgentSession) -> WorkspaceChanges | None:
        """The tracker of what the session's calls write, or None when that is off."""
        if not self.track_workspace_changes:
            return None
        transcript = None
        if session.transcript is not None:
            transcript = PurePosixPath(session.transcript.path).name

        def ignore(relative: str) -> bool:
            # The server's own writes: the transcript (and its temporary files), uploads
            # in progress, Jupyter's checkpoints.
            name = relative.rsplit("/", 1)[-1]
            if name.startswith(UPLOAD_PREFIX) or relative.startswith(".ipynb_checkpoints/"):
                return True
            return transcript is not None and (
                relative == transcript or relative.startswith(f".{transcript}.")
            )

        changes = WorkspaceChanges(session.working_dir, self.max_workspace_entries, ignore)
        changes.start()
        return changes

    @property
    def working_root(self) -> Path:
        """The folder that holds every session's working folder."""
        return self.root_dir / Path(self.sessions_dir).expanduser()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start background work: fill the kernel pool (the server's loop is running)."""
        if self._pool is not None:
            return
        sizes = {}
        for kernel_name, size in self.kernel_pool.items():
            try:
                await self._kernel_spec(kernel_name)
            except web.HTTPError as e:
                self.log.warning("Not pooling kernels: %s", e.log_message)
                continue
            sizes[kernel_name] = size
        self._pool = KernelPool(sizes, self._start_pooled_kernel, self.log)
        self._pool.fill()
        if self.cull_idle_timeout > 0:
            self._culler = PeriodicCallback(self._cull_soon, 1000 * self.cull_interval)
            self._culler.start()

    def _cull_soon(self) -> None:
        """Start a look for idle sessions unless one is still going on."""
        if self._cull_task is None or self._cull_task.done():
            self._cull_task = asyncio.ensure_future(self.cull_idle_sessions())

    async def cull_idle_sessions(self) -> None:
        """Delete the sessions that have been idle longer than ``cull_idle_timeout``."""
        cutoff = utcnow() - timedelta(seconds=self.cull_idle_timeout)
        for session in list(self._sessions.values()):
            # A session deleted meanwhile (by its client, or by shutdown) is not culled again.
            if self._sessions.get(session.id) is not session:
                continue
            if session.status == "idle" and session.last_activity < cutoff:
                self.log.info(
                    "Culling agent session %s: idle since %s", session.name, session.last_activity
                )
                await self.delete_session(session.id)

    def pooled_kernel_ids(self) -> set[str]:
        """Ids of the kernels waiting in the pool (they belong to no session yet)."""
        return self._pool.kernel_ids() if self._pool else set()

    async def create_session(
        self,
        kernel_name: str | None = None,
        name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Start a session with a kernel of its own (``env`` added to its environment) and
        return its model."""
        if (
            self.max_sessions
            and len(self._sessions) + len(self._reserved_names) >= self.max_sessions
        ):
            raise web.HTTPError(
                429,
                f"Too many agent sessions: this server runs at most {self.max_sessions}; delete "
                "one first",
            )
        session_id = str(uuid.uuid4())
        name = name if name is not None else f"session-{session_id[:8]}"
        self._check_name(name)
        env = dict(env or {})
        self._check_env(env)
        kernel_name = kernel_name or self.kernel_manager.default_kernel_name
        spec = await self._kernel_spec(kernel_name)
        working_dir = self.working_root / name
        self._reserved_names.add(name)
        try:
            working_dir.mkdir(parents=True, exist_ok=True)
            connection = await self._start_kernel(
                kernel_name, working_dir, python=_runs_python(spec), env=env
            )
            store = self._new_store(session_id)
            session = AgentSession(
                session_id=session_id,
                name=name,
                kernel_name=kernel_name,
                connection=connection,
                store=store,
                working_dir=working_dir,
                memory_limit=self.kernel_memory_limit,
                interrupt_grace=self.interrupt_grace,
                log=self.log,
                env=env,
            )
            try:
                session.transcript = await self._start_transcript(
                    session, working_dir, kernel_name, spec, store
                )
                session.changes = self._track_changes(session)
            except BaseException:
                await session.close()
                raise
            self._sessions[session_id] = session
        finally:
            self._reserved_names.discard(name)
        self.log.info(
            "Agent session %s (%s) started on kernel %s", name, session_id, session.kernel_id
        )
        model = session.model()
        if self.events is not None:
            session.events = self.events
            self.events.session("session_created", model)
        return model

    async def delete_session(self, session_id: str) -> None:
        """Shut the session's kernel down and forget it; its working folder stays."""
        session = self._check_session(session_id)
        del self._sessions[session_id]
        await session.close()
        self.executions.forget_session(session_id)
        await self._unregister(session_id)
        self.log.info("Agent session %s (%s) deleted", session.name, session_id)
        if self.events is not None:
            self.events.session("session_deleted", session.model())

    async def execute(
        self, session_id: str, code: str, timeout: float | None = None
    ) -> dict[str, Any]:
        """Run code in a session and return the execution result model."""
        session, timeout = self._check_call(session_id, code, timeout)
        try:
            return await session.execute(code, timeout, self.max_output_chars)
        except SessionClosedError as e:
            raise web.HTTPError(404, f"Agent session was deleted: {session_id}") from e

    def _check_call(
        self, session_id: str, code: str, timeout: float | None
    ) -> tuple[AgentSession, float]:
        """The session and the timeout of a call, or the 4xx that the request deserves."""
        session = self._check_session(session_id)
        if self.max_code_chars and len(code) > self.max_code_chars:
            raise web.HTTPError(
                413,
                f"The code is {len(code)} characters long; this server accepts at most "
                f"{self.max_code_chars} per call",
            )
        if timeout is None:
            timeout = self.default_timeout
        elif not (math.isfinite(timeout) and 0 < timeout <= self.max_timeout):
            raise web.HTTPError(
                400, f"timeout must be a number of seconds above 0 and at most {self.max_timeout:g}"
            )
        return session, timeout

    # -- executions (streamed and background calls) --------------------------------------

    def start_execution(
        self, session_id: str, code: str, timeout: float | None = None, *, background: bool
    ) -> Execution:
        """Queue a call whose events can be followed; a background one is kept by its id."""
        session, timeout = self._check_call(session_id, code, timeout)
        return self.executions.start(
            session, code, timeout, self.max_output_chars, background=background
        )

    def get_execution(self, session_id: str, execution_id: str) -> Execution:
        """A background execution of the session, or a 404."""
        self._check_session(session_id)
        return self.executions.get(session_id, execution_id)

    def list_executions(self, session_id: str) -> list[dict[str, Any]]:
        """Models (without results) of the session's kept background executions, oldest first."""
        self._check_session(session_id)
        return [e.model(with_result=False) for e in self.executions.list(session_id)]

    async def interrupt_execution(self, session_id: str, execution_id: str) -> None:
        """Stop one background execution: a queued one never runs, a running one is
        interrupted (it ends with KeyboardInterrupt), a finished one is left as it is."""
        execution = self.get_execution(session_id, execution_id)
        if self.executions.cancel_queued(execution):
            return
        if execution.status == "running":
            await self._check_session(session_id).interrupt()

    async def interrupt(self, session_id: str) -> None:
        """Interrupt whatever the session's kernel is running."""
        await self._check_session(session_id).interrupt()

    async def restart(self, session_id: str) -> dict[str, Any]:
        """Give the session a fresh kernel and return its model."""
        session = self._check_session(session_id)
        try:
            await session.restart()
        except SessionClosedError as e:
            raise web.HTTPError(404, f"Agent session was deleted: {session_id}") from e
        return session.model()

    async def shutdown(self) -> None:
        """Delete every session (the server is stopping)."""
        if self._culler is not None:
            self._culler.stop()
        if self._cull_task is not None:
            # A cull under way finishes its deletions, so no kernel is left half shut down.
            await asyncio.gather(self._cull_task, return_exceptions=True)
        if self._pool is not None:
            await self._pool.shutdown()
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(session.close() for session in sessions), return_exceptions=True)
        await self.executions.shutdown()
        await asyncio.gather(
            *(self._unregister(session.id) for session in sessions), return_exceptions=True
        )
        if self._owns_store_root and self._store_root is not None:
            shutil.rmtree(self._store_root, ignore_errors=True)
        if self._sandbox_kernels_dir is not None:
            shutil.rmtree(self._sandbox_kernels_dir, ignore_errors=True)
        if self._pool_folders is not None:
            # Pooled sandboxed kernels' folders (empty: no session's code ran in them).
            shutil.rmtree(self._pool_folders, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------

    def _check_name(self, name: str) -> None:
        if not SESSION_NAME_PATTERN.match(name):
            raise web.HTTPError(
                400,
                f"Invalid session name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit",
            )
        if name in self._reserved_names or any(s.name == name for s in self._sessions.values()):
            raise web.HTTPError(409, f"An agent session named {name!r} already exists")

    def _check_env(self, env: dict[str, str]) -> None:
        """A 400 naming the first variable that is invalid or goes past a limit."""
        if self.max_env_vars and len(env) > self.max_env_vars:
            raise web.HTTPError(
                400,
                f"env has {len(env)} variables; this server accepts at most {self.max_env_vars}",
            )
        total = 0
        for variable, value in env.items():
            if not isinstance(variable, str) or not ENV_NAME_PATTERN.match(variable):
                raise web.HTTPError(
                    400,
                    f"Invalid environment variable name {variable!r}: use letters, digits and "
                    "'_', not starting with a digit",
                )
            if not isinstance(value, str):
                raise web.HTTPError(
                    400, f"env.{variable}: the value must be a string, not {type(value).__name__}"
                )
            if "\x00" in value:
                raise web.HTTPError(400, f"env.{variable}: the value contains a NUL character")
            total += len(variable.encode()) + len(value.encode("utf-8", "surrogatepass"))
            if self.max_env_bytes and total > self.max_env_bytes:
                raise web.HTTPError(
                    400,
                    f"env.{variable}: the environment goes past this server's limit of "
                    f"{self.max_env_bytes} bytes (names and values together)",
                )

    async def _kernel_spec(self, kernel_name: str) -> Any:
        """The kernel spec of that name, or a 400 that lists the kernels there are."""
        try:
            spec = await ensure_async(self.kernel_spec_manager.get_kernel_spec(kernel_name))
        # NoSuchKernel is a KeyError; a gateway's kernel spec manager raises a plain one.
        except KeyError as e:
            specs = await ensure_async(self.kernel_spec_manager.get_all_specs())
            raise web.HTTPError(
                400,
                f"Unknown kernel_name {kernel_name!r}; available kernels: "
                + ", ".join(sorted(specs)),
            ) from e
        # A gateway's kernel spec manager answers with the REST model, not a KernelSpec.
        return kernel_spec_from_model(spec) if isinstance(spec, dict) else spec

    async def _start_kernel(
        self, kernel_name: str, working_dir: Path, *, python: bool, env: dict[str, str]
    ) -> KernelConnection:
        """A kernel for a new session, with the kernel helper loaded for ``working_dir`` when
        it runs Python: from the pool when one is ready, else a new one.

        A new kernel loads the helper while it starts, and has ``env`` in its environment from
        its first instruction (on top of the server's, or sandboxed, of a short allowlist). A
        pooled one has the helper loaded already, and only applies the session's folder,
        memory limit and ``env`` (before the session's first call). ``env`` also goes into the
        set-up code run after every restart: a gateway passes only some variables
        (``KERNEL_*``) to the kernels it starts.
        """
        setup_code = self._helper_code(working_dir, env) if python else None
        # A sandbox's environment is fixed when it starts: a session with its own starts cold.
        poolable = self._may_pool(env, python=python) and (self.sandbox == "none" or not env)
        if self._pool is not None and poolable:
            connection = await self._take_pooled_kernel(kernel_name, working_dir, env, setup_code)
            if connection is not None:
                return connection
        launch = self._kernel_path_kwargs(working_dir)
        try:
            if self.sandbox != "none":
                launch[LAUNCH_ARGUMENT] = await self._sandbox_options(kernel_name, working_dir, env)
            elif env:
                launch["env"] = {**os.environ, **env}
        except SandboxError as e:
            raise self._no_sandbox(e) from e
        attempts_left = _KERNEL_START_ATTEMPTS
        while True:
            attempts_left -= 1
            try:
                return await self.kernel_connection_class.start(
                    self.kernel_manager,
                    kernel_name,
                    self.log,
                    timeout=self.kernel_start_timeout,
                    setup_code=setup_code,
                    **launch,
                )
            except SandboxError as e:
                raise self._no_sandbox(e) from e
            except (KernelDied, TimeoutError) as e:
                # Jupyter picks a kernel's ports before the kernel binds them, so kernels
                # started at the same moment can collide ("Address already in use") and die:
                # such a kernel is started once more. One that does not answer is not.
                if isinstance(e, TimeoutError) or not attempts_left:
                    raise web.HTTPError(
                        500, f"The kernel {kernel_name!r} failed to start: {e}"
                    ) from e
                self.log.warning("%s; starting another %s kernel", e, kernel_name)

    @staticmethod
    def _may_pool(env: dict[str, str], *, python: bool) -> bool:
        """Whether a pooled kernel can serve a session with ``env`` exactly.

        A running Python kernel takes new variables into ``os.environ`` (and so into every
        process it starts); variables read only when a process starts, and kernels that
        cannot run our set-up code, need a kernel started with them.
        """
        if not env:
            return True
        return python and not any(name.startswith(_START_ONLY_ENV_PREFIXES) for name in env)

    async def _take_pooled_kernel(
        self,
        kernel_name: str,
        working_dir: Path,
        env: dict[str, str],
        setup_code: str | None,
    ) -> KernelConnection | None:
        """A kernel from the pool set up for ``working_dir`` and ``env``, or None when none
        is ready."""
        assert self._pool is not None
        try:
            connection = await self._pool.take(kernel_name)
            if connection is not None and not self._move_pooled_folder(connection, working_dir):
                self._pool.put_back(kernel_name, connection)
                return None
            if connection is not None and env:
                # Restarts start the process with the session's variables too.
                connection.update_env(env)
            if connection is not None and setup_code is not None:
                try:
                    await connection.set_up(
                        setup_code, run_now=self._helper_code(working_dir, env, embed=False)
                    )
                except BaseException:
                    await connection.discard()
                    raise
            return connection
        finally:
            # Refilled only later: a kernel starting meanwhile would take the event loop and a
            # core from this one's set-up and the session's first call (~20 ms of the server's
            # time to launch, then a boot and the preload's imports, over a second of CPU).
            self._pool.fill_later(self.kernel_pool_refill_delay)

    async def _start_pooled_kernel(self, kernel_name: str) -> KernelConnection:
        """Start a kernel for the pool, with the kernel helper already loaded."""
        python = _runs_python(await self._kernel_spec(kernel_name))
        launch: dict[str, Any] = {}
        if self.sandbox != "none":
            # A sandbox's folders are fixed when it starts: this kernel gets a folder of its
            # own, renamed to its session's folder when a session takes it.
            if self._pool_folders is None:
                self.working_root.mkdir(parents=True, exist_ok=True)
                self._pool_folders = Path(
                    tempfile.mkdtemp(dir=self.working_root, prefix=".jupyter-exec-pool-")
                )
            folder = Path(tempfile.mkdtemp(dir=self._pool_folders))
            launch[LAUNCH_ARGUMENT] = await self._sandbox_options(kernel_name, folder, None)
        else:
            # Given explicitly (the same as the default) so that a session taking the kernel
            # can add its variables for the kernel's restarts (KernelManager.update_env).
            launch["env"] = dict(os.environ)
        connection = await self.kernel_connection_class.start(
            self.kernel_manager,
            kernel_name,
            self.log,
            timeout=self.kernel_start_timeout,
            setup_code=kernel_helper.setup_code() if python else None,
            **launch,
        )
        if python and self.kernel_pool_preload:
            try:
                await connection.preload(self.kernel_pool_preload, self.kernel_start_timeout)
            except BaseException:
                await connection.discard()
                raise
        return connection

    def _move_pooled_folder(self, connection: KernelConnection, working_dir: Path) -> bool:
        """Give a pooled sandboxed kernel the session's folder; False when it cannot have it.

        The sandbox sees the folder it was started with, whatever its name: renaming it to
        the session's folder (an empty folder is replaced) gives the kernel that folder. A
        session folder with files in it (a new session of an earlier one's name) cannot be.
        """
        options = getattr(connection.provisioner, "options", None)
        if not isinstance(options, SandboxOptions):
            return self.sandbox == "none"
        try:
            os.rename(options.working_dir, working_dir)
        except OSError:
            return False
        # Restarts bind the folder from here on.
        options.working_dir = working_dir
        return True

    def _helper_code(
        self, working_dir: Path, env: dict[str, str], *, embed: bool = True
    ) -> str:
        """The kernel helper's set-up code for a session working in ``working_dir``, then
        ``env`` put into the kernel's ``os.environ``."""
        # A sandboxed kernel sees its working folder at one place, whatever it is on the host.
        folder = SANDBOX_WORKING_DIR if self.sandbox != "none" else str(working_dir)
        code = kernel_helper.setup_code(
            folder, memory_limit=self.kernel_memory_limit or None, embed=embed
        )
        if env:
            # A dict of str is its own Python literal.
            code += f"\n__import__('os').environ.update({env!r})\n"
        return code

    async def _sandbox_options(
        self, kernel_name: str, working_dir: Path, env: dict[str, str] | None
    ) -> SandboxOptions:
        """The sandbox of a new kernel, after checking that one can be made at all.

        Raises SandboxError, so that nothing runs unsandboxed by surprise, when kernels run on
        a gateway, when the kernel spec names a provisioner of its own, or when bubblewrap is
        missing or cannot make namespaces here.
        """
        if is_gateway_kernel_manager(self.kernel_manager):
            raise SandboxError("kernels run on a gateway (--gateway-url), not on this machine")
        spec = await self._kernel_spec(kernel_name)
        named = (getattr(spec, "metadata", None) or {}).get("kernel_provisioner", {})
        if named.get("provisioner_name", PROVISIONER_NAME) != PROVISIONER_NAME:
            raise SandboxError(
                f"the kernel spec {kernel_name!r} names its own provisioner "
                f"{named['provisioner_name']!r}, which does not sandbox"
            )
        factory = KernelProvisionerFactory.instance(parent=self.kernel_manager)
        if factory.default_provisioner_name not in ("local-provisioner", PROVISIONER_NAME):
            raise SandboxError(
                "KernelProvisionerFactory.default_provisioner_name is set to "
                f"{factory.default_provisioner_name!r}, which does not sandbox"
            )
        # Kernel specs without a provisioner of their own get ours, which starts kernels
        # without the sandbox argument (JupyterLab's) exactly as the local provisioner does.
        factory.default_provisioner_name = PROVISIONER_NAME
        if not self._sandbox_checked:
            await check_bubblewrap()
            self._sandbox_checked = True
        if self._sandbox_kernels_dir is None:
            # Short: the kernel's unix sockets live there (at most 108 bytes a path).
            self._sandbox_kernels_dir = Path(tempfile.mkdtemp(prefix="jx-"))
        hidden = [str(self.root_dir), self.output_store_dir]
        return SandboxOptions(
            working_dir=working_dir,
            kernels_dir=self._sandbox_kernels_dir,
            network=self.sandbox_network,
            memory_limit=self.kernel_memory_limit,
            cpu_limit=self.sandbox_cpu_limit,
            process_limit=self.sandbox_process_limit,
            read_only_paths=tuple(self.sandbox_read_only_paths),
            hidden_paths=tuple(path for path in hidden if path),
            env=dict(env or {}),
        )

    @staticmethod
    def _no_sandbox(error: SandboxError) -> web.HTTPError:
        """The answer when a session's sandbox cannot be made (a server problem: 500)."""
        return web.HTTPError(
            500, f"The session's kernel was not started, as its sandbox cannot be made: {error}"
        )

    def _kernel_path_kwargs(self, working_dir: Path) -> dict[str, Any]:
        """Start the kernel in its working folder when that lies under the server's root."""
        api_path = self._api_path(working_dir)
        return {} if api_path is None else {"path": api_path}

    def _api_path(self, path: Path) -> str | None:
        """The contents API path of a folder, or None when it is outside the server's root."""
        try:
            return path.resolve().relative_to(self.root_dir.resolve()).as_posix()
        except ValueError:
            return None

    async def _start_transcript(
        self,
        session: AgentSession,
        working_dir: Path,
        kernel_name: str,
        spec: Any,
        store: OutputStore,
    ) -> Transcript | None:
        """Create the session's transcript and register it with the server's session manager."""
        if not self.transcripts or self.contents_manager is None or self.session_manager is None:
            return None
        folder = self._api_path(working_dir)
        if folder is None:
            self.log.warning(
                "No transcript for agent session %s: %s is outside the server's root_dir",
                session.name,
                working_dir,
            )
            return None
        path = await self._unused_path(folder, self.transcript_name)
        transcript = Transcript(
            self.contents_manager,
            path,
            kernelspec={
                "name": kernel_name,
                "display_name": str(getattr(spec, "display_name", kernel_name)),
                "language": str(getattr(spec, "language", "")),
            },
            store=store,
            log=self.log,
            os_path=self._os_path(path),
            write_interval=self.transcript_write_interval,
            live=self.live_notebooks,
        )
        transcript.start()
        model = await self.session_manager.create_session(
            path=path, name=session.name, type="notebook", kernel_id=session.kernel_id
        )
        self._server_sessions[session.id] = model["id"]
        return transcript

    def _os_path(self, api_path: str) -> Path | None:
        """Where an API path is on disk, if the contents manager keeps notebooks as files."""
        if not isinstance(self.contents_manager, (FileContentsManager, AsyncFileContentsManager)):
            return None
        return Path(self.contents_manager.root_dir, *api_path.split("/"))

    async def _unused_path(self, folder: str, file_name: str) -> str:
        name = PurePosixPath(file_name)
        candidate, number = f"{folder}/{file_name}", 1
        while await ensure_async(self.contents_manager.file_exists(candidate)):
            number += 1
            candidate = f"{folder}/{name.stem}-{number}{name.suffix}"
        return candidate

    async def _unregister(self, session_id: str) -> None:
        """Remove the session's row from the server's session manager (its kernel is gone)."""
        server_session_id = self._server_sessions.pop(session_id, None)
        if server_session_id is None:
            return
        # The kernel is already shut down, so the row is dropped directly: the session
        # manager's own delete_session would try to shut the kernel down a second time.
        self.session_manager.cursor.execute(
            "DELETE FROM session WHERE session_id=?", (server_session_id,)
        )

    def _new_store(self, session_id: str) -> OutputStore:
        if self._store_root is None:
            if self.output_store_dir:
                self._store_root = Path(self.output_store_dir).expanduser()
            else:
                self._store_root = Path(tempfile.mkdtemp(prefix="jupyter-exec-outputs-"))
                self._owns_store_root = True
        url_prefix = url_path_join(self.base_url, "api/agent-sessions", session_id, "files") + "/"
        return OutputStore(
            self._store_root / session_id, url_prefix, max_bytes=self.max_session_file_bytes
        )
