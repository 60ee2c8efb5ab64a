"""Streamed and background executions, through a real server and real kernels."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import time
from typing import Any

import pytest

from jupyter_exec_ext.executions import EventLog

from .conftest import TEST_DEFAULT_TIMEOUT, Api

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def registry_config() -> dict[str, Any]:
    """Overrides of ExecutionRegistry's config for one test."""
    return {"heartbeat_interval": 0.5}


@pytest.fixture
def jp_server_config(agent_config: dict[str, Any], registry_config: dict[str, Any]) -> Any:
    """The extension as conftest enables it, with the registry's settings of the test."""
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_exec_ext": True}},
        "AgentSessionManager": {
            "default_timeout": TEST_DEFAULT_TIMEOUT,
            "kernel_pool": {},
            **agent_config,
        },
        "ExecutionRegistry": registry_config,
    }


class Stream:
    """The lines of an ndjson answer, each with the moment it arrived."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        now = time.time()
        self._partial += chunk
        *complete, self._partial = self._partial.split(b"\n")
        self.lines.extend((now, json.loads(line)) for line in complete if line)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for _, event in self.lines]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] not in ("heartbeat", "done")]

    @property
    def done(self) -> dict[str, Any]:
        last = self.events[-1]
        assert last["type"] == "done", self.events
        result: dict[str, Any] = last["result"]
        return result


async def stream(
    api: Api, *parts: str, body: Any = None, method: str = "POST", after: int | None = None
) -> Stream:
    """Send a request whose answer is a stream of events; return the events."""
    received = Stream()
    params = None if after is None else {"after": str(after)}
    reply = await api.request(
        method, *parts, body=body, params=params, streaming_callback=received.feed
    )
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"] == "application/x-ndjson"
    return received


async def streamed(api: Api, session_id: str, code: str, **fields: Any) -> Stream:
    return await stream(
        api, session_id, "execute", body={"code": code, "stream": True, **fields}
    )


async def background(api: Api, session_id: str, code: str, **fields: Any) -> dict[str, Any]:
    reply = await api.request(
        "POST", session_id, "execute", body={"code": code, "background": True, **fields}
    )
    assert reply.status == 202, reply.body
    model: dict[str, Any] = reply.json
    assert reply.headers["Location"].endswith(
        f"/api/agent-sessions/{session_id}/executions/{model['id']}"
    )
    return model


async def finished(api: Api, session_id: str, execution_id: str) -> dict[str, Any]:
    """The model of an execution once it ended."""
    for _ in range(60):
        reply = await api.request(
            "GET", session_id, "executions", execution_id, params={"wait": "5"}
        )
        assert reply.status == 200, reply.body
        if reply.json["finished"]:
            model: dict[str, Any] = reply.json
            return model
    raise AssertionError("the execution never ended")


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    """A result with what differs between two runs of the same code (file ids, execution
    counts) replaced by placeholders."""
    outputs = [
        {**item, "execution_count": None} if "execution_count" in item else item
        for item in result["outputs"]
    ]
    text = json.dumps({**result, "execution_count": None, "outputs": outputs})
    for file in result["files"]:
        text = text.replace(file["id"], "<file>")
    return dict(json.loads(re.sub(r"Out ?\[\d+\]|In ?\[\d+\]", "<n>", text)))


# -- streaming ---------------------------------------------------------------------------------


async def test_streamed_output_arrives_while_the_code_runs(api: Api) -> None:
    session = await api.create()
    code = (
        "import time\nprint('first', flush=True)\ntime.sleep(1.5)\n"
        "print('second at', time.time())"
    )
    received = await streamed(api, session["id"], code)
    first_arrived = next(t for t, e in received.lines if e.get("text") == "first\n")
    [second] = [e for e in received.outputs if "second" in e["text"]]
    second_printed = float(second["text"].split()[-1])
    assert first_arrived < second_printed  # it came while the code still ran
    assert [e["seq"] for e in received.outputs] == list(range(1, len(received.outputs) + 1))
    assert received.done["status"] == "ok"
    assert received.done["output"].startswith("first\nsecond at")


@pytest.mark.parametrize(
    "code",
    [
        "print('a')\nimport sys\nprint('b', file=sys.stderr)\n6 * 7",
        "print('before')\n1 / 0",
        "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()",
        "from IPython.display import HTML, Markdown, display\ndisplay(HTML('<b>x</b>'))\n"
        "display(Markdown('# hi'))",
        "for i in range(3000):\n    print(i, 'x' * 40)",
    ],
    ids=["text", "error", "image", "displays", "truncation"],
)
@pytest.mark.parametrize("agent_config", [{"max_output_chars": 2000}])
async def test_the_done_result_is_the_unstreamed_result(api: Api, code: str) -> None:
    session = await api.create()
    blocking = await api.execute(session["id"], code)
    received = await streamed(api, session["id"], code)
    assert comparable(received.done) == comparable(blocking)
    # The events are the outputs: what was printed, every display, the error.
    printed = "".join(
        e["text"] for e in received.outputs if e["type"] == "stream" and e["name"] == "stdout"
    )
    if not blocking["truncated"]:
        assert printed == "".join(
            i["text"] for i in blocking["outputs"] if i.get("name") == "stdout"
        )
        assert [e["type"] for e in received.outputs if e["type"] != "stream"] == [
            i["type"] for i in blocking["outputs"] if i["type"] != "stream"
        ]
    else:
        # A live reader sees every line, cut or not, as it is printed.
        assert printed.count("\n") == 3000
    displays = [e for e in received.outputs if e["type"] == "display"]
    result_files = {file["id"] for file in received.done["files"]}
    assert {f for e in displays for f in e["files"]} <= result_files


async def test_heartbeats_keep_a_quiet_stream_alive(api: Api) -> None:
    session = await api.create()
    received = await streamed(api, session["id"], "import time\ntime.sleep(2.2)\nprint('end')")
    types = [e["type"] for e in received.events]
    assert types.count("heartbeat") >= 2  # one each 0.5 s of quiet
    assert types[-2:] == ["stream", "done"]
    assert all("seq" not in e for e in received.events if e["type"] == "heartbeat")


@pytest.mark.slow
@pytest.mark.parametrize("registry_config", [{}])
async def test_a_16_s_quiet_call_gets_a_heartbeat_by_default(api: Api) -> None:
    session = await api.create()
    received = await streamed(
        api, session["id"], "import time\ntime.sleep(16.5)\nprint('end')", timeout=30
    )
    beats = [t for t, e in received.lines if e["type"] == "heartbeat"]
    assert len(beats) == 1
    assert received.done["output"] == "end\n"


async def test_a_streamed_call_whose_client_goes_away_is_interrupted(
    api: Api, jp_serverapp: Any, jp_http_port: int, jp_base_url: str
) -> None:
    session = await api.create()
    await api.execute(session["id"], "kept = 'yes'")
    token = jp_serverapp.identity_provider.token
    body = json.dumps(
        {"code": "import time\nprint('going', flush=True)\ntime.sleep(50)\nnever = 1",
         "stream": True, "timeout": 60}
    ).encode()
    path = f"{jp_base_url}api/agent-sessions/{session['id']}/execute"
    with socket.create_connection(("127.0.0.1", jp_http_port), timeout=30) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{jp_http_port}\r\n"
            f"Authorization: token {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        answer = b""
        while b"going" not in answer:
            chunk = await asyncio.get_running_loop().run_in_executor(None, sock.recv, 4096)
            assert chunk, answer
            answer += chunk
    # The socket is closed: the call is interrupted, its state kept, the session usable.
    started = time.monotonic()
    result = await api.execute(session["id"], "print(kept, 'never' in dir())")
    assert time.monotonic() - started < 10
    assert result["output"] == "yes False\n"


# -- background executions ---------------------------------------------------------------------


async def test_a_background_run_is_read_back_whole(api: Api) -> None:
    session = await api.create()
    code = "import time\nfor i in range(5):\n    print('step', i, flush=True)\n    time.sleep(0.2)"
    model = await background(api, session["id"], code)
    assert model["status"] in ("queued", "running")
    assert model["session_id"] == session["id"]
    assert model["finished"] is None
    assert "result" not in model
    # The request that started it is long over; the run goes on and is read back.
    done = await finished(api, session["id"], model["id"])
    assert done["status"] == "ok"
    assert done["result"]["output"] == "".join(f"step {i}\n" for i in range(5))
    assert done["started"] >= done["created"]
    assert done["finished"] >= done["started"]
    replay = await stream(api, session["id"], "executions", model["id"], "events", method="GET")
    assert "".join(e["text"] for e in replay.outputs) == done["result"]["output"]
    assert replay.done == done["result"]
    listed = (await api.request("GET", session["id"], "executions")).json
    assert [e["id"] for e in listed] == [model["id"]]
    assert "result" not in listed[0]


async def test_events_after_n_replay_exactly_what_was_missed(api: Api) -> None:
    session = await api.create()
    code = "import time\nfor i in range(8):\n    print(i, flush=True)\n    time.sleep(0.05)\n1 / 0"
    model = await background(api, session["id"], code)
    # Followed live from the start...
    whole = await stream(api, session["id"], "executions", model["id"], "events", method="GET")
    outputs = whole.outputs
    assert outputs[-1]["type"] == "error"
    # ... and resumed from every point afterwards.
    for seen in range(len(outputs) + 1):
        after = outputs[seen - 1]["seq"] if seen else 0
        resumed = await stream(
            api, session["id"], "executions", model["id"], "events", method="GET", after=after
        )
        assert resumed.outputs == outputs[seen:]
        assert resumed.done == whole.done


async def test_calls_run_in_arrival_order_whatever_their_mode(api: Api) -> None:
    session = await api.create()
    first = await background(api, session["id"], "import time\ntime.sleep(0.5)\norder = ['bg']")
    blocking = asyncio.ensure_future(api.execute(session["id"], "order.append('blocking')"))
    await asyncio.sleep(0.1)
    second = await background(api, session["id"], "order.append('bg2')\nprint(order)")
    assert (await blocking)["status"] == "ok"
    assert (await finished(api, session["id"], first["id"]))["status"] == "ok"
    last = await finished(api, session["id"], second["id"])
    assert last["result"]["output"] == "['bg', 'blocking', 'bg2']\n"


async def test_interrupting_the_session_interrupts_a_background_run(api: Api) -> None:
    session = await api.create()
    model = await background(
        api, session["id"], "import time\nprint('on', flush=True)\ntime.sleep(60)"
    )
    queued = await background(api, session["id"], "print('queued ran')")
    stopped = await background(api, session["id"], "print('never')")
    await wait_for_output(api, session["id"], model["id"])
    reply = await api.request("POST", session["id"], "executions", stopped["id"], "interrupt")
    assert reply.status == 204
    assert (await api.request("POST", session["id"], "interrupt")).status == 204
    done = await finished(api, session["id"], model["id"])
    assert done["status"] == "error"
    assert done["result"]["error"]["ename"] == "KeyboardInterrupt"
    assert (await finished(api, session["id"], queued["id"]))["result"]["output"] == (
        "queued ran\n"
    )
    never = await finished(api, session["id"], stopped["id"])
    assert never["status"] == "error"
    assert never["started"] is None
    assert "cancelled before it started" in never["result"]["output"]


async def wait_for_output(api: Api, session_id: str, execution_id: str) -> None:
    """Wait until the execution emitted its first event."""
    for _ in range(200):
        model = (await api.request("GET", session_id, "executions", execution_id)).json
        if model["last_seq"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no output came")


async def test_a_background_run_times_out(api: Api) -> None:
    session = await api.create()
    model = await background(
        api, session["id"], "import time\nprint('slow', flush=True)\ntime.sleep(30)", timeout=1
    )
    done = await finished(api, session["id"], model["id"])
    assert done["status"] == "timeout"
    assert done["result"]["output"].startswith("slow\n")
    assert "timeout of 1 s" in done["result"]["output"]


@pytest.mark.slow
async def test_a_kernel_death_inside_a_background_run(api: Api, jp_serverapp: Any) -> None:
    session = await api.create()
    model = await background(
        api, session["id"], "import time\nprint('alive', flush=True)\ntime.sleep(60)"
    )
    await wait_for_output(api, session["id"], model["id"])
    kernel = jp_serverapp.kernel_manager.get_kernel(session["kernel_id"])
    os.kill(kernel.provisioner.pid, signal.SIGKILL)
    done = await finished(api, session["id"], model["id"])
    assert done["status"] == "dead"
    assert done["result"]["output"].startswith("alive\n")
    assert (await api.execute(session["id"], "print('again')"))["output"] == "again\n"


@pytest.mark.parametrize(
    "registry_config", [{"max_finished_executions": 2, "heartbeat_interval": 0.5}]
)
async def test_finished_executions_are_kept_within_their_count(api: Api) -> None:
    session = await api.create()
    models = [await background(api, session["id"], f"print({n})") for n in range(4)]
    await finished(api, session["id"], models[-1]["id"])  # they run in order
    listed = [e["id"] for e in (await api.request("GET", session["id"], "executions")).json]
    assert listed == [models[2]["id"], models[3]["id"]]
    gone = await api.request("GET", session["id"], "executions", models[0]["id"])
    assert gone.status == 404
    assert models[0]["id"] in gone.json["message"]


@pytest.mark.parametrize(
    "registry_config", [{"finished_execution_ttl": 0.5, "heartbeat_interval": 0.5}]
)
async def test_finished_executions_are_kept_for_their_time(api: Api) -> None:
    session = await api.create()
    model = await background(api, session["id"], "print(1)")
    await finished(api, session["id"], model["id"])
    for _ in range(100):
        if (await api.request("GET", session["id"], "executions", model["id"])).status == 404:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the finished execution was never forgotten")
    assert (await api.request("GET", session["id"], "executions")).json == []


async def test_deleting_the_session_ends_its_background_runs(api: Api) -> None:
    session = await api.create()
    await background(api, session["id"], "import time\ntime.sleep(60)")
    await background(api, session["id"], "print('queued')")
    assert (await api.request("DELETE", session["id"])).status == 204
    assert (await api.request("GET", session["id"], "executions")).status == 404


# -- bad input ---------------------------------------------------------------------------------


async def test_bad_input_on_the_new_routes(api: Api) -> None:
    session = await api.create()
    sid = session["id"]
    model = await background(api, sid, "print(1)")
    eid = model["id"]
    cases: list[tuple[str, tuple[str, ...], Any, int, str]] = [
        ("POST", (sid, "execute"), {"code": "1", "stream": "yes"}, 400, "stream"),
        ("POST", (sid, "execute"), {"code": "1", "background": 1}, 400, "background"),
        ("POST", (sid, "execute"), {"code": "1", "stream": True, "background": True}, 400,
         "cannot both"),
        ("POST", (sid, "execute"), {"code": "1", "stream": True, "timeout": -1}, 400, "timeout"),
        ("POST", ("nope", "execute"), {"code": "1", "stream": True}, 404, "nope"),
        ("POST", ("nope", "execute"), {"code": "1", "background": True}, 404, "nope"),
        ("GET", ("nope", "executions"), None, 404, "nope"),
        ("GET", (sid, "executions", "unknown-id"), None, 404, "unknown-id"),
        ("GET", ("nope", "executions", eid), None, 404, "nope"),
        ("GET", (sid, "executions", "unknown-id", "events"), None, 404, "unknown-id"),
        ("POST", (sid, "executions", "unknown-id", "interrupt"), None, 404, "unknown-id"),
        ("GET", (sid, "executions", eid, "?wait=soon"), None, 400, "wait"),
        ("GET", (sid, "executions", eid, "?wait=-1"), None, 400, "wait"),
        ("GET", (sid, "executions", eid, "?wait=nan"), None, 400, "wait"),
        ("GET", (sid, "executions", eid, "events", "?after=-1"), None, 400, "after"),
        ("GET", (sid, "executions", eid, "events", "?after=1.5"), None, 400, "after"),
        ("DELETE", (sid, "executions", eid), None, 405, ""),
        ("POST", (sid, "executions"), None, 405, ""),
    ]
    for method, path, body, status, words in cases:
        *parts, last = path
        params = None
        if last.startswith("?"):
            name, value = last[1:].split("=")
            params = {name: value}
        else:
            parts.append(last)
        reply = await api.request(method, *parts, body=body, params=params)
        assert reply.status == status, (method, path, body, reply.body)
        assert words in reply.json["message"], (path, reply.json)
    # Nothing was lost: the execution is still there, the session still works.
    assert (await finished(api, sid, eid))["result"]["output"] == "1\n"
    assert (await api.execute(sid, "print(2)"))["output"] == "2\n"


@pytest.mark.parametrize("agent_config", [{"max_output_chars": 2000}])
async def test_texts_sent_in_pieces_give_bounded_events(api: Api) -> None:
    """A 200,000-character print, result and error reach the server in pieces of 64 KiB:
    the print is streamed piece by piece, the result and the error come as one event each
    once complete, their texts cut to the head and tail of max_output_chars."""
    session = await api.create()
    code = "print('p' * 200_000)\ndisplay('r' * 200_000)\nraise ValueError('e' * 200_000)"
    blocking = await api.execute(session["id"], code)
    received = await streamed(api, session["id"], code)
    assert comparable(received.done) == comparable(blocking)
    printed = [e["text"] for e in received.outputs if e["type"] == "stream"]
    assert "".join(printed) == "p" * 200_000 + "\n"
    assert len(printed) > 1
    assert max(len(text) for text in printed) <= 64 * 1024
    [display] = [e for e in received.outputs if e["type"] == "display"]
    [error] = [e for e in received.outputs if e["type"] == "error"]
    assert display["truncated"] is error["truncated"] is True
    assert display["text"].startswith("'rrr")
    assert display["text"].endswith("rrr'")
    assert "characters cut" in display["text"]
    assert len(display["text"]) < 2100
    assert len(error["evalue"]) < 2100
    assert error["evalue"].startswith("eee")
    assert len("\n".join(error["traceback"])) < 2100
    assert error["ename"] == "ValueError"


async def test_a_large_background_run_keeps_only_head_and_tail_of_its_events(
    api: Api, manager: Any
) -> None:
    session = await api.create()
    code = "for i in range(20000):\n    print(i, 'y' * 90)"
    model = await background(api, session["id"], code)
    done = await finished(api, session["id"], model["id"])
    assert done["result"]["truncated"] is True
    replay = await stream(api, session["id"], "executions", model["id"], "events", method="GET")
    kept = sum(len(e.get("text") or "") for e in replay.outputs)
    assert kept <= manager.max_output_chars
    gaps = [e for e in replay.outputs if e["type"] == "truncated"]
    cut = [e for e in replay.outputs if e.get("truncated")]
    assert gaps or cut  # whole events left out, or the end of one kept
    assert replay.outputs[-1]["text"].endswith("19999 " + "y" * 90 + "\n")
    seqs = [e["seq"] for e in replay.outputs]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    for gap in gaps:
        assert gap["file"] == done["result"]["files"][0]["id"]
        # Resuming inside the gap gives the gap and what follows it.
        resumed = await stream(
            api, session["id"], "executions", model["id"], "events", method="GET",
            after=gap["seq"] - 1,
        )
        assert resumed.outputs == [e for e in replay.outputs if e["seq"] >= gap["seq"]]


# -- the event log, on its own -----------------------------------------------------------------


def _stream_event(seq: int, text: str) -> dict[str, Any]:
    return {"type": "stream", "name": "stdout", "text": text, "seq": seq}


def test_the_event_log_keeps_head_and_tail_and_marks_the_gap() -> None:
    log = EventLog(max_chars=1000)
    for seq in range(1, 101):
        log.append(_stream_event(seq, f"{seq:049d}\n"))  # 150 of the budget each
    events = log.after(0)
    gaps = [e for e in events if e["type"] == "truncated"]
    assert [e["seq"] for e in events] == [1, 2, 3, gaps[0]["seq"], 98, 99, 100]
    assert gaps[0]["seq"] == 97
    assert gaps[0]["omitted_chars"] == 94 * 50  # seq 4 to 97
    assert log.after(2) == events[2:]
    assert log.after(97) == events[-3:]
    assert log.after(100) == []
    log.full_text_file = "the-file"
    assert log.after(50)[0] == {**gaps[0], "file": "the-file"}


def test_a_live_reader_holds_events_back_until_it_falls_too_far_behind() -> None:
    log = EventLog(max_chars=1000)
    reader = log.open_reader(0)
    for seq in range(1, 101):
        log.append(_stream_event(seq, "x" * 49 + "\n"))
    assert [e["seq"] for e in log.after(0)] == list(range(1, 101))  # nothing dropped yet
    log.advance(reader, 50)
    assert [e["seq"] for e in log.after(50)] == list(range(51, 101))
    log.close_reader(reader)
    assert len(log.after(0)) == 7  # trimmed to the budget once nobody reads
    stalled = log.open_reader(100)
    for seq in range(101, 20_101):  # 20,000 x 150 is past the lag limit of a million
        log.append(_stream_event(seq, "y" * 49 + "\n"))
    kept = log.after(100)
    assert kept[0]["type"] == "truncated"
    assert sum(len(e.get("text") or "") for e in kept) < 1_000_000
    del stalled
