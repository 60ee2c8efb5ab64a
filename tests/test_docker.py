"""DockerJupyterServer against a real container engine (Docker, or podman's Docker API).

The engine is the one ``DOCKER_HOST`` names, else the podman socket that
``scripts/podman-engine.sh`` starts. Without an engine, or without the ``docker`` package,
these tests skip with the reason (and fail under CI, where the engine must be there).

The bundled image is built once for the session, from the local base image the script makes
(Debian bookworm's python3) when the engine has it, with matplotlib added, so that a real
``plt.show()`` is tested.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import stat
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_exec_client import CodeBlock, JupyterCodeExecutor, ServerStartError, docker_server
from jupyter_exec_client.docker_server import DockerJupyterServer

#: Building the image (the first test that needs it) takes a minute or two on two cores.
pytestmark = pytest.mark.timeout(600)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PODMAN_SOCKET = (
    Path(os.environ.get("PODMAN_ENGINE_DIR", "/var/tmp/jupyter-exec-podman")) / "podman.sock"
)
LOCAL_BASE_IMAGE = os.environ.get("JUPYTER_EXEC_BASE_IMAGE", "localhost/jupyter-exec-base:bookworm")
EXTRA_PACKAGES = ("matplotlib",)


@pytest.fixture(scope="session")
def docker_module() -> Any:
    """The docker package (an optional dependency of the client)."""
    try:
        import docker  # noqa: PLC0415 - a skip, not an import error, when it is missing
    except ImportError:
        pytest.skip(
            'the docker package is not installed: pip install "jupyter-exec-client[docker]"'
        )
    return docker


@pytest.fixture(scope="session")
def docker_base_url(docker_module: Any) -> str:
    """The address of a container engine that answers, or a skip saying why there is none."""
    candidates = [os.environ["DOCKER_HOST"]] if os.environ.get("DOCKER_HOST") else []
    if PODMAN_SOCKET.exists() and f"unix://{PODMAN_SOCKET}" not in candidates:
        candidates.append(f"unix://{PODMAN_SOCKET}")
    failures = []
    for base_url in candidates:
        try:
            # The module's own check: it also keeps docker-py from leaking a refused socket.
            docker_server._docker_client(docker_module, base_url).close()
        except ServerStartError as e:
            failures.append(str(e))
        else:
            return base_url
    pytest.skip(
        "no container engine answers (set DOCKER_HOST, or run scripts/podman-engine.sh): "
        + ("; ".join(failures) or "DOCKER_HOST is unset and there is no podman socket")
    )


@pytest.fixture(scope="session")
def engine(docker_module: Any, docker_base_url: str) -> Iterator[Any]:
    """A docker client of the engine, to look at images and containers."""
    with contextlib.closing(docker_module.DockerClient(base_url=docker_base_url)) as client:
        yield client


@pytest.fixture(scope="session")
def base_image(engine: Any, docker_module: Any) -> str | None:
    """The local base image when the engine has it (no registry here), else the default."""
    try:
        engine.images.get(LOCAL_BASE_IMAGE)
    except docker_module.errors.ImageNotFound:
        return None
    return LOCAL_BASE_IMAGE


@pytest.fixture(scope="session")
def image(engine: Any, base_image: str | None) -> str:
    """The bundled image, built (or found already built) once for the session."""
    started = time.monotonic()
    name: str = docker_server.ensure_image(
        engine, base_image=base_image, extra_packages=EXTRA_PACKAGES
    )
    print(f"bundled image {name}: ready in {time.monotonic() - started:.1f} s")
    return name


def start_server(docker_base_url: str, base_image: str | None, **options: Any) -> Any:
    """A DockerJupyterServer of the bundled image the session built."""
    return DockerJupyterServer(
        docker_base_url=docker_base_url,
        base_image=base_image,
        extra_packages=EXTRA_PACKAGES,
        **options,
    )


@pytest.fixture(scope="module")
def server(docker_base_url: str, base_image: str | None, image: str) -> Iterator[Any]:
    """One container of the bundled image for the module's executors."""
    with start_server(docker_base_url, base_image) as running:
        # Not always `image`: the extension's files may have changed since (a new tag).
        assert running.image_name.startswith(docker_server.IMAGE_REPOSITORY + ":")
        yield running


