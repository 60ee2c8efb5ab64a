"""Authentication matrix: every route of the extension x every way of (not) being logged in.

The routes are read from the running application, so a route added later cannot be forgotten.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import pytest
from jupyter_server.auth import Authorizer
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from jupyter_exec_ext import handlers as our_handlers

from .conftest import Api

_METHODS = ("get", "post", "put", "patch", "delete")


class PolicyAuthorizer(Authorizer):
    """A real authorizer of the server that refuses some actions on the ``kernels`` resource.

    It allows everything until a test sets ``refused``, so the tests can first make a session
    and a file to aim at.
    """

    refused: frozenset[str] = frozenset()

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        """Refuse the ``refused`` actions on kernels; allow the rest."""
        return not (resource == "kernels" and action in self.refused)


@pytest.fixture
def jp_server_config(jp_server_config: dict[str, Any]) -> dict[str, Any]:
    """The server of conftest, with :class:`PolicyAuthorizer` as its authorizer."""
    server_app = {**jp_server_config["ServerApp"], "authorizer_class": PolicyAuthorizer}
    return {**jp_server_config, "ServerApp": server_app}


def _rules(router: Any) -> Any:
    """Every leaf rule of a tornado router, through nested (per-host) routers."""
    for rule in getattr(router, "rules", []):
        if hasattr(rule.target, "rules"):
            yield from _rules(rule.target)
        else:
            yield rule


def extension_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path pattern) for every route the extension registered."""
    routes = []
    for rule in _rules(app.default_router):
        target = rule.target
        if isinstance(target, type) and target.__module__ == our_handlers.__name__:
            pattern = rule.matcher.regex.pattern.rstrip("$")
            for method in _METHODS:
                if method in vars(target):
                    routes.append((method.upper(), pattern))
    return routes


def fill(pattern: str, values: dict[str, str]) -> str:
    """A concrete path for a route pattern."""
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: values[m.group(1)], pattern)
    return path.replace("/?", "")


async def fetch(url: str, method: str, headers: dict[str, str]) -> int:
    body = None
    if method in ("POST", "PUT", "PATCH"):
        # An upload's body is the file; other bodies are JSON.
        body = '{"code": "1"}' if url.endswith("/execute") else "{}"
    request = HTTPRequest(
        url, method=method, headers=headers, body=body, allow_nonstandard_methods=True,
        follow_redirects=False, request_timeout=60,
    )
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as e:
        return e.code
    return response.code


async def make_targets(api: Api, jp_serverapp: Any, jp_http_port: int) -> Any:
    """The routes filled with a real session and file, and the server's base URL."""
    session = await api.create()
    result = await api.execute(
        session["id"],
        "from IPython.display import HTML\n_ = open('hello.txt', 'w').write('hi')\nHTML('x')",
    )
    started = await api.request(
        "POST", session["id"], "execute", body={"code": "1", "background": True}
    )
    # Ended before the routes are tried: the session's execution count no longer moves.
    await api.request("GET", session["id"], "executions", started.json["id"], params={"wait": "60"})
    values = {
        "session_id": session["id"],
        "file_id": result["files"][0]["id"],
        "path": "hello.txt",
        "execution_id": started.json["id"],
    }
    routes = [(method, fill(p, values)) for method, p in extension_routes(jp_serverapp.web_app)]
    return routes, f"http://127.0.0.1:{jp_http_port}"


def test_every_route_is_in_the_matrix(jp_serverapp: Any) -> None:
    routes = extension_routes(jp_serverapp.web_app)
    assert len(routes) == 16
    assert {method for method, _ in routes} == {"GET", "POST", "PUT", "DELETE"}


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "token wrong"}, {"Authorization": "Bearer nope"}]
)
async def test_no_or_wrong_token_is_refused_everywhere(
    api: Api, jp_serverapp: Any, jp_http_port: int, headers: dict[str, str]
) -> None:
    routes, base = await make_targets(api, jp_serverapp, jp_http_port)
    for method, path in routes:
        assert await fetch(base + path, method, headers) == 403, (method, path)


async def test_the_right_token_opens_every_route(
    api: Api, jp_serverapp: Any, jp_http_port: int
) -> None:
    routes, base = await make_targets(api, jp_serverapp, jp_http_port)
    token = jp_serverapp.identity_provider.token
    # Deleting last, and the session (the shortest path) at the very end, so the other
    # routes still find the session and its file.
    def deletes_last(route: tuple[str, str]) -> tuple[bool, int]:
        method, path = route
        return method == "DELETE", -len(path) if method == "DELETE" else 0

    for method, path in sorted(routes, key=deletes_last):
        status = await fetch(base + path, method, {"Authorization": f"token {token}"})
        assert status in (200, 201, 204), (method, path, status)


