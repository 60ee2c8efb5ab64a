"""The standard kernels REST API of any Jupyter server, without I/O (flows, as in ``_api``).

Servers without the agent-session API (a plain ``jupyter server``, Jupyter Kernel Gateway)
still start, interrupt, restart and shut down kernels through ``api/kernels``; code then
runs over the kernel's websocket (see :mod:`jupyter_exec_client._kernel_protocol`).
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import quote

from ._api import (
    DEFAULT_READ_TIMEOUT,
    KERNEL_START_READ_TIMEOUT,
    Flow,
    JupyterRestAPI,
    Request,
    _json_object,
)
from .errors import APIError, SessionNotFoundError, UnknownKernelError

KERNELS_PATH = "api/kernels"
KERNELSPECS_PATH = "api/kernelspecs"


class KernelNotFoundError(SessionNotFoundError):
    """The kernel is gone from the server (shut down, culled, or the server restarted).

    On a server without the agent-session API the kernel is the session: catching
    SessionNotFoundError catches this too.
    """


class KernelsAPI(JupyterRestAPI):
    """The calls of the kernels API on one server, as flows."""

    def start_kernel(
        self, kernel_name: str, env: dict[str, str] | None = None
    ) -> Flow[dict[str, Any]]:
        """Start a kernel of ``kernel_name``; return its model (``id``, ``execution_state``).

        ``env`` is sent along: Kernel Gateway gives the kernel the ``KERNEL_*`` variables of
        it (and those of its ``env_whitelist``); jupyter_server 2 ignores it.
        """
        body: dict[str, Any] = {"name": kernel_name}
        if env:
            body["env"] = env
        request = Request("POST", KERNELS_PATH, body, read_timeout=KERNEL_START_READ_TIMEOUT)
        response = yield request
        if response.status >= 400 and response.status not in (401, 403):
            # Servers answer an unknown name with a bare 500 (jupyter_server, Kernel Gateway):
            # their kernel specs tell whether the name was the problem.
            available: list[str] | None = None
            with contextlib.suppress(APIError):
                available = yield from self.kernel_spec_names()
            if available is not None and kernel_name not in available:
                raise UnknownKernelError(
                    kernel_name,
                    available,
                    method=request.method,
                    url=self.connection_info.url(request.path),
                )
        return _json_object((yield from self._checked(request, response)))

    def get_kernel(self, kernel_id: str) -> Flow[dict[str, Any] | None]:
        """The model of a kernel; None when the server no longer has it."""
        try:
            return _json_object((yield from self._call("GET", kernel_id)))
        except KernelNotFoundError:
            return None

    def list_kernel_ids(self) -> Flow[list[str]]:
        """The ids of the server's running kernels."""
        request = Request("GET", KERNELS_PATH)
        answer = yield from self._checked(request, (yield request))
        if not isinstance(answer, list):
            raise self._malformed(request, answer)
        return [str(kernel["id"]) for kernel in answer if isinstance(kernel, dict)]

    def delete_kernel(self, kernel_id: str) -> Flow[None]:
        """Shut a kernel down."""
        yield from self._call("DELETE", kernel_id, read_timeout=KERNEL_START_READ_TIMEOUT)

    def interrupt_kernel(self, kernel_id: str) -> Flow[None]:
        """Interrupt the code a kernel is running."""
        yield from self._call("POST", kernel_id, "interrupt")

    def restart_kernel(self, kernel_id: str) -> Flow[dict[str, Any]]:
        """Restart a kernel (a fresh process, the same id); return its model."""
        answer = yield from self._call(
            "POST", kernel_id, "restart", read_timeout=KERNEL_START_READ_TIMEOUT
        )
        return _json_object(answer)

    def kernel_spec_names(self) -> Flow[list[str]]:
        """The names of the kernels the server can start, sorted."""
        request = Request("GET", KERNELSPECS_PATH)
        answer = yield from self._checked(request, (yield request))
        specs = answer.get("kernelspecs") if isinstance(answer, dict) else None
        if not isinstance(specs, dict):
            raise self._malformed(request, answer)
        return sorted(map(str, specs))

    @staticmethod
    def channels_path(kernel_id: str, client_session: str) -> str:
        """The path of the kernel's websocket, for the client session ``client_session``."""
        return f"{_kernel_path(kernel_id, 'channels')}?session_id={quote(client_session)}"

    def _call(
        self,
        method: str,
        kernel_id: str,
        *action: str,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> Flow[Any]:
        request = Request(method, _kernel_path(kernel_id, *action), read_timeout=read_timeout)
        return (yield from self._checked(request, (yield request)))

    def _not_found(self, request: Request, message: str) -> Flow[None]:
        """A 404 on a kernel's URL means the kernel is gone."""
        if request.path.startswith(KERNELS_PATH + "/"):
            raise KernelNotFoundError(
                404, message, method=request.method, url=self.connection_info.url(request.path)
            )
        yield from ()


def _kernel_path(kernel_id: str, *action: str) -> str:
    return "/".join([KERNELS_PATH, quote(kernel_id, safe=""), *action])