@pytest.fixture
def executor(server: Any, tmp_path: Path) -> Iterator[JupyterCodeExecutor]:
    """An executor (a kernel of its own) in the module's container."""
    with JupyterCodeExecutor(server, timeout=20, output_dir=tmp_path) as running:
        yield running


def run(executor: JupyterCodeExecutor, code: str) -> Any:
    """Run one Python block."""
    return executor.execute_code_blocks([CodeBlock(textwrap.dedent(code), "python")])


def containers_named(engine: Any, name: str) -> list[Any]:
    """The engine's containers of that name, running or not."""
    return [c for c in engine.containers.list(all=True) if c.name == name]


# -- the bundled image ------------------------------------------------------------------------


def test_state_is_kept_across_calls(executor: JupyterCodeExecutor) -> None:
    """A variable defined in one call is there in the next: one stateful kernel."""
    first = run(executor, "x = 6 * 7")
    assert first.exit_code == 0, first.output
    second = run(executor, "print(x, flush=True)")
    assert (second.exit_code, second.output.strip()) == (0, "42")


def test_matplotlib_figure_is_saved(executor: JupyterCodeExecutor, tmp_path: Path) -> None:
    """A figure shown in the container comes back as a PNG file in the output folder."""
    result = run(
        executor,
        """
        import matplotlib.pyplot as plt
        plt.plot([1, 3, 2])
        plt.show()
        """,
    )
    assert result.exit_code == 0, result.output
    assert len(result.output_files) == 1, result
    png = Path(result.output_files[0])
    assert png.parent == tmp_path
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert str(png) in result.output


def test_timeout_interrupts_and_keeps_state(server: Any, tmp_path: Path) -> None:
    """Past its timeout a block is interrupted; its output and the kernel's state remain."""
    with JupyterCodeExecutor(server, timeout=2, output_dir=tmp_path) as executor:
        result = run(
            executor,
            """
            kept = "still here"
            print("before the sleep", flush=True)
            import time
            time.sleep(60)
            """,
        )
        assert result.exit_code != 0
        assert "before the sleep" in result.output
        assert "kernel was interrupted" in result.output, result.output
        after = run(executor, "print(kept)")
        assert (after.exit_code, after.output.strip()) == (0, "still here")


def test_connection_info_and_token(server: Any) -> None:
    """The gateway answers on the host port with the server's token, and refuses others."""
    import requests  # noqa: PLC0415 - only here

    info = server.connection_info
    assert (info.host, info.port, info.token) == ("127.0.0.1", server.port, server.token)
    url = info.url("api/kernelspecs")
    assert requests.get(url, headers={"Authorization": f"token {info.token}"}, timeout=10).ok
    refused = requests.get(url, headers={"Authorization": "token wrong"}, timeout=10)
    assert refused.status_code in (401, 403)
    assert server.running
    assert server.token not in repr(server)


def test_host_network(docker_base_url: str, base_image: str | None, image: str) -> None:
    """On the host's network the bundled image's gateway listens on the chosen port itself."""
    with (
        start_server(docker_base_url, base_image, network_mode="host") as host_server,
        JupyterCodeExecutor(host_server) as executor,
    ):
        result = run(executor, "import os; print(os.environ['PORT'])")
        assert result.output.strip() == str(host_server.port)


# -- limits and the working folder ------------------------------------------------------------


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host folder mounted into the limited container."""
    return tmp_path_factory.mktemp("docker-work")


@pytest.fixture(scope="module")
def limited_server(
    docker_base_url: str, base_image: str | None, image: str, work_dir: Path
) -> Iterator[Any]:
    """A container with 400 MB of memory, one core and a host folder as its working folder."""
    with start_server(
        docker_base_url, base_image, mem_limit="400m", cpus=1.0, work_dir=work_dir
    ) as running:
        yield running


def test_memory_limit_hit_is_reported(limited_server: Any, engine: Any, tmp_path: Path) -> None:
    """A kernel that outgrows the container's memory is killed; the result says so, no hang."""
    settings = engine.containers.get(limited_server.container_id).attrs["HostConfig"]
    assert settings["Memory"] == 400 * 1024**2
    assert settings["NanoCpus"] == 10**9
    with JupyterCodeExecutor(limited_server, timeout=60, output_dir=tmp_path) as executor:
        result = run(
            executor,
            """
            print("allocating", flush=True)
            chunks = []
            while True:
                chunks.append(b"x" * 50_000_000)
            """,
        )
        assert result.exit_code != 0
        assert "allocating" in result.output
        # The kernel either raised MemoryError or was killed by the engine's OOM killer.
        assert "MemoryError" in result.output or "died" in result.output.lower(), result.output
        # The gateway survived its kernel: the session runs code again.
        again = run(executor, "print('alive')")
        assert (again.exit_code, again.output.strip()) == (0, "alive"), again.output
    assert limited_server.running


