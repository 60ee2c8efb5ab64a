"""Sandboxed session kernels: a kernel provisioner that runs each kernel under bubblewrap.

A sandboxed kernel sees its session's working folder read-write (at
:data:`SANDBOX_WORKING_DIR`), the system and its Python environment read-only, a private
``/tmp`` and home, and a private ``/proc`` in a PID namespace of its own. It sees nothing of
other sessions, of the server's root_dir, runtime folder or Jupyter configuration, and gets a
clean environment. It has no network (a network namespace with only its own loopback): the
server talks to it over ZMQ ``ipc`` sockets in a folder of its own, bound into the sandbox.
It has no capabilities, cannot make user namespaces, and dies with the server. Its memory,
CPU and processes are limited by a cgroup of its own where the server can make one (v1 or v2),
else by rlimits.

The provisioner is a :class:`LocalProvisioner` that sandboxes only kernels started with the
launch argument :data:`LAUNCH_ARGUMENT` (a :class:`SandboxOptions`); any other kernel starts
exactly as the local provisioner starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from jupyter_client.provisioning.local_provisioner import LocalProvisioner

#: The name the provisioner is registered under (entry-point group
#: ``jupyter_client.kernel_provisioners``).
PROVISIONER_NAME = "jupyter-exec-sandbox"
#: The ``start_kernel`` argument that asks for a sandbox; its value is a SandboxOptions.
LAUNCH_ARGUMENT = "jupyter_exec_sandbox"
#: Where a sandboxed kernel sees its session's working folder, and its private home.
SANDBOX_HOME = "/home/agent"
SANDBOX_WORKING_DIR = "/home/agent/work"
#: The only variables of the server's environment a sandboxed kernel gets.
ENV_ALLOWLIST = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ")
#: Unix socket paths max out at 108 bytes; ZMQ adds "-<port>" to the prefix.
_MAX_SOCKET_PREFIX = 96
#: Top-level folders of the system bound read-only (or recreated as the symlinks they are).
_SYSTEM_PATHS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: Files of the system no kernel needs to read.
_MASKED_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-")
#: Seconds a kernel's cgroup may take to empty after the kernel was killed.
_CGROUP_DRAIN_SECONDS = 5.0


class SandboxError(RuntimeError):
    """The sandbox that was asked for cannot be made; no kernel was started."""


@dataclass
class SandboxOptions:
    """How one kernel is sandboxed: what it sees, its limits and its environment.

    The manager makes one per kernel and passes it to ``start_kernel``; jupyter_client keeps
    it with the kernel's launch arguments, so a restart makes the same sandbox again.
    """

    #: Host folder the kernel sees read-write at SANDBOX_WORKING_DIR (may be changed while
    #: the kernel runs, when a pooled kernel's folder is renamed to its session's).
    working_dir: Path
    #: Host folder for the kernels' own folders (connection file, ipc sockets): a short path.
    kernels_dir: Path
    #: Give the kernel the server's network instead of a network namespace of its own.
    network: bool = False
    #: Bytes of memory (0: no limit), CPU cores (0: no limit), processes and threads (0: none).
    memory_limit: int = 0
    cpu_limit: float = 0.0
    process_limit: int = 0
    #: More host paths the kernel sees read-only, at the same place.
    read_only_paths: tuple[str, ...] = ()
    #: Host paths that must stay unseen even when they lie inside a read-only path.
    hidden_paths: tuple[str, ...] = ()
    #: The session's own environment variables, on top of the allowlist and the kernel spec's.
    env: dict[str, str] = field(default_factory=dict, repr=False)  # kept out of logs


def bubblewrap_path() -> str:
    """The bwrap executable on PATH, or a SandboxError saying how to get it."""
    found = shutil.which("bwrap")
    if found is None:
        raise SandboxError(
            "the bubblewrap program (bwrap) is not on the server's PATH; install it "
            "(Debian/Ubuntu: apt-get install bubblewrap) or set AgentSessionManager.sandbox "
            "to 'none'"
        )
    return found


_NAMESPACE_FLAGS = (
    "--unshare-all",
    # --unshare-all only tries a user namespace; --disable-userns needs one for sure.
    "--unshare-user",
    "--disable-userns",
    "--cap-drop",
    "ALL",
    "--die-with-parent",
    "--new-session",
)


async def check_bubblewrap(timeout: float = 10.0) -> None:
    """Make one empty sandbox, or raise a SandboxError with what bubblewrap said.

    A kernel whose bwrap cannot make its namespaces would only die while starting; this
    says why (user namespaces refused, a seccomp profile, ...).
    """
    bwrap = bubblewrap_path()
    args = [bwrap, *_NAMESPACE_FLAGS]
    for path in _SYSTEM_PATHS:
        args += _system_mount(path)
    process = await asyncio.create_subprocess_exec(
        *args,
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--",
        "true",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise SandboxError(f"bubblewrap did not make a test sandbox in {timeout:g} s") from None
    if process.returncode != 0:
        said = stderr.decode("utf-8", "replace").strip() or f"exit status {process.returncode}"
        raise SandboxError(f"bubblewrap cannot make a sandbox on this machine: {said}")


def _system_mount(path: str) -> list[str]:
    """bwrap arguments that show a top-level system path as it is on the host, read-only."""
    if os.path.islink(path):
        return ["--symlink", os.readlink(path), path]
    if os.path.isdir(path):
        return ["--ro-bind", path, path]
    return []


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _python_prefixes(argv0: str, path_env: str | None) -> list[str]:
    """The Python environments a kernel command runs in: its own, the one it was made from.

    A virtual environment's ``bin/python`` links to the Python it was made from, which lives
    elsewhere (pyenv, /usr/local): both are needed.
    """
    executable = shutil.which(argv0, path=path_env) or argv0
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for candidate in (os.path.abspath(executable), os.path.realpath(executable)):
        prefixes.add(str(Path(candidate).parent.parent))
    return sorted(prefixes)


def _jupyter_paths() -> list[str]:
    """The server's Jupyter configuration and runtime folders, which kernels must not see."""
    from jupyter_core.paths import (  # noqa: PLC0415 - jupyter_core is imported already
        jupyter_config_path,
        jupyter_runtime_dir,
    )

    return [*jupyter_config_path(), jupyter_runtime_dir()]


