"""The client against remote-style servers: HTTPS with a private CA, a base_url prefix, a token.

Real ``jupyter server`` processes serve HTTPS with a certificate for 127.0.0.1 and
localhost, signed by a CA made for the test (with the ``openssl`` command): one with the
agent-session extension, one without it (the client then uses the kernels API over
``wss://``). Both serve under ``/user/alice/``, as a JupyterHub user server does.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from jupyter_exec_client import (
    AuthenticationError,
    CodeBlock,
    IPythonCodeResult,
    JupyterCodeExecutor,
    JupyterConnectionInfo,
    ServerConnectionError,
)
from jupyter_exec_client.local_server import _other_extensions

from .conftest import free_port

TOKEN = "remote-test-token"
BASE_PATH = "/user/alice/"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Certificates:
    """A private CA and a server certificate it signed (for 127.0.0.1 and localhost)."""

    ca: Path
    certificate: Path
    key: Path


@dataclass
class HttpsServer:
    """A running HTTPS server and how to reach it."""

    port: int
    certificates: Certificates
    process: subprocess.Popen[bytes]
    log_path: Path

    def connection_info(
        self, token: str | None = TOKEN, verify: bool | str | None = None
    ) -> JupyterConnectionInfo:
        """The address under the prefix; the test CA is trusted unless ``verify`` says else."""
        return JupyterConnectionInfo(
            "127.0.0.1",
            True,
            self.port,
            token=token,
            base_path=BASE_PATH,
            verify=str(self.certificates.ca) if verify is None else verify,
        )


def _openssl(*arguments: str, cwd: Path) -> None:
    subprocess.run(["openssl", *arguments], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA and a server certificate, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    ec_key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec_key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=jupyter-exec test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "req", *ec_key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=folder,
    )  # fmt: skip
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
        cwd=folder,
    )  # fmt: skip
    return Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")


def _https_server(
    certificates: Certificates, folder: Path, *, extension: bool
) -> Iterator[HttpsServer]:
    """Run ``jupyter server`` over HTTPS under BASE_PATH until the generator is closed."""
    port = free_port()
    command = [
        sys.executable, "-m", "jupyter_server", "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.base_url={BASE_PATH}",
        f"--ServerApp.root_dir={folder}",
        f"--ServerApp.certfile={certificates.certificate}",
        f"--ServerApp.keyfile={certificates.key}",
        f"--ServerApp.jpserver_extensions=jupyter_exec_ext={extension}",
        *(f"--ServerApp.jpserver_extensions={name}=False" for name in _other_extensions()),
    ]  # fmt: skip
    if extension:
        command.append("--AgentSessionManager.kernel_pool=python3=0")
    if os.geteuid() == 0:
        command.append("--allow-root")
    env = {**os.environ, "JUPYTER_TOKEN": TOKEN, "JUPYTER_RUNTIME_DIR": str(folder / "runtime")}
    log_path = folder / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = HttpsServer(port, certificates, process, log_path)
    url = server.connection_info().url("api/kernelspecs")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"The server exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"No answer:\n{log_path.read_text()}"
            try:
                answer = requests.get(
                    url,
                    headers={"Authorization": f"token {TOKEN}"},
                    verify=str(certificates.ca),
                    timeout=5,
                )
                if answer.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def https_server(
    certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HttpsServer]:
    """A server with the agent-session extension, over HTTPS under BASE_PATH."""
    yield from _https_server(certificates, tmp_path_factory.mktemp("https"), extension=True)


@pytest.fixture(scope="module")
def plain_https_server(
    certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HttpsServer]:
    """A server without the extension, over HTTPS under BASE_PATH."""
    if importlib.util.find_spec("websocket") is None:
        pytest.skip('websocket-client is not installed (pip install "./client[websocket]")')
    yield from _https_server(certificates, tmp_path_factory.mktemp("plain"), extension=False)


PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"


def _check_state_and_image(executor: JupyterCodeExecutor, tmp_path: Path) -> None:
    assert executor.execute_code_blocks([CodeBlock("x = 6 * 7")]).exit_code == 0
    assert executor.execute_code_blocks([CodeBlock("print(x)")]) == IPythonCodeResult(0, "42")
    result = executor.execute_code_blocks([CodeBlock(PLOT)])
    assert result.exit_code == 0, result.output
    (png,) = map(Path, result.output_files)
    assert png.parent == tmp_path.resolve()
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert f"Image data saved to {png}" in result.output


def test_https_under_a_prefix_with_a_token(https_server: HttpsServer, tmp_path: Path) -> None:
    info = https_server.connection_info()
    assert info.base_url == f"https://127.0.0.1:{https_server.port}/user/alice/"
    with JupyterCodeExecutor(info, output_dir=tmp_path) as executor:
        assert executor.backend == "agent-sessions"
        # The image is downloaded from the server's file URL, under the prefix, over HTTPS.
        _check_state_and_image(executor, tmp_path)


def test_a_url_with_a_host_name_works_too(https_server: HttpsServer, tmp_path: Path) -> None:
    info = JupyterConnectionInfo.from_url(
        f"https://localhost:{https_server.port}/user/alice",
        token=TOKEN,
        verify=str(https_server.certificates.ca),
    )
    with JupyterCodeExecutor(info, output_dir=tmp_path) as executor:
        assert executor.execute_code_blocks([CodeBlock("print(1 + 1)")]).output == "2"


@pytest.mark.parametrize("token", ["not-the-token", None])
def test_wrong_or_missing_token_is_an_authentication_error(
    https_server: HttpsServer, tmp_path: Path, token: str | None
) -> None:
    with pytest.raises(AuthenticationError) as caught:
        JupyterCodeExecutor(https_server.connection_info(token=token), output_dir=tmp_path)
    assert caught.value.status == 403
    assert caught.value.url.startswith(f"https://127.0.0.1:{https_server.port}/user/alice/")
    assert "token" in str(caught.value)


def test_an_untrusted_certificate_is_a_connection_error_naming_the_url(
    https_server: HttpsServer, tmp_path: Path
) -> None:
    # verify=True trusts only the system's CAs, which never signed the test CA.
    with pytest.raises(ServerConnectionError) as caught:
        JupyterCodeExecutor(https_server.connection_info(verify=True), output_dir=tmp_path)
    message = str(caught.value)
    assert f"https://127.0.0.1:{https_server.port}/user/alice/api/agent-sessions" in message
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert "verify=" in message  # says what to do
    assert "Traceback" not in message


def test_plain_server_over_https_uses_the_kernel_websocket(
    plain_https_server: HttpsServer, tmp_path: Path
) -> None:
    with JupyterCodeExecutor(plain_https_server.connection_info(), output_dir=tmp_path) as executor:
        assert executor.backend == "kernels"
        _check_state_and_image(executor, tmp_path)


def test_plain_server_over_https_refuses_a_wrong_token(
    plain_https_server: HttpsServer, tmp_path: Path
) -> None:
    with pytest.raises(AuthenticationError):
        JupyterCodeExecutor(
            plain_https_server.connection_info(token="not-the-token"), output_dir=tmp_path
        )