def test_work_dir_is_the_working_folder(
    limited_server: Any, work_dir: Path, tmp_path: Path
) -> None:
    """Files written in the container's working folder land in the host folder, as our user."""
    mode_before = stat.S_IMODE(work_dir.stat().st_mode)
    with JupyterCodeExecutor(limited_server, output_dir=tmp_path) as executor:
        result = run(
            executor,
            """
            with open("/workspace/from-the-container.txt", "w") as file:
                file.write("hello")
            import os
            print(os.getuid())
            """,
        )
    assert result.exit_code == 0, result.output
    written = work_dir / "from-the-container.txt"
    assert written.read_text() == "hello"
    assert written.stat().st_uid == os.getuid()
    assert result.output.strip() == str(os.getuid())
    # The folder is shared by running as its owner, not by opening it to everyone.
    assert stat.S_IMODE(work_dir.stat().st_mode) == mode_before
    assert not stat.S_IMODE(work_dir.stat().st_mode) & stat.S_IWOTH


# -- the container's life ---------------------------------------------------------------------


def test_stop_leaves_no_container(
    docker_base_url: str, base_image: str | None, image: str, engine: Any
) -> None:
    """stop() (and the with block) stops and removes the container; a second stop is a no-op."""
    name = f"jupyter-exec-test-{secrets.token_hex(4)}"
    with start_server(docker_base_url, base_image, container_name=name) as running:
        assert [c.status for c in containers_named(engine, name)] == ["running"]
        running.stop()
        assert containers_named(engine, name) == []
        assert not running.running
    running.stop()


def test_without_auto_remove_the_container_is_stopped_and_kept(
    docker_base_url: str, base_image: str | None, image: str, engine: Any
) -> None:
    """auto_remove=False keeps the stopped container (for its log), as AutoGen's does."""
    name = f"jupyter-exec-test-{secrets.token_hex(4)}"
    running = start_server(docker_base_url, base_image, container_name=name, auto_remove=False)
    try:
        running.stop()
        assert [c.status for c in containers_named(engine, name)] == ["exited"]
    finally:
        for container in containers_named(engine, name):
            container.remove(force=True)


def test_interpreter_exit_removes_the_container(
    docker_base_url: str, base_image: str | None, image: str, engine: Any
) -> None:
    """A server never stopped by its program is stopped and removed when Python exits."""
    name = f"jupyter-exec-test-{secrets.token_hex(4)}"
    script = textwrap.dedent(
        f"""
        from jupyter_exec_client.docker_server import DockerJupyterServer
        server = DockerJupyterServer(
            docker_base_url={docker_base_url!r}, base_image={base_image!r},
            extra_packages={EXTRA_PACKAGES!r}, container_name={name!r},
        )
        print(server.container_name, flush=True)
        """
    )
    finished = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == name
    assert containers_named(engine, name) == []


# -- custom images ----------------------------------------------------------------------------


def build_custom_image(engine: Any, image: str, command: str) -> str:
    """An image FROM the bundled one with another command line, as a user would write it."""
    dockerfile = f"FROM {image}\nCMD {command}\n"
    tag = f"jupyter-exec-test-custom:{secrets.token_hex(4)}"
    engine.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    return tag


#: AutoGen's custom-image rules: port 8888, TOKEN, answer_yes and list_kernels.
SEED_COMMAND = (
    "python -m jupyter kernelgateway --KernelGatewayApp.ip=0.0.0.0 "
    '--KernelGatewayApp.port=8888 --KernelGatewayApp.auth_token="${TOKEN}" '
    "--JupyterApp.answer_yes=true --JupyterWebsocketPersonality.list_kernels=true"
)


