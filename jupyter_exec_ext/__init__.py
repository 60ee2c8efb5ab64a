"""Agent sessions for Jupyter: isolated, stateful kernels driven over a small REST API."""

from __future__ import annotations

from typing import Any

from ._version import __version__


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Tell jupyter_server where the extension app lives, once its dependencies are met.

    An unmet one raises here: jupyter_server then logs the reason and leaves the extension
    out, none of its routes registered, where a dependency too old would fail later, inside
    every call.
    """
    from .requirements import check_requirements  # noqa: PLC0415 - only when jupyter_server asks

    check_requirements()
    from .app import AgentSessionsApp  # noqa: PLC0415

    return [{"module": "jupyter_exec_ext", "app": AgentSessionsApp}]


__all__ = ["__version__"]