def _outermost(paths: Iterable[str]) -> list[str]:
    """The paths, without those inside another one of them (one bind covers both)."""
    kept: list[str] = []
    for path in sorted({os.path.abspath(p) for p in paths}):
        if not any(_is_within(path, outer) for outer in kept):
            kept.append(path)
    return kept


# -- cgroups ---------------------------------------------------------------------------------


@dataclass
class _Controller:
    """One cgroup folder of a kernel and the files that set its limits."""

    folder: Path
    settings: list[tuple[str, str]]


class KernelCgroup:
    """The cgroup(s) of one sandboxed kernel, in the v2 hierarchy or the v1 ones.

    Made under the server's own cgroup (``jupyter-exec-<server pid>/<kernel>``), so the
    kernel stays inside whatever limits the server itself runs under.
    """

    def __init__(self, folders: list[Path], oom_file: Path | None, version: int) -> None:
        """Wrap folders made by :meth:`create`."""
        self.folders = folders
        self._oom_file = oom_file
        self.version = version

    @property
    def procs_files(self) -> list[Path]:
        """The files a process writes its pid into to join the kernel's cgroup(s)."""
        return [folder / "cgroup.procs" for folder in self.folders]

    @classmethod
    def create(cls, name: str, *, memory: int, cpu: float, processes: int) -> KernelCgroup | None:
        """Make the kernel's cgroup with these limits, or None where cgroups are not writable."""
        if not (memory or cpu or processes):
            return None
        for attempt in (cls._create_v2, cls._create_v1):
            try:
                made = attempt(name, memory, cpu, processes)
            except OSError:
                made = None
            if made is not None:
                return made
        return None

    @classmethod
    def _create_v2(cls, name: str, memory: int, cpu: float, processes: int) -> KernelCgroup | None:
        mount = _cgroup_mounts().get("cgroup2")
        own = _own_cgroups().get("")
        if mount is None or own is None:
            return None
        parent = Path(mount) / own.lstrip("/")
        needed = [
            c for c, limit in (("memory", memory), ("cpu", cpu), ("pids", processes)) if limit
        ]
        available = (parent / "cgroup.controllers").read_text().split()
        if not set(needed) <= set(available):
            return None
        ours = parent / f"jupyter-exec-{os.getpid()}"
        ours.mkdir(exist_ok=True)
        try:
            for folder in (parent, ours):
                control = folder / "cgroup.subtree_control"
                if not set(needed) <= set(control.read_text().split()):
                    # Refused (EBUSY) when the server's own cgroup holds processes and was
                    # not delegated: then the rlimits stand in.
                    control.write_text(" ".join(f"+{c}" for c in needed))
        except OSError:
            _remove_cgroup(ours)
            raise
        settings = []
        if memory:
            settings += [("memory.max", str(memory)), ("memory.swap.max", "0")]
        if cpu:
            settings.append(("cpu.max", f"{round(cpu * 100_000)} 100000"))
        if processes:
            settings.append(("pids.max", str(processes)))
        leaf = _make_cgroup(ours / name, settings)
        return cls([leaf], leaf / "memory.events" if memory else None, 2)

    @classmethod
    def _create_v1(cls, name: str, memory: int, cpu: float, processes: int) -> KernelCgroup | None:
        mounts = _cgroup_mounts()
        own = _own_cgroups()
        plan: list[tuple[str, list[tuple[str, str]]]] = []
        if memory:
            plan.append(
                (
                    "memory",
                    [
                        ("memory.limit_in_bytes", str(memory)),
                        ("memory.memsw.limit_in_bytes", str(memory)),
                    ],
                )
            )
        if cpu:
            plan.append(
                (
                    "cpu",
                    [
                        ("cpu.cfs_period_us", "100000"),
                        ("cpu.cfs_quota_us", str(round(cpu * 100_000))),
                    ],
                )
            )
        if processes:
            plan.append(("pids", [("pids.max", str(processes))]))
        if not plan or any(controller not in mounts for controller, _ in plan):
            return None
        folders: list[Path] = []
        oom_file = None
        try:
            for controller, settings in plan:
                base = Path(mounts[controller]) / own.get(controller, "/").lstrip("/")
                folder = _make_cgroup(base / f"jupyter-exec-{os.getpid()}" / name, settings)
                folders.append(folder)
                if controller == "memory":
                    oom_file = folder / "memory.oom_control"
        except OSError:
            for folder in folders:
                _remove_cgroup(folder)
            raise
        return cls(folders, oom_file, 1)

    def oom_killed(self) -> bool:
        """Whether the kernel's memory limit made the kernel kill a process of it."""
        if self._oom_file is None:
            return False
        try:
            lines = self._oom_file.read_text().splitlines()
        except OSError:
            return False
        counts = dict(line.split(None, 1) for line in lines if " " in line)
        return int(counts.get("oom_kill", "0")) > 0

    def pids(self) -> set[int]:
        """The processes in the kernel's cgroup(s)."""
        found: set[int] = set()
        for procs in self.procs_files:
            try:
                found.update(int(pid) for pid in procs.read_text().split())
            except OSError:
                continue
        return found

    async def remove(self) -> None:
        """Kill whatever is left in the cgroup(s) and remove them (and ours, once empty)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CGROUP_DRAIN_SECONDS
        while (left := self.pids()) and loop.time() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.02)
        for folder in self.folders:
            _remove_cgroup(folder)
            # The server's folder goes too when this was its last kernel (else: EBUSY).
            _remove_cgroup(folder.parent)


def _make_cgroup(folder: Path, settings: list[tuple[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for file_name, value in settings:
            target = folder / file_name
            # Swap accounting is optional in both versions: no file, no swap to limit.
            if (
                file_name in ("memory.memsw.limit_in_bytes", "memory.swap.max")
                and not target.exists()
            ):
                continue
            target.write_text(value)
    except OSError:
        _remove_cgroup(folder)
        raise
    return folder


def _remove_cgroup(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
            raise


def _cgroup_mounts() -> dict[str, str]:
    """Where each cgroup hierarchy is mounted: v1 controller name -> folder, "cgroup2" -> folder."""
    mounts: dict[str, str] = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return mounts
    for line in lines:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mount_point, fs_type, options = fields[4], tail[0], tail[2].split(",")
        if fs_type == "cgroup2":
            mounts.setdefault("cgroup2", mount_point)
        elif fs_type == "cgroup":
            for option in options:
                mounts.setdefault(option, mount_point)
    return mounts


def _own_cgroups() -> dict[str, str]:
    """The server's own cgroup path per v1 controller, and in v2 (key "")."""
    own: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return own
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    return own


