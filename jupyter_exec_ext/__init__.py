"""Agent sessions for Jupyter: isolated, stateful kernels driven over a small REST API."""

from __future__ import annotations

from typing import Any

from ._version import __version__


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Tell jupyter_server where the extension app lives."""
    from .app import AgentSessionsApp

    return [{"module": "jupyter_exec_ext", "app": AgentSessionsApp}]


__all__ = ["__version__"]
