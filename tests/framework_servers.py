"""The servers every framework adapter is tested against: a local one, the same reached as a
remote one is (its URL and token), and a plain Jupyter server (the fallback, backend "kernels")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from jupyter_exec_client import JupyterConnectionInfo, LocalJupyterServer

from .test_client_fallback import PlainServer, plain_jupyter_server

__all__ = ["PLOT", "PlainServer", "local_server", "plain_jupyter_server", "server_target"]

#: Code that shows one matplotlib figure and prints a line.
PLOT = (
    "import matplotlib.pyplot as plt\n"
    "print('doubled', x * 2)\n"
    "plt.plot([1, 2, 3], [1, 4, 9])\n"
    "plt.show()"
)
#: The backend each target's executor ends up on.
BACKENDS = {"local": "agent-sessions", "remote-token": "agent-sessions", "kernels": "kernels"}


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalJupyterServer]:
    """One real local server (with the extension) for the module."""
    root = tmp_path_factory.mktemp("server-root")
    with LocalJupyterServer(root_dir=root, log_file=root / "server.log") as running:
        yield running


@pytest.fixture(params=list(BACKENDS))
def server_target(
    request: pytest.FixtureRequest, local_server: LocalJupyterServer
) -> tuple[str, LocalJupyterServer | JupyterConnectionInfo]:
    """What an adapter is given: the local server, a URL with its token, a plain server."""
    if request.param == "local":
        return request.param, local_server
    if request.param == "remote-token":
        info = local_server.connection_info
        assert info.token, "the local server has a token"
        return request.param, JupyterConnectionInfo.from_url(info.base_url, token=info.token)
    plain: PlainServer = request.getfixturevalue("plain_jupyter_server")
    return request.param, plain.connection_info