def _rlimits_setter(memory: int, processes: int) -> Callable[[], None]:
    """A preexec function setting the rlimits that stand in where cgroups are not writable.

    It only calls setrlimit, which is safe between fork and exec.
    """

    def set_limits() -> None:
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if processes:
            resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))

    return set_limits


# -- the provisioner -------------------------------------------------------------------------


class SandboxProvisioner(LocalProvisioner):
    """Starts a kernel inside a bubblewrap sandbox when asked to, else as LocalProvisioner."""

    #: The sandbox of this kernel, None for a kernel started without one.
    options: SandboxOptions | None = None
    #: The kernel's own folder: its connection file and ipc sockets (kept over restarts).
    kernel_dir: Path | None = None
    cgroup: KernelCgroup | None = None
    _arguments_pipe: int | None = None

    @property
    def sandboxed(self) -> bool:
        """Whether this kernel runs in a sandbox."""
        return self.options is not None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Write the connection file for ipc and wrap the kernel's command in bwrap."""
        options = kwargs.pop(LAUNCH_ARGUMENT, None)
        if options is None:
            return dict(await super().pre_launch(**kwargs))
        self.options = options
        bwrap = bubblewrap_path()
        km: Any = self.parent
        self.kernel_dir = self.kernel_dir or self._make_kernel_dir(options.kernels_dir)
        # The server reaches the kernel through unix sockets in the kernel's folder: no TCP,
        # so the kernel can live in a network namespace of its own.
        km.transport = "ipc"
        km.ip = str(self.kernel_dir / "k")
        km.cache_ports = False
        km.connection_file = str(self.kernel_dir / "connection.json")
        kwargs = dict(await super().pre_launch(**kwargs))
        kwargs["env"] = self._environment(options)
        if self.cgroup is not None:  # a restart: the old kernel's cgroup goes first
            await self.cgroup.remove()
        self.cgroup = KernelCgroup.create(
            self.kernel_dir.name,
            memory=options.memory_limit,
            cpu=options.cpu_limit,
            processes=options.process_limit,
        )
        # bwrap reads its arguments from a pipe: on its command line they would show the
        # host's paths to the kernel (in /proc/1/cmdline) and to anyone running ps.
        arguments = self._bwrap_arguments(options, kwargs["cmd"][0])
        self._close_arguments_pipe()
        read_end, write_end = os.pipe()
        self._arguments_pipe = read_end
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(b"".join(os.fsencode(arg) + b"\0" for arg in arguments))
        kwargs["pass_fds"] = (read_end,)
        command = [bwrap, "--args", str(read_end), "--", *kwargs["cmd"]]
        if self.cgroup is not None:
            # Joined before exec, so that every process of the sandbox is counted.
            joins = "".join(f"echo $$ > {shlex.quote(str(f))} && " for f in self.cgroup.procs_files)
            command = ["/bin/sh", "-c", joins + 'exec "$@"', "jupyter-exec-sandbox", *command]
        elif options.memory_limit or options.process_limit or options.cpu_limit:
            self.log.warning(
                "Kernel %s: cgroups are not writable here, so its limits are rlimits: memory as "
                "address space, processes per user (no effect for root), CPU not limited",
                self.kernel_id,
            )
            kwargs["preexec_fn"] = _rlimits_setter(options.memory_limit, options.process_limit)
        kwargs["cmd"] = command
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        """Start the kernel; bwrap has its own end of the arguments pipe then."""
        try:
            return await super().launch_kernel(cmd, **kwargs)
        finally:
            self._close_arguments_pipe()

    def _close_arguments_pipe(self) -> None:
        if self._arguments_pipe is not None:
            os.close(self._arguments_pipe)
            self._arguments_pipe = None

    @staticmethod
    def _make_kernel_dir(kernels_dir: Path) -> Path:
        kernels_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=kernels_dir, prefix=""))
        if len(str(folder / "k")) > _MAX_SOCKET_PREFIX:
            shutil.rmtree(folder, ignore_errors=True)
            raise SandboxError(
                f"the kernels' folder {kernels_dir} has too long a path for unix sockets; "
                "set TMPDIR to a shorter folder"
            )
        return folder

    def _environment(self, options: SandboxOptions) -> dict[str, str]:
        """A clean environment: the allowlist, the kernel spec's env, the session's env."""
        env = {name: os.environ[name] for name in ENV_ALLOWLIST if name in os.environ}
        env.setdefault("PATH", os.defpath)
        env["HOME"] = SANDBOX_HOME
        for name, value in (self.kernel_spec.env or {}).items():
            env[name] = Template(value).safe_substitute(os.environ)
        env.update(options.env)
        return env

    def _bwrap_arguments(self, options: SandboxOptions, argv0: str) -> list[str]:
        """What the kernel sees: everything not named here does not exist for it."""
        assert self.kernel_dir is not None
        args = list(_NAMESPACE_FLAGS)
        if options.network:
            args.append("--share-net")
        for path in _SYSTEM_PATHS:
            args += _system_mount(path)
        read_only = _outermost(
            p
            for p in [*_python_prefixes(argv0, os.environ.get("PATH")), *options.read_only_paths]
            if not any(_is_within(p, system) for system in ("/usr", "/etc"))
        )
        for path in read_only:
            if not os.path.exists(path):
                raise SandboxError(f"the read-only path {path} does not exist")
            if _is_within(SANDBOX_HOME, path) or _is_within(path, SANDBOX_HOME):
                raise SandboxError(f"the read-only path {path} overlaps {SANDBOX_HOME}")
            args += ["--ro-bind", path, path]
        # Jupyter's configuration of every environment shown, whatever jupyter_core says now.
        config = [
            os.path.join(p, "etc", "jupyter") for p in ["/", "/usr", "/usr/local", *read_only]
        ]
        hidden = [*_jupyter_paths(), *config, *options.hidden_paths]
        args += self._masks(["/usr", "/etc", *read_only], hidden)
        args += [
            "--proc", "/proc",
            "--dev", "/dev",
            "--tmpfs", "/tmp",
            "--tmpfs", SANDBOX_HOME,
            "--bind", str(options.working_dir), SANDBOX_WORKING_DIR,
            # After the /tmp above: a bind under /tmp before it would be covered.
            "--bind", str(self.kernel_dir), str(self.kernel_dir),
            "--chdir", SANDBOX_WORKING_DIR,
            # ipykernel exits when its parent's pid goes; in a PID namespace that is always
            # "pid 1". --die-with-parent does that job instead.
            "--unsetenv", "JPY_PARENT_PID",
        ]  # fmt: skip
        return args

    @staticmethod
    def _masks(shown: list[str], hidden: Iterable[str]) -> Iterator[str]:
        """Cover hidden folders and secret files that lie inside read-only paths."""
        for path in _outermost(hidden):
            if os.path.isdir(path) and any(_is_within(path, s) for s in shown):
                yield from ("--tmpfs", path)
        for path in _MASKED_FILES:
            if os.path.isfile(path):
                yield from ("--ro-bind", "/dev/null", path)

    # -- the running kernel -----------------------------------------------------------------

    def kernel_pid(self) -> int | None:
        """The host pid of the kernel itself: bwrap -> bwrap's init in the sandbox -> kernel."""
        if self.pid is None:
            return None
        init = _children(self.pid)
        kernel = _children(init[0]) if init else []
        return kernel[0] if kernel else None

    async def send_signal(self, signum: int) -> None:
        """Interrupt the kernel alone: SIGINT to bwrap's process group would kill bwrap."""
        if self.sandboxed and signum == signal.SIGINT:
            pid = self.kernel_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            return
        await super().send_signal(signum)

    def memory_limit_hit(self) -> bool:
        """Whether the kernel's memory limit had a process of the kernel killed."""
        return self.cgroup is not None and self.cgroup.oom_killed()

    async def cleanup(self, restart: bool = False) -> None:
        """Remove the kernel's cgroup, and its folder unless it restarts."""
        await super().cleanup(restart=restart)
        if self.cgroup is not None:
            await self.cgroup.remove()
            self.cgroup = None
        if not restart and self.kernel_dir is not None:
            shutil.rmtree(self.kernel_dir, ignore_errors=True)
            self.kernel_dir = None


def _children(pid: int) -> list[int]:
    """The child processes of ``pid``, oldest first."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]
