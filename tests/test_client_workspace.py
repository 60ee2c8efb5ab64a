"""Files in and out and the session's env, through both executors, on every kind of server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from jupyter_exec_client import (
    AsyncJupyterCodeExecutor,
    CodeBlock,
    JupyterCodeExecutor,
    LocalJupyterServer,
    SessionNotFoundError,
    WorkspaceFileNotFoundError,
    WorkspacePathError,
    WorkspaceUnavailableError,
)

from .test_client_fallback import (  # noqa: F401 - fixtures used by name
    PlainServer,
    kernel_gateway,
    plain_jupyter_server,
)

BINARY = bytes(range(256)) * 100


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalJupyterServer]:
    root = tmp_path_factory.mktemp("workspace-root")
    with LocalJupyterServer(root_dir=root, log_file=root / "server.log", kernel_pool=0) as running:
        yield running


@pytest.fixture
def executor(server: LocalJupyterServer, tmp_path: Path) -> Iterator[JupyterCodeExecutor]:
    with JupyterCodeExecutor(server, output_dir=tmp_path, env={"TOKEN_FOR_CODE": "t0p"}) as ex:
        yield ex


def run(executor: JupyterCodeExecutor, code: str) -> str:
    result = executor.execute_code_blocks([CodeBlock(code)])
    assert result.exit_code == 0, result.output
    return result.output


def test_files_go_in_and_come_out(executor: JupyterCodeExecutor, tmp_path: Path) -> None:
    local = tmp_path / "data.csv"
    local.write_text("a,b\n1,2\n", encoding="utf-8")
    entry = executor.upload(local)
    assert (entry["path"], entry["size"], entry["type"]) == ("data.csv", 8, "file")
    (tmp_path / "blob.bin").write_bytes(BINARY)
    assert executor.upload(tmp_path / "blob.bin", "in/deep/blob.bin")["path"] == "in/deep/blob.bin"

    result = executor.execute_code_blocks([CodeBlock(
        "rows = open('data.csv').read().splitlines()\n"
        "data = open('in/deep/blob.bin', 'rb').read()\n"
        "open('report.txt', 'w').write(f'{len(rows)} rows, {len(data)} bytes')"
    )])
    assert result.exit_code == 0, result.output
    assert result.workspace_changes == [{"path": "report.txt", "size": 19, "change": "created"}]

    saved = executor.download("report.txt")
    assert saved == tmp_path / "report.txt"
    assert saved.read_text() == "2 rows, 25600 bytes"
    # Replacing a local file, and into a folder of one's choice.
    saved.write_text("old")
    assert executor.download("report.txt", saved).read_text() == "2 rows, 25600 bytes"
    (tmp_path / "got").mkdir()
    assert executor.download("in/deep/blob.bin", tmp_path / "got").read_bytes() == BINARY
    assert not list(tmp_path.rglob("*.part"))

    names = {e["name"]: e["type"] for e in executor.list_files()}
    assert names["data.csv"] == "file"
    assert names["in"] == "directory"
    assert [e["path"] for e in executor.list_files("in/deep")] == ["in/deep/blob.bin"]
    executor.delete_file("in")
    assert "in" not in {e["name"] for e in executor.list_files()}


def test_wrong_paths_raise_clear_errors(executor: JupyterCodeExecutor, tmp_path: Path) -> None:
    with pytest.raises(WorkspaceFileNotFoundError, match=r"nothing\.txt"):
        executor.download("nothing.txt", tmp_path)
    assert not (tmp_path / "nothing.txt").exists()
    with pytest.raises(FileNotFoundError):
        executor.delete_file("nothing.txt")
    with pytest.raises(WorkspacePathError, match=r"'\.\.' is not allowed"):
        executor.list_files("../..")
    with pytest.raises(WorkspacePathError):
        executor.upload(__file__, "../escape.py")
    run(executor, "import os\nos.symlink('/etc', 'etc-link')")
    with pytest.raises(ValueError, match="leads out"):
        executor.download("etc-link/passwd", tmp_path)
    with pytest.raises(FileNotFoundError, match="No local file"):
        executor.upload(tmp_path / "missing.csv")
    run(executor, "import os\nos.makedirs('folder', exist_ok=True)")
    with pytest.raises(WorkspacePathError, match=r"is a folder"):
        executor.download("folder", tmp_path)
    assert not (tmp_path / "folder").exists()
    executor.upload(__file__, "a-file.py")
    with pytest.raises(WorkspacePathError, match="not a folder"):
        executor.list_files("a-file.py")


def test_env_reaches_the_kernel(executor: JupyterCodeExecutor) -> None:
    assert run(executor, "import os\nprint(os.environ['TOKEN_FOR_CODE'])") == "t0p"
    executor.restart()
    assert run(executor, "import os\nprint(os.environ['TOKEN_FOR_CODE'])") == "t0p"


def test_bad_env_is_refused_before_or_by_the_server(
    server: LocalJupyterServer, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="string values"):
        JupyterCodeExecutor(server, output_dir=tmp_path, env={"A": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="1BAD"):
        JupyterCodeExecutor(server, output_dir=tmp_path, env={"1BAD": "x"})


def test_a_stopped_executor_or_a_lost_session_says_so(
    server: LocalJupyterServer, tmp_path: Path
) -> None:
    executor = JupyterCodeExecutor(server, output_dir=tmp_path)
    executor.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        executor.list_files()
    executor = JupyterCodeExecutor(server, output_dir=tmp_path)
    try:
        executor._core.session_id = "no-such-session"
        with pytest.raises(SessionNotFoundError):
            executor.list_files()
    finally:
        executor._core.session_id = None
        executor.stop()


def test_the_async_executor_moves_files(server: LocalJupyterServer, tmp_path: Path) -> None:
    async def scenario() -> None:
        source = tmp_path / "in.txt"
        source.write_text("async")
        async with AsyncJupyterCodeExecutor(
            server, output_dir=tmp_path, env={"MODE": "async"}
        ) as executor:
            assert (await executor.upload(source, "x/in.txt"))["size"] == 5
            result = await executor.execute_code_blocks([CodeBlock(
                "import os\nopen('x/out.txt', 'w').write(open('x/in.txt').read() + "
                "os.environ['MODE'])"
            )])
            assert result.workspace_changes == [
                {"path": "x/out.txt", "size": 10, "change": "created"}
            ]
            saved = await executor.download("x/out.txt")
            assert saved.read_text() == "asyncasync"
            assert [e["name"] for e in await executor.list_files("x")] == ["in.txt", "out.txt"]
            await executor.delete_file("x/in.txt")
            with pytest.raises(WorkspaceFileNotFoundError):
                await executor.download("x/in.txt", tmp_path / "again.txt")

    asyncio.run(scenario())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_200_mb_upload_keeps_server_memory_bounded(
    server: LocalJupyterServer, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with big.open("wb") as file:
        for _ in range(200):
            chunk = os.urandom(1 << 16) * 16  # 1 MiB, not compressible
            digest.update(chunk)
            file.write(chunk)
    process = psutil.Process(server.pid)
    with JupyterCodeExecutor(server, output_dir=tmp_path) as executor:
        executor.list_files()  # warm up
        baseline = process.memory_info().rss
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.01):
                peak = max(peak, process.memory_info().rss)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            assert executor.upload(big)["size"] == 200 << 20
        finally:
            done.set()
            sampler.join()
        print(f"server RSS grew {(peak - baseline) / (1 << 20):.1f} MiB during a 200 MiB upload")
        assert peak - baseline < 50 << 20, f"server grew {(peak - baseline) >> 20} MiB"
        big.unlink()
        back = executor.download("big.bin", tmp_path / "back.bin")
        check = hashlib.sha256()
        with back.open("rb") as file:
            while chunk := file.read(1 << 20):
                check.update(chunk)
        assert check.hexdigest() == digest.hexdigest()
        executor.delete_file("big.bin")


# -- servers without the extension -------------------------------------------------------


def test_a_plain_server_moves_files_through_its_contents_api(
    plain_jupyter_server: PlainServer,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.csv"
    source.write_bytes(BINARY)
    with JupyterCodeExecutor(
        plain_jupyter_server.connection_info, output_dir=tmp_path, env={"PLAIN_ENV": "yes"}
    ) as executor:
        assert executor.backend == "kernels"
        assert executor.upload(source, "sub/dir/in.csv")["size"] == len(BINARY)
        assert run(
            executor, "import os\nprint(len(open('sub/dir/in.csv', 'rb').read()), "
            "os.environ['PLAIN_ENV'])"
        ) == f"{len(BINARY)} yes"
        executor.restart()
        assert run(executor, "import os\nprint(os.environ['PLAIN_ENV'])") == "yes"
        run(executor, "open('out.txt', 'w').write('made')")
        assert executor.download("out.txt").read_text() == "made"
        assert {e["name"] for e in executor.list_files("sub")} == {"dir"}
        executor.delete_file("sub")
        with pytest.raises(WorkspaceFileNotFoundError):
            executor.list_files("sub")
        with pytest.raises(WorkspaceFileNotFoundError):
            executor.download("nothing", tmp_path)


def test_kernel_gateway_has_no_files_but_gets_the_env(
    kernel_gateway: PlainServer,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    with JupyterCodeExecutor(
        kernel_gateway.connection_info, output_dir=tmp_path,
        env={"KERNEL_FLAVOUR": "gateway", "OTHER": "set in the kernel"},
    ) as executor:
        assert executor.backend == "kernels"
        with pytest.raises(WorkspaceUnavailableError, match="Contents API"):
            executor.list_files()
        with pytest.raises(WorkspaceUnavailableError):
            executor.upload(__file__)
        assert run(
            executor, "import os\nprint(os.environ['KERNEL_FLAVOUR'], os.environ['OTHER'])"
        ) == "gateway set in the kernel"
