"""Server events of agent sessions, read the way a UI reads them: /api/events/subscribe."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from jupyter_events.schema import EventSchema

from jupyter_exec_ext.events import SCHEMA_ID, SCHEMA_PATH

from .conftest import Api


async def _next_event(websocket: Any) -> dict[str, Any]:
    """The next agent-session event (other schemas' events are skipped)."""
    while True:
        message = await asyncio.wait_for(websocket.read_message(), 30)
        assert message is not None, "the events websocket closed"
        event = json.loads(message)
        if event.get("schema_id") == SCHEMA_ID:
            return event


@pytest.mark.timeout(120)
async def test_sessions_and_calls_arrive_on_the_event_bus(api: Api, jp_ws_fetch: Any) -> None:
    websocket = await jp_ws_fetch("api", "events", "subscribe")
    session = await api.create(name="watched")
    created = await _next_event(websocket)
    assert created["action"] == "session_created"
    assert created["session_id"] == session["id"]
    assert created["name"] == "watched"
    assert created["kernel_id"] == session["kernel_id"]

    await api.execute(session["id"], "print('hi')\n1 / 0")
    started = await _next_event(websocket)
    finished = await _next_event(websocket)
    assert (started["action"], started["session_id"]) == ("execution_started", session["id"])
    assert finished["action"] == "execution_finished"
    assert finished["session_id"] == session["id"]
    assert finished["status"] == "error"
    assert finished["execution_count"] == 1
    assert finished["output_count"] == 2  # the printed line and the error
    assert finished["file_count"] == 0
    assert 0 < finished["duration"] < 30
    # Small on purpose: neither code nor outputs travel to every subscriber.
    assert "code" not in finished
    assert "outputs" not in finished

    # A streamed call is reported the same way (one place emits for every path).
    reply = await api.request(
        "POST",
        session["id"],
        "execute",
        body={
            "code": "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()",
            "stream": True,
        },
    )
    assert reply.status == 200, reply.body
    assert (await _next_event(websocket))["action"] == "execution_started"
    plotted = await _next_event(websocket)
    assert (plotted["status"], plotted["file_count"]) == ("ok", 1)

    reply = await api.request("DELETE", session["id"])
    assert reply.status == 204
    deleted = await _next_event(websocket)
    assert (deleted["action"], deleted["session_id"]) == ("session_deleted", session["id"])
    websocket.close()


def test_the_schema_ships_in_the_package() -> None:
    schema = EventSchema(SCHEMA_PATH)
    assert schema.id == SCHEMA_ID
    schema.validate({"action": "execution_started", "session_id": "x"})
