"""The agent-session API inside Jupyter Kernel Gateway, as the gateway's API module.

Kernel Gateway loads no jupyter_server extensions; it loads one API module instead::

    jupyter kernelgateway --KernelGatewayApp.api=jupyter_exec_ext.kernel_gateway \\
        --KernelGatewayApp.auth_token=<token> --JupyterWebsocketPersonality.list_kernels=true

This module is that API: the gateway's own websocket personality (``/api/kernels``,
``/api/kernelspecs``, kernel websockets) plus the agent-session routes, served by the same
handlers and ``AgentSessionManager`` as the server extension, on the gateway's kernel manager.
"""

from __future__ import annotations

from typing import Any

from .requirements import check_requirements

# Before the gateway's modules are imported: a gateway too old (or missing) is refused with
# the versions it needs, and the gateway does not start.
check_requirements("kernel-gateway", what="jupyter_exec_ext.kernel_gateway")

from jupyter_server.utils import url_path_join  # noqa: E402
from kernel_gateway.jupyter_websocket import JupyterWebsocketPersonality  # noqa: E402
from kernel_gateway.mixins import CORSMixin, TokenAuthorizationMixin  # noqa: E402
from traitlets import Type  # noqa: E402

from .handlers import AgentSessionsAPIHandler, default_handlers  # noqa: E402
from .manager import AgentSessionManager  # noqa: E402


class GatewayHandlerMixin(TokenAuthorizationMixin, CORSMixin):  # type: ignore[misc]
    """Put the gateway's token check and CORS headers in front of an agent-session handler.

    The gateway's ``JSONErrorsMixin`` is left out on purpose: the handlers already answer
    errors as JSON, in the shape ``rest-api.yml`` documents (a ``message`` that names the
    problem), so a client reads the same errors from a gateway as from ``jupyter server``.
    """

    @property
    def agent_session_manager(self) -> AgentSessionManager:
        """The manager that owns the sessions, held by the gateway's personality."""
        # The gateway builds its web app's settings itself, so the manager cannot be put
        # there; the personality, which it does put there, holds it instead.
        personality: AgentSessionsPersonality = self.settings["kg_personality"]
        return personality.agent_session_manager


def gateway_handler(handler: type[AgentSessionsAPIHandler]) -> type[AgentSessionsAPIHandler]:
    """A subclass of ``handler`` guarded by the gateway's token, with its CORS headers."""
    gateway_class: type[AgentSessionsAPIHandler] = type(
        handler.__name__,
        (GatewayHandlerMixin, handler),
        {"__module__": __name__, "__doc__": f"{handler.__doc__} (under Kernel Gateway)"},
    )
    return gateway_class


#: The agent-session routes (relative to the gateway's base_url) and their gateway handlers.
gateway_handlers: list[tuple[str, type[AgentSessionsAPIHandler]]] = [
    (pattern, gateway_handler(handler)) for pattern, handler in default_handlers
]


class AgentSessionsPersonality(JupyterWebsocketPersonality):  # type: ignore[misc]
    """The gateway's websocket personality with the agent-session API added."""

    agent_session_manager_class = Type(
        default_value=AgentSessionManager,
        klass=AgentSessionManager,
        config=True,
        help="The class that owns agent sessions; subclass it to change how they are run.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Build the session manager on the gateway's kernel manager.

        The gateway creates its personality once its kernel and kernel spec managers exist.
        """
        super().__init__(*args, **kwargs)
        gateway = self.parent
        self.agent_session_manager: AgentSessionManager = self.agent_session_manager_class(
            # The gateway's config (command line, jupyter_kernel_gateway_config.py) is where
            # an operator sets the manager's traits, so the gateway is its parent.
            parent=gateway,
            kernel_manager=gateway.kernel_manager,
            kernel_spec_manager=gateway.kernel_spec_manager,
            # The gateway has no contents root; its kernels start in the kernel manager's
            # root_dir (the gateway's working directory), so sessions work under it too.
            root_dir=gateway.kernel_manager.root_dir,
            # The gateway takes its base_url as given ("kg", "/kg"); the manager builds file
            # URLs on it, which must be absolute paths.
            base_url=url_path_join("/", gateway.base_url, "/"),
            # No contents or session manager: the gateway has neither, so no transcripts.
        )

    async def init_configurables(self) -> None:
        """Start the gateway's kernel pool, then the manager's (the gateway's loop runs)."""
        await super().init_configurables()
        await self.agent_session_manager.start()

    def create_request_handlers(self) -> list[tuple[Any, ...]]:
        """The agent-session routes under the gateway's base_url, then the personality's.

        Ours come first: the personality's list ends with a catch-all 404 route.
        """
        agent_routes: list[tuple[Any, ...]] = [
            (url_path_join("/", self.parent.base_url, pattern), handler)
            for pattern, handler in gateway_handlers
        ]
        personality_routes: list[tuple[Any, ...]] = super().create_request_handlers()
        return agent_routes + personality_routes

    async def shutdown(self) -> None:
        """Shut every agent session's kernel down, then let the personality stop the rest."""
        # Sessions first: they close their kernel connections and pool cleanly, where the
        # personality's shutdown then stops whatever kernels remain without ceremony.
        try:
            await self.agent_session_manager.shutdown()
        finally:
            await super().shutdown()


def create_personality(*args: Any, **kwargs: Any) -> AgentSessionsPersonality:
    """Kernel Gateway's entry point into an API module."""
    return AgentSessionsPersonality(*args, **kwargs)