@pytest.mark.parametrize(
    ("refused", "allowed_methods"),
    [({"read", "write", "execute"}, set()), ({"write", "execute"}, {"GET"})],
    ids=["refuses-kernels", "allows-only-reads"],
)
async def test_the_servers_authorizer_decides_every_route(
    api: Api,
    jp_serverapp: Any,
    jp_http_port: int,
    refused: set[str],
    allowed_methods: set[str],
) -> None:
    routes, base = await make_targets(api, jp_serverapp, jp_http_port)
    assert isinstance(jp_serverapp.authorizer, PolicyAuthorizer)
    jp_serverapp.authorizer.refused = frozenset(refused)
    headers = {"Authorization": f"token {jp_serverapp.identity_provider.token}"}
    for method, path in routes:
        expected = 200 if method in allowed_methods else 403
        assert await fetch(base + path, method, headers) == expected, (method, path)
    # A refused call changed nothing: the session is still there and ran nothing more.
    jp_serverapp.authorizer.refused = frozenset()
    [session] = (await api.request("GET")).json
    assert session["execution_count"] == 2  # the call and the background call of make_targets


async def test_a_cookie_without_xsrf_cannot_write(
    api: Api, jp_serverapp: Any, jp_http_port: int
) -> None:
    routes, base = await make_targets(api, jp_serverapp, jp_http_port)
    token = jp_serverapp.identity_provider.token
    # Logging in with the token in the URL gives the browser its cookies, as JupyterLab gets.
    login = HTTPRequest(
        f"{base}{jp_serverapp.base_url}?token={quote(token)}", follow_redirects=False
    )
    try:
        response = await AsyncHTTPClient().fetch(login)
        cookie_headers = response.headers.get_list("Set-Cookie")
    except HTTPClientError as e:
        assert e.response is not None
        cookie_headers = e.response.headers.get_list("Set-Cookie")
    cookies = {c.split("=", 1)[0]: c.split(";", 1)[0].split("=", 1)[1] for c in cookie_headers}
    login_cookie = "; ".join(f"{k}={v}" for k, v in cookies.items() if k != "_xsrf")
    assert login_cookie, cookie_headers
    for method, path in routes:
        status = await fetch(base + path, method, {"Cookie": login_cookie})
        if method == "GET":
            assert status == 200, (method, path, status)
        else:
            assert status == 403, (method, path, status)
    # With the XSRF token, the same cookie may write.
    xsrf = cookies["_xsrf"]
    [(method, path)] = [(m, p) for m, p in routes if p.endswith("/execute")]
    headers = {"Cookie": f"{login_cookie}; _xsrf={xsrf}", "X-XSRFToken": xsrf}
    assert await fetch(base + path, method, headers) == 200


async def test_the_mcp_endpoint_needs_the_token_and_passes_the_authorizer(
    api: Api, jp_serverapp: Any, jp_http_port: int
) -> None:
    """``agent-sessions/mcp`` (under the server's base_url) like every route: 403 without
    the token or when the authorizer refuses ``execute`` on kernels, else the SDK answers."""
    url = f"http://127.0.0.1:{jp_http_port}{jp_serverapp.base_url}agent-sessions/mcp"
    initialize = (
        '{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": '
        '"2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}}'
    )
    token = jp_serverapp.identity_provider.token
    assert (await api.request("GET")).status == 200  # the server listens

    async def post(headers: dict[str, str]) -> Any:
        request = HTTPRequest(
            url, method="POST", body=initialize, request_timeout=60, headers={
                "Accept": "application/json, text/event-stream",
                "Content-Type": "application/json",
                **headers,
            },
        )  # fmt: skip
        try:
            return await AsyncHTTPClient().fetch(request)
        except HTTPClientError as e:
            assert e.response is not None, e
            return e.response

    for headers in ({}, {"Authorization": "token wrong"}):
        assert (await post(headers)).code == 403
    assert isinstance(jp_serverapp.authorizer, PolicyAuthorizer)
    jp_serverapp.authorizer.refused = frozenset({"execute"})
    assert (await post({"Authorization": f"token {token}"})).code == 403
    jp_serverapp.authorizer.refused = frozenset()
    answer = await post({"Authorization": f"token {token}"})
    assert answer.code == 200
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    assert b'"serverInfo"' in answer.body
