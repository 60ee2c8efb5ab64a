"""A Jupyter Kernel Gateway with the agent-session API, run in a container (AutoGen's API).

Any engine that serves the Docker Engine API works: Docker, or podman's API service (pass
its socket as ``docker_base_url`` or in ``DOCKER_HOST``). The ``docker`` package is an
optional dependency, imported only when a :class:`DockerJupyterServer` is made::

    pip install "jupyter-exec-client[docker]"

Without ``custom_image_name`` the bundled image (``docker/Dockerfile`` in this package) is
built on first use from wheels made on this machine, and reused while its inputs are the
same: its tag is a hash of the Dockerfile, the base image, the Python version, the extra
packages and the installed jupyter-exec-ext's version and files.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import logging
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import weakref
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

import requests

from .connection import JupyterConnectionInfo
from .errors import ServerStartError

# The docker package has no type information: its objects are typed loosely, by name.
DockerClient: TypeAlias = Any
Container: TypeAlias = Any

__all__ = ["DockerJupyterServer"]

logger = logging.getLogger(__name__)

#: The repository part of the bundled image's name; the tag is a hash of its inputs.
IMAGE_REPOSITORY = "jupyter-exec-gateway"
#: The label put on every container this module starts (its value is this package's name).
CONTAINER_LABEL = "jupyter-exec-client.server"
#: The label of the bundled Dockerfile's install stage, whose leftover image is removed.
BUILD_STAGE_LABEL = "jupyter-exec-client.build-stage=install"
#: Where a host ``work_dir`` is mounted, and the container's working folder then.
CONTAINER_WORK_DIR = "/workspace"
#: The port a custom image's gateway listens on, by the rules AutoGen sets for such images.
CUSTOM_IMAGE_PORT = 8888

_EXTENSION_DISTRIBUTION = "jupyter-exec-ext"
#: The import packages of jupyter-exec-ext, whose files go into the bundled image's tag.
_EXTENSION_PACKAGES = ("jupyter_exec_ext", "kernel_helper")
_INSTALL_HINT = (
    'DockerJupyterServer needs the docker package: pip install "jupyter-exec-client[docker]"'
)
_POLL_INTERVAL = 0.1
_LOG_TAIL_LINES = 40
_PORT_ATTEMPTS = 3
#: Where the docker package looks for an engine when DOCKER_HOST is unset (POSIX).
_DEFAULT_DOCKER_SOCKET = "unix:///var/run/docker.sock"


class DockerJupyterServer:
    """Jupyter Kernel Gateway with the agent-session API in a container of its own.

    The arguments of AutoGen's class come first: ``custom_image_name`` (None: build and use
    the bundled image), ``container_name`` (None: a generated one), ``auto_remove`` (remove
    the container once stopped), ``stop_container`` (stop it when this object is
    garbage-collected or the interpreter exits; :meth:`stop` and a ``with`` block always
    stop it), ``docker_env`` (more environment variables for the container) and ``token``
    (64 random hex digits when None; passed as ``TOKEN``).

    Beyond AutoGen's: ``docker_base_url`` is the engine's API address (None: ``DOCKER_HOST``,
    else the engine's default socket); ``base_image`` is the bundled image's base (None:
    ``python:X.Y-slim`` of this Python, whose version the wheels are made for);
    ``extra_packages`` are more requirements installed into the bundled image (matplotlib,
    numpy...); ``port`` is the host port, on 127.0.0.1 (None: a free one);
    ``container_port`` is the port the gateway listens on inside the container (None: the
    host port for the bundled image, told to it in ``PORT``, so that it works on a host
    network too; 8888 for a custom image); ``network_mode`` is passed to the engine;
    ``mem_limit`` (bytes, or a string such as ``"512m"``; swap is not allowed beyond it) and
    ``cpus`` (a fraction of cores) limit the container; ``work_dir`` is a host folder
    mounted as the kernels' working folder at ``/workspace``, the container then running as
    this process's user so files there belong to it; ``start_timeout`` is how long the
    gateway may take to answer (the error quotes the end of the container's log);
    ``stop_timeout`` is how long it may take to stop before it is killed; ``init`` runs the
    engine's small init process as the container's first process, which passes the stop
    signal on (a shell command line such as AutoGen's image has would swallow it, and
    every stop would wait ``stop_timeout``) and reaps orphaned processes;
    ``require_agent_api`` makes a gateway without the agent-session API an error at start.

    The constructor returns when the gateway answers.
    """

    def __init__(
        self,
        *,
        custom_image_name: str | None = None,
        container_name: str | None = None,
        auto_remove: bool = True,
        stop_container: bool = True,
        docker_env: Mapping[str, str] | None = None,
        token: str | None = None,
        docker_base_url: str | None = None,
        base_image: str | None = None,
        extra_packages: Sequence[str] = (),
        port: int | None = None,
        container_port: int | None = None,
        network_mode: str | None = None,
        mem_limit: int | str | None = None,
        cpus: float | None = None,
        work_dir: str | PathLike[str] | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        init: bool = True,
        require_agent_api: bool = True,
    ) -> None:
        """Build the image if needed, start the container and wait until the gateway answers."""
        docker_module = _import_docker()
        self.token = token if token is not None else secrets.token_hex(32)
        self.work_dir = Path(work_dir).resolve() if work_dir is not None else None
        if self.work_dir is not None and not self.work_dir.is_dir():
            raise ValueError(f"work_dir {self.work_dir} is not a folder")
        self._client: DockerClient = _docker_client(docker_module, docker_base_url)
        try:
            if custom_image_name is None:
                self.image_name = ensure_image(
                    self._client, base_image=base_image, extra_packages=extra_packages
                )
            else:
                self.image_name = custom_image_name
                _check_custom_image(docker_module, self._client, custom_image_name)
            self.container_name = container_name or f"jupyter-exec-gateway-{secrets.token_hex(6)}"
            self._auto_remove = auto_remove
            self._stop_timeout = stop_timeout
            self._container, self.port = self._start(
                docker_env=docker_env or {},
                port=port,
                container_port=container_port,
                bundled_image=custom_image_name is None,
                network_mode=network_mode,
                mem_limit=mem_limit,
                cpus=cpus,
                init=init,
            )
        except BaseException:
            self._client.close()
            raise
        stop = _ContainerStopper(self._client, self._container.id, auto_remove, stop_timeout)
        try:
            _wait_until_ready(self._container, self.connection_info, start_timeout)
            if require_agent_api:
                _check_agent_api(self.connection_info, self.image_name)
        except BaseException:
            stop()
            raise
        # weakref.finalize runs at stop(), on garbage collection or at interpreter exit; it
        # holds the stopper, not self, so it does not keep the server object alive.
        self._stopper = stop
        self._finalizer = weakref.finalize(self, stop) if stop_container else None

    @property
    def connection_info(self) -> JupyterConnectionInfo:
        """The address and token of the gateway, as seen from this machine."""
        return JupyterConnectionInfo(
            host="127.0.0.1", use_https=False, port=self.port, token=self.token
        )

    @property
    def container_id(self) -> str:
        """The engine's id of the container."""
        container_id: str = self._container.id
        return container_id

    @property
    def running(self) -> bool:
        """Whether the container is still running."""
        if self._stopper.stopped:
            return False
        try:
            self._container.reload()
        except Exception:  # gone or unreachable: not running, either way
            return False
        return bool(self._container.status == "running")

    def logs(self, tail: int = _LOG_TAIL_LINES) -> str:
        """The last ``tail`` lines of the container's log (the gateway's and kernels' output)."""
        return _log_tail(self._container, tail)

    def stop(self) -> None:
        """Stop the container (removed too when ``auto_remove``); a second call does nothing."""
        if self._finalizer is not None:
            self._finalizer()
        else:
            self._stopper()

    def __enter__(self) -> DockerJupyterServer:
        """The running server."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the container."""
        self.stop()

    def __repr__(self) -> str:
        """Where the server is and which container it is; never its token."""
        return (
            f"<DockerJupyterServer {self.connection_info.base_url} "
            f"container={self.container_name} image={self.image_name}>"
        )

    # -- starting ------------------------------------------------------------------------

    def _start(
        self,
        *,
        docker_env: Mapping[str, str],
        port: int | None,
        container_port: int | None,
        bundled_image: bool,
        network_mode: str | None,
        mem_limit: int | str | None,
        cpus: float | None,
        init: bool,
    ) -> tuple[Container, int]:
        """Run the container; a free port taken meanwhile by another process is retried."""
        docker_module = _import_docker()
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            host_port = port if port is not None else _free_port()
            inner_port = container_port or (host_port if bundled_image else CUSTOM_IMAGE_PORT)
            options = self._run_options(
                docker_env=docker_env,
                host_port=host_port,
                inner_port=inner_port,
                network_mode=network_mode,
                mem_limit=mem_limit,
                cpus=cpus,
                init=init,
            )
            try:
                container = self._client.containers.run(self.image_name, **options)
            except docker_module.errors.APIError as e:
                # The engine may have made the container before failing to start it.
                with contextlib.suppress(docker_module.errors.APIError):
                    self._client.containers.get(self.container_name).remove(force=True)
                if "address already in use" in str(e) and port is None and attempt < _PORT_ATTEMPTS:
                    continue
                raise ServerStartError(
                    f"The container engine could not start {self.image_name}: {e}"
                ) from e
            container.reload()
            # On the host's network nothing is published: the gateway's own port is the one.
            on_host_network = container.attrs.get("HostConfig", {}).get("NetworkMode") == "host"
            return container, inner_port if on_host_network else host_port
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _run_options(
        self,
        *,
        docker_env: Mapping[str, str],
        host_port: int,
        inner_port: int,
        network_mode: str | None,
        mem_limit: int | str | None,
        cpus: float | None,
        init: bool,
    ) -> dict[str, Any]:
        """The keyword arguments of ``containers.run`` for this server."""
        # KG_PORT is the gateway's own variable: custom images that do not name a port on
        # their command line follow it.
        environment = {"PORT": str(inner_port), "KG_PORT": str(inner_port)}
        options: dict[str, Any] = {
            "name": self.container_name,
            "detach": True,
            # Removal is done by stop(), after the logs are read: an engine's auto_remove
            # would throw away the log that explains a failed start.
            "auto_remove": False,
            "labels": {CONTAINER_LABEL: "jupyter-exec-client"},
            "init": init,
        }
        if network_mode == "host":
            # Nothing to publish: the gateway listens on the host's network itself.
            options["network_mode"] = network_mode
        else:
            options["ports"] = {f"{inner_port}/tcp": ("127.0.0.1", host_port)}
            if network_mode is not None:
                options["network_mode"] = network_mode
        if mem_limit is not None:
            options["mem_limit"] = mem_limit
            # With swap the container would crawl instead of hitting its limit.
            options["memswap_limit"] = mem_limit
        if cpus is not None:
            options["nano_cpus"] = int(cpus * 1e9)
        if self.work_dir is not None:
            options["volumes"] = {str(self.work_dir): {"bind": CONTAINER_WORK_DIR, "mode": "rw"}}
            options["working_dir"] = CONTAINER_WORK_DIR
            if hasattr(os, "getuid"):
                # The host's user owns the folder: running as that user lets the kernels
                # write there without opening the folder to everyone. Its home in the image
                # may not be writable by that user, so Jupyter's and IPython's files go to /tmp.
                options["user"] = f"{os.getuid()}:{os.getgid()}"
                environment["HOME"] = "/tmp"
        # The user's variables win over ours, TOKEN excepted: it must be the one we check.
        options["environment"] = {**environment, **docker_env, "TOKEN": self.token}
        return options


class _ContainerStopper:
    """Stops (and removes) a container once; kept apart from the server for weakref.finalize."""

    def __init__(
        self, client: DockerClient, container_id: str, remove: bool, timeout: float
    ) -> None:
        self._client = client
        self._container_id = container_id
        self._remove = remove
        self._timeout = timeout
        self.stopped = False

    def __call__(self) -> None:
        """Stop the container, remove it if asked, and close the engine client."""
        if self.stopped:
            return
        self.stopped = True
        docker_module = _import_docker()
        try:
            container = self._client.containers.get(self._container_id)
            with contextlib.suppress(docker_module.errors.NotFound):
                container.stop(timeout=int(self._timeout))
            if self._remove:
                with contextlib.suppress(docker_module.errors.NotFound):
                    container.remove(force=True)
        except docker_module.errors.NotFound:
            pass
        except (docker_module.errors.APIError, requests.RequestException) as e:
            # At interpreter exit an exception would only be printed; say what is left.
            logger.warning("Could not stop container %s: %s", self._container_id[:12], e)
        finally:
            self._client.close()


# -- the bundled image ----------------------------------------------------------------------


def bundled_dockerfile() -> str:
    """The text of the bundled Dockerfile."""
    return (importlib.resources.files(__package__) / "docker" / "Dockerfile").read_text("utf-8")


def default_base_image() -> str:
    """The official Python image of this interpreter's version (the wheels are made for it)."""
    return f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"


def image_tag(base_image: str, extra_packages: Sequence[str] = ()) -> str:
    """The bundled image's name for these inputs: ``jupyter-exec-gateway:<hash>``."""
    digest = hashlib.sha256()
    for part in (
        bundled_dockerfile(),
        base_image,
        f"{sys.version_info.major}.{sys.version_info.minor}",
        platform.machine(),
        *sorted(extra_packages),
    ):
        digest.update(part.encode() + b"\0")
    for name, content in _extension_inputs():
        digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return f"{IMAGE_REPOSITORY}:{digest.hexdigest()[:16]}"


def ensure_image(
    client: DockerClient,
    *,
    base_image: str | None = None,
    extra_packages: Sequence[str] = (),
) -> str:
    """The bundled image's name, built first unless an image of the same inputs exists."""
    docker_module = _import_docker()
    base_image = base_image or default_base_image()
    name = image_tag(base_image, extra_packages)
    try:
        client.images.get(name)
    except docker_module.errors.ImageNotFound:
        pass
    else:
        return name
    logger.info("Building %s from %s (once; later servers reuse it)", name, base_image)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="jupyter-exec-image-") as context:
        python_version = image_python_version(client, base_image)
        prepare_build_context(Path(context), python_version, extra_packages)
        try:
            client.images.build(
                path=context,
                tag=name,
                buildargs={"BASE_IMAGE": base_image},
                rm=True,
                forcerm=True,
            )
        except docker_module.errors.BuildError as e:
            log = "".join(str(step.get("stream", step.get("error", ""))) for step in e.build_log)
            tail = "\n".join(log.splitlines()[-_LOG_TAIL_LINES:])
            raise ServerStartError(
                f"Building the image {name} from {base_image} failed: {e.msg}\n{tail}"
            ) from e
        except docker_module.errors.APIError as e:
            raise ServerStartError(
                f"Building the image {name} from {base_image} failed: {e}"
            ) from e
    # Podman keeps the install stage as an untagged image (hundreds of MB, wheels included).
    with contextlib.suppress(docker_module.errors.APIError):
        client.images.prune(filters={"dangling": True, "label": BUILD_STAGE_LABEL})
    logger.info("Built %s in %.0f s", name, time.monotonic() - started)
    return name


def prepare_build_context(
    folder: Path, python_version: str, extra_packages: Sequence[str] = ()
) -> None:
    """Write the Dockerfile, the wheels and ``wheels/requirements.txt`` into ``folder``.

    The wheels are jupyter-exec-ext (built from its source folder, or repackaged from its
    installed files) and everything it and ``extra_packages`` need, for the image's Python
    (``python_version``, such as ``3.11.2``: requirements may depend on the micro version)
    on this machine's platform, fetched by this Python's pip from whatever package index
    it is configured with. Binary wheels only: the image may have no compiler.
    """
    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    (folder / "Dockerfile").write_text(bundled_dockerfile(), encoding="utf-8")
    distribution = _extension_distribution()
    source = _source_folder(distribution)
    if source is not None:
        _pip("wheel", "--no-deps", "--wheel-dir", str(wheels), str(source))
    else:
        repackage_wheel(distribution, wheels)
    requirement = f"{_EXTENSION_DISTRIBUTION}[kernel-gateway]=={distribution.version}"
    _pip(
        "download",
        "--dest",
        str(wheels),
        "--find-links",
        str(wheels),
        "--only-binary=:all:",
        "--python-version",
        python_version,
        requirement,
        *extra_packages,
    )
    (wheels / "requirements.txt").write_text(
        "\n".join([requirement, *extra_packages]) + "\n", encoding="utf-8"
    )


def image_python_version(client: DockerClient, image: str) -> str:
    """The version of ``python3`` in ``image`` (pulled if missing), such as ``3.11.2``."""
    docker_module = _import_docker()
    command = ["python3", "-c", "import platform; print(platform.python_version())"]
    try:
        output: bytes = client.containers.run(image, command, remove=True)
    except docker_module.errors.DockerException as e:
        raise ServerStartError(
            f"Could not run python3 in the base image {image}: {e}. The base image needs "
            "python3 with its venv module."
        ) from e
    # Podman has been seen to answer a log error instead of the output, once in many runs.
    version = output.decode("utf-8", "replace").strip().splitlines()[-1:]
    if not version or not version[0].replace(".", "").isdigit():
        raise ServerStartError(f"python3 in {image} did not tell its version: {output!r:.200}")
    return version[0]


def repackage_wheel(distribution: importlib.metadata.Distribution, folder: Path) -> Path:
    """A pure-Python wheel of an installed distribution, made from its installed files.

    For a jupyter-exec-ext installed from a wheel, whose source is nowhere on this machine.
    Files installed outside site-packages (the extension's jupyter-config JSON) are left
    out: Kernel Gateway does not read them.
    """
    name = distribution.metadata["Name"].replace("-", "_")
    wheel_path = folder / f"{name}-{distribution.version}-py3-none-any.whl"
    records: list[str] = []
    dist_info = ""
    skipped_metadata = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
    with zipfile.ZipFile(wheel_path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for file in distribution.files or []:
            path = file.as_posix()
            if path.startswith("..") or "__pycache__" in file.parts or path.endswith(".pyc"):
                continue
            if file.parts[0].endswith(".dist-info"):
                dist_info = file.parts[0]
                if file.name in skipped_metadata:
                    continue
            data = Path(str(file.locate())).read_bytes()
            wheel.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            records.append(f"{path},sha256={digest.decode()},{len(data)}")
        if not dist_info:
            raise ServerStartError(f"{distribution.metadata['Name']} lists no installed files")
        records.append(f"{dist_info}/RECORD,,")
        wheel.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
    return wheel_path


def _extension_distribution() -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(_EXTENSION_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ServerStartError(
            "The bundled image is built from the jupyter-exec-ext installed in "
            f"{sys.executable}, and there is none: install it (pip install jupyter-exec-ext), "
            "or pass custom_image_name."
        ) from None


def _source_folder(distribution: importlib.metadata.Distribution) -> Path | None:
    """The source folder an editable or local-folder install came from, if it still exists."""
    try:
        direct_url = json.loads(distribution.read_text("direct_url.json") or "{}")
    except ValueError:
        return None
    url = str(direct_url.get("url", ""))
    if "dir_info" not in direct_url or not url.startswith("file://"):
        return None
    folder = Path(unquote(urlsplit(url).path))
    return folder if (folder / "pyproject.toml").is_file() else None


def _extension_inputs() -> Iterator[tuple[str, bytes]]:
    """(name, content) of what makes the extension: its metadata, packages and pyproject."""
    distribution = _extension_distribution()
    yield "version", distribution.version.encode()
    yield "METADATA", (distribution.read_text("METADATA") or "").encode()
    source = _source_folder(distribution)
    if source is not None:
        yield "pyproject.toml", (source / "pyproject.toml").read_bytes()
    for package in _EXTENSION_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                yield f"{package}/{path.relative_to(root).as_posix()}", path.read_bytes()


def _pip(*arguments: str) -> None:
    """Run this Python's pip; a failure is a ServerStartError that quotes pip's output."""
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *arguments]
    try:
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as e:
        raise ServerStartError(f"Could not run {' '.join(command)}: {e}") from e
    if finished.returncode != 0:
        output = "\n".join((finished.stdout + finished.stderr).splitlines()[-_LOG_TAIL_LINES:])
        raise ServerStartError(
            "Making the wheels for the bundled image failed (the build installs them "
            f"without a package index): {' '.join(command)}\n{output}"
        )


# -- containers -------------------------------------------------------------------------------


def _import_docker() -> Any:
    """The docker package, or an ImportError saying which extra installs it."""
    try:
        import docker  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415 - optional
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return docker


def _docker_client(docker_module: Any, base_url: str | None) -> DockerClient:
    """A client of the engine at ``base_url``, or of the one the environment names."""
    address = base_url or os.environ.get("DOCKER_HOST") or _DEFAULT_DOCKER_SOCKET
    if address.startswith("unix://"):
        # docker-py leaks its socket when a unix socket refuses it: ask the socket first.
        _check_unix_socket(address)
    client = None
    try:
        if base_url is not None:
            client = docker_module.DockerClient(base_url=base_url)
        else:
            client = docker_module.from_env()
        client.ping()
    except (docker_module.errors.DockerException, requests.RequestException) as e:
        if client is not None:
            client.close()
        where = base_url or os.environ.get("DOCKER_HOST") or "the default socket"
        raise ServerStartError(
            f"No container engine answers at {where}: {e}. Start Docker, or podman's API "
            "service (podman system service), and pass its socket as docker_base_url or in "
            "DOCKER_HOST."
        ) from e
    return client


def _check_unix_socket(address: str) -> None:
    """Raise a ServerStartError unless something accepts connections on the unix socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            probe.connect(address.removeprefix("unix://"))
    except OSError as e:
        raise ServerStartError(
            f"No container engine answers at {address}: {e}. Start Docker, or podman's API "
            "service (podman system service), and pass its socket as docker_base_url or in "
            "DOCKER_HOST."
        ) from e


def _check_custom_image(docker_module: Any, client: DockerClient, name: str) -> None:
    try:
        client.images.get(name)
    except docker_module.errors.ImageNotFound:
        # AutoGen raises ValueError for a missing custom image; so do we.
        raise ValueError(f"Custom image {name} does not exist") from None


def _wait_until_ready(
    container: Container, connection_info: JupyterConnectionInfo, start_timeout: float
) -> None:
    """Wait until the gateway answers with the token; explain a failure with the log's end."""
    # Any Kernel Gateway (and jupyter_server) answers this, with or without our extension.
    url = connection_info.url("api/kernelspecs")
    deadline = time.monotonic() + start_timeout
    with requests.Session() as http:
        http.headers["Authorization"] = f"token {connection_info.token}"
        while True:
            status = _status_of(http, url)
            if status == 200:
                return
            if status in (401, 403):
                raise ServerStartError(
                    f"The gateway in container {container.name} refused the token (HTTP "
                    f"{status} at {url}): its image must pass the TOKEN variable as "
                    "--KernelGatewayApp.auth_token."
                )
            container.reload()
            if container.status not in ("created", "running"):
                raise ServerStartError(
                    f"Container {container.name} ({container.image.tags or container.image.id}) "
                    f"stopped while starting (status {container.status}, exit code "
                    f"{container.attrs.get('State', {}).get('ExitCode')}). "
                    f"The end of its log:\n{_log_tail(container)}"
                )
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"The gateway in container {container.name} did not answer at {url} within "
                    f"{start_timeout:g} s. The end of its log:\n{_log_tail(container)}"
                )
            time.sleep(_POLL_INTERVAL)


def _check_agent_api(connection_info: JupyterConnectionInfo, image_name: str) -> None:
    """Raise a ServerStartError naming the fix when the gateway lacks the agent-session API."""
    url = connection_info.url("api/agent-sessions")
    with requests.Session() as http:
        http.headers["Authorization"] = f"token {connection_info.token}"
        status = _status_of(http, url)
    if status != 200:
        raise ServerStartError(
            f"The gateway in {image_name} answers, but not with the agent-session API "
            f"(HTTP {status} at {url}): install jupyter-exec-ext into the image and start "
            "the gateway with --KernelGatewayApp.api=jupyter_exec_ext.kernel_gateway (the "
            "bundled Dockerfile shows how)."
        )


def _status_of(http: requests.Session, url: str) -> int | None:
    """The status of a GET on ``url``, None when nothing answers yet."""
    try:
        with http.get(url, timeout=5) as answer:
            return answer.status_code
    except requests.RequestException:
        return None


def _log_tail(container: Container, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        log: bytes = container.logs(tail=lines)
    except Exception as e:  # explaining a failure must not fail
        return f"(the log could not be read: {e})"
    return log.decode("utf-8", "replace").rstrip() or "(empty)"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