def test_custom_image_with_the_extension(
    docker_base_url: str, image: str, engine: Any, tmp_path: Path
) -> None:
    """An image on AutoGen's rules, with our API module added, serves agent sessions."""
    custom = build_custom_image(
        engine, image, SEED_COMMAND + " --KernelGatewayApp.api=jupyter_exec_ext.kernel_gateway"
    )
    try:
        with (
            DockerJupyterServer(custom_image_name=custom, docker_base_url=docker_base_url) as srv,
            JupyterCodeExecutor(srv, output_dir=tmp_path) as executor,
        ):
            assert run(executor, "y = 5").exit_code == 0
            assert run(executor, "print(y * 2)").output.strip() == "10"
    finally:
        engine.images.remove(custom, force=True)


def test_custom_image_without_the_extension_is_a_clear_error(
    docker_base_url: str, image: str, engine: Any
) -> None:
    """A plain gateway (no agent-session API) fails at start, saying what to add; no leftovers."""
    custom = build_custom_image(engine, image, SEED_COMMAND)
    name = f"jupyter-exec-test-{secrets.token_hex(4)}"
    try:
        with pytest.raises(ServerStartError, match=r"jupyter_exec_ext\.kernel_gateway"):
            DockerJupyterServer(
                custom_image_name=custom, docker_base_url=docker_base_url, container_name=name
            )
        assert containers_named(engine, name) == []
    finally:
        engine.images.remove(custom, force=True)


def test_missing_custom_image(docker_base_url: str) -> None:
    """A custom image the engine does not have is a ValueError, as in AutoGen."""
    with pytest.raises(ValueError, match="does not exist"):
        DockerJupyterServer(
            custom_image_name="jupyter-exec-test-no-such-image:1", docker_base_url=docker_base_url
        )


def test_start_timeout_quotes_the_log(docker_base_url: str, image: str, engine: Any) -> None:
    """A container whose gateway never answers fails after start_timeout, quoting its log."""
    custom = build_custom_image(engine, image, 'sh -c "echo not a gateway; sleep 600"')
    name = f"jupyter-exec-test-{secrets.token_hex(4)}"
    try:
        with pytest.raises(ServerStartError, match=r"(?s)within 3 s.*not a gateway"):
            DockerJupyterServer(
                custom_image_name=custom,
                docker_base_url=docker_base_url,
                container_name=name,
                start_timeout=3,
                stop_timeout=1,
            )
        assert containers_named(engine, name) == []
    finally:
        engine.images.remove(custom, force=True)


# -- without an engine ------------------------------------------------------------------------


def test_no_engine_is_a_clear_error(tmp_path: Path) -> None:
    """An engine address where nothing answers says what to start."""
    pytest.importorskip("docker")
    with pytest.raises(ServerStartError, match="No container engine answers"):
        DockerJupyterServer(docker_base_url=f"unix://{tmp_path}/nothing.sock")


def test_missing_docker_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the docker package the error says which extra to install."""
    monkeypatch.setitem(sys.modules, "docker", None)
    with pytest.raises(ImportError, match=r"jupyter-exec-client\[docker\]"):
        DockerJupyterServer()


def test_image_tag_follows_its_inputs() -> None:
    """The bundled image's tag is stable for the same inputs and changes with them."""
    tag = docker_server.image_tag("python:3.11-slim")
    assert tag == docker_server.image_tag("python:3.11-slim")
    assert tag.startswith("jupyter-exec-gateway:")
    assert tag != docker_server.image_tag("python:3.12-slim")
    assert tag != docker_server.image_tag("python:3.11-slim", ["matplotlib"])


def test_repackaged_wheel_installs(tmp_path: Path) -> None:
    """A wheel made from an installed distribution's files is one pip installs."""
    import importlib.metadata  # noqa: PLC0415 - only here

    distribution = importlib.metadata.distribution("requests")
    wheel = docker_server.repackage_wheel(distribution, tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "requests/__init__.py" in names
    assert any(name.endswith(".dist-info/RECORD") for name in names)
    target = tmp_path / "target"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    assert (target / "requests" / "__init__.py").is_file()
