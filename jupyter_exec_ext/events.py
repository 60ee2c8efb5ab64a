"""Server events of agent sessions, sent through jupyter_server's event bus.

Any UI or audit log can follow agents on ``/api/events/subscribe``: sessions created and
deleted, calls started and finished. Payloads stay small (no code, no outputs), since every
subscriber receives every event.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

#: The id of the schema of the events of agent sessions.
SCHEMA_ID = "https://events.jupyter.org/jupyter_exec/agent_session/v1"
SCHEMA_PATH = Path(__file__).parent / "event_schemas" / "agent_session.yaml"


class AgentSessionEvents:
    """Emits the events of agent sessions on a server's event logger."""

    def __init__(self, event_logger: Any, log: logging.Logger) -> None:
        """Register the schema with ``event_logger`` (a jupyter_events EventLogger)."""
        self.event_logger = event_logger
        self.log = log
        event_logger.register_event_schema(SCHEMA_PATH)

    @classmethod
    def for_server(cls, serverapp: Any, log: logging.Logger) -> AgentSessionEvents | None:
        """The events of ``serverapp``, or None when it has no event logger that takes them
        (Kernel Gateway; a jupyter_events too old for the schema)."""
        event_logger = getattr(serverapp, "event_logger", None)
        if event_logger is None:
            return None
        try:
            return cls(event_logger, log)
        except Exception:
            log.warning("Agent session events are off: the schema did not register", exc_info=True)
            return None

    def session(self, action: str, model: dict[str, Any]) -> None:
        """A session was created or deleted; ``model`` is its model."""
        self._emit(
            {
                "action": action,
                "session_id": model["id"],
                "name": model["name"],
                "kernel_id": model["kernel_id"],
                "transcript_path": model.get("transcript_path"),
            }
        )

    def execution_started(self, session_id: str) -> None:
        """A call of the session started running."""
        self._emit({"action": "execution_started", "session_id": session_id})

    def execution_finished(self, session_id: str, result: dict[str, Any], duration: float) -> None:
        """A call of the session ended with ``result`` after ``duration`` seconds."""
        outputs = result.get("outputs") or []
        self._emit(
            {
                "action": "execution_finished",
                "session_id": session_id,
                "status": result["status"],
                "duration": round(duration, 6),
                "execution_count": result.get("execution_count"),
                "output_count": len(outputs),
                "file_count": sum(len(item.get("files") or []) for item in outputs),
            }
        )

    def _emit(self, data: dict[str, Any]) -> None:
        # An event that cannot be sent must never fail the call or the session it reports.
        try:
            self.event_logger.emit(schema_id=SCHEMA_ID, data=data)
        except Exception:
            self.log.warning("Could not emit the agent session event %s", data, exc_info=True)
