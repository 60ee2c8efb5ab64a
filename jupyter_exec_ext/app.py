"""The jupyter_server extension app: builds the session manager and registers the API."""

from __future__ import annotations

from jupyter_server.extension.application import ExtensionApp
from traitlets import Type

from . import mcp_endpoint
from ._version import __version__
from .events import AgentSessionEvents
from .handlers import default_handlers
from .live_transcript import LiveNotebooks
from .manager import AgentSessionManager


class AgentSessionsApp(ExtensionApp):
    """Agent sessions: isolated, stateful kernels that LLM agents drive over REST."""

    name = "jupyter_exec_ext"
    version = __version__
    description = __doc__

    agent_session_manager_class = Type(
        default_value=AgentSessionManager,
        klass=AgentSessionManager,
        config=True,
        help="The class that owns agent sessions; subclass it to change how they are run.",
    )

    def initialize_settings(self) -> None:
        """Build the session manager on the server's kernel manager."""
        assert self.serverapp is not None
        self.agent_session_manager = self.agent_session_manager_class(
            parent=self,
            kernel_manager=self.serverapp.kernel_manager,
            kernel_spec_manager=self.serverapp.kernel_spec_manager,
            root_dir=self.serverapp.root_dir,
            base_url=self.serverapp.base_url,
            contents_manager=self.serverapp.contents_manager,
            session_manager=self.serverapp.session_manager,
        )
        self.agent_session_manager.live_notebooks = LiveNotebooks(
            self.serverapp, parent=self.agent_session_manager
        )
        self.agent_session_manager.events = AgentSessionEvents.for_server(self.serverapp, self.log)
        self.settings.update({"agent_session_manager": self.agent_session_manager})
        # MCP over HTTP, when the [mcp] extra is there (its route is added only then).
        self.mcp_endpoint: mcp_endpoint.McpEndpoint | None = None
        if mcp_endpoint.MISSING is None:
            self.mcp_endpoint = mcp_endpoint.McpEndpoint(self.agent_session_manager, self.log)
            self.settings["agent_sessions_mcp"] = self.mcp_endpoint
        else:
            self.log.info(
                "Agent sessions: no MCP endpoint (agent-sessions/mcp), as %s; install "
                "jupyter-exec-ext[mcp] to serve MCP",
                mcp_endpoint.MISSING,
            )

    def initialize_handlers(self) -> None:
        """Register the API routes (relative: the server adds its base_url)."""
        self.handlers.extend(default_handlers)
        self.handlers.extend(mcp_endpoint.mcp_handlers())

    async def _start_jupyter_server_extension(self, serverapp: object) -> None:
        """Start the manager's background work once the server's loop runs."""
        await self.agent_session_manager.start()
        if self.mcp_endpoint is not None:
            await self.mcp_endpoint.start()

    async def stop_extension(self) -> None:
        """Shut every session's kernel down with the server."""
        if self.mcp_endpoint is not None:
            await self.mcp_endpoint.stop()
        await self.agent_session_manager.shutdown()
