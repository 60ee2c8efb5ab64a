"""The client's HTTP connections: proxies and TLS picked from the environment as requests does."""

from __future__ import annotations

import ssl

import pytest
from jupyter_exec_client import JupyterConnectionInfo, ServerConnectionError
from jupyter_exec_client._api import Request
from jupyter_exec_client._http import ConnectionPool, tls_context
from jupyter_exec_client._transport import SyncTransport

SERVER = JupyterConnectionInfo.from_url("http://jupyter.example:8888/user/alice/", token="t")


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start each test from an environment without proxy settings."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_without_a_proxy_the_request_line_has_the_path() -> None:
    pool = ConnectionPool(SERVER)
    assert pool.proxy is None
    assert pool.target(SERVER.url("api/agent-sessions?x=1")) == "/user/alice/api/agent-sessions?x=1"
    assert pool.proxy_headers() == {}


def test_a_plain_http_proxy_gets_the_whole_url_and_its_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://agent:s%40cret@proxy.example:3128")
    pool = ConnectionPool(SERVER)
    assert pool.proxy is not None
    assert (pool.proxy.hostname, pool.proxy.port) == ("proxy.example", 3128)
    url = SERVER.url("api/agent-sessions")
    assert pool.target(url) == url
    # "agent:s@cret" in base64
    assert pool.proxy_headers() == {"Proxy-Authorization": "Basic YWdlbnQ6c0BjcmV0"}


def test_no_proxy_keeps_the_server_off_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "jupyter.example")
    assert ConnectionPool(SERVER).proxy is None


def test_https_goes_through_a_tunnel_with_the_path_on_the_request_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    server = JupyterConnectionInfo.from_url("https://jupyter.example/", token="t")
    pool = ConnectionPool(server)
    assert pool.proxy is not None
    assert pool.target(server.url("api/status")) == "/api/status"
    assert pool.proxy_headers() == {}  # they go on the CONNECT instead


def test_an_unusable_proxy_is_a_connection_error_that_hides_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "socks5://agent:secret@proxy.example:1080")
    with pytest.raises(ServerConnectionError) as caught:
        SyncTransport(SERVER).send(Request("GET", "api/status"))
    assert "socks5://" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_verify_means_what_it_means_to_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    unchecked = tls_context(False)
    assert unchecked.verify_mode == ssl.CERT_NONE
    assert not unchecked.check_hostname
    assert tls_context(True).check_hostname
    # True takes the environment's bundle, as requests does: here one that is missing.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem")
    server = JupyterConnectionInfo.from_url("https://jupyter.example/", token="t")
    with pytest.raises(ServerConnectionError) as caught:
        SyncTransport(server).send(Request("GET", "api/status"))
    assert "/nonexistent/ca.pem" in str(caught.value)
