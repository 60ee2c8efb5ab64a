"""Every output reaches the agent: text-like MIME types as text, other types as files, odd text.

Real kernels through the real API; the transcript read back from disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jupyter_exec_ext.spec import validation_error

from .conftest import Api
from .test_transcripts import read_transcript

pytestmark = pytest.mark.timeout(180)

GIF_MAGIC = b"GIF8"
PDF_MAGIC = b"%PDF"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: Code that makes PIL write one image in ``fmt`` and displays it as its raw MIME bundle.
RAW_IMAGE = (
    "import base64, io\nfrom PIL import Image\nfrom IPython.display import display\n"
    "b = io.BytesIO(); Image.new('RGB', (8, 8), 'red').save(b, {fmt!r})\n"
    "display({{{mime!r}: base64.b64encode(b.getvalue()).decode()}}, raw=True)"
)

#: A real matplotlib animation, written as a GIF by Pillow and shown with IPython's Image.
ANIMATION = """\
import matplotlib.pyplot as plt
from matplotlib.animation import FuncAnimation
from IPython.display import Image
fig, ax = plt.subplots(figsize=(2, 2))
line, = ax.plot([0, 1], [0, 1])
anim = FuncAnimation(fig, lambda i: line.set_ydata([0, i]), frames=3)
anim.save("anim.gif", writer="pillow", fps=2)
plt.close(fig)
Image(filename="anim.gif")
"""


async def run(api: Api, session_id: str, code: str) -> dict[str, Any]:
    """Execute and check the result against the spec."""
    result = await api.execute(session_id, code)
    assert validation_error("ExecutionResult", result) is None, validation_error(
        "ExecutionResult", result
    )
    return result


def data_items(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The result and display items of a result."""
    return [item for item in result["outputs"] if item["type"] in ("result", "display")]


async def transcript_outputs(root: Path, session: dict[str, Any]) -> list[dict[str, Any]]:
    """The outputs of the transcript's one cell, read from disk once written, validated."""
    notebook = await read_transcript(root, session["transcript_path"], 1)
    outputs: list[dict[str, Any]] = notebook.cells[-1].outputs
    return outputs


@pytest.mark.parametrize(
    ("code", "mime_type", "shown"),
    [
        (
            "from IPython.display import Markdown\n"
            "Markdown('# Results\\n| a | b |\\n|---|---|\\n| 1 | 2 |')",
            "text/markdown",
            "# Results\n| a | b |\n|---|---|\n| 1 | 2 |",
        ),
        (
            "from IPython.display import Latex\nLatex(r'$\\alpha^2 + \\beta$')",
            "text/latex",
            "$\\alpha^2 + \\beta$",
        ),
        (
            "from IPython.display import JSON\nJSON({'name': 'x', 'values': [1, 2]})",
            "application/json",
            json.dumps({"name": "x", "values": [1, 2]}, indent=2),
        ),
        (
            "from IPython.display import display\n"
            "display({'text/csv': 'a,b\\n1,2\\n'}, raw=True)",
            "text/csv",
            "a,b\n1,2\n",
        ),
    ],
    ids=["markdown", "latex", "json", "csv"],
)
async def test_text_like_types_are_shown_as_text(
    api: Api, jp_root_dir: Path, code: str, mime_type: str, shown: str
) -> None:
    session = await api.create()
    result = await run(api, session["id"], code)
    assert result["status"] == "ok", result["output"]
    assert shown in result["output"]
    assert "object>" not in result["output"]
    [item] = data_items(result)
    assert item["mime_type"] == mime_type
    assert mime_type in item["mime_types"]
    assert item["text"].rstrip("\n") == shown.rstrip("\n")
    assert result["files"] == []
    # The transcript keeps it as a notebook output of its own type, which JupyterLab renders.
    [output] = await transcript_outputs(jp_root_dir, session)
    expected = json.loads(shown) if mime_type == "application/json" else shown
    value = output["data"][mime_type]
    assert (value if isinstance(value, dict) else "".join(value)) == expected


@pytest.mark.parametrize(
    ("code", "mime_type", "magic"),
    [
        (ANIMATION, "image/gif", GIF_MAGIC),
        (RAW_IMAGE.format(fmt="WEBP", mime="image/webp"), "image/webp", b"RIFF"),
        (RAW_IMAGE.format(fmt="BMP", mime="image/bmp"), "image/bmp", b"BM"),
        (
            "import base64, io\nimport matplotlib.pyplot as plt\n"
            "from IPython.display import display\n"
            "fig = plt.figure(); plt.plot([1, 2]); b = io.BytesIO(); fig.savefig(b, format='pdf')\n"
            "plt.close(fig)\n"
            "display({'application/pdf': base64.b64encode(b.getvalue()).decode()}, raw=True)",
            "application/pdf",
            PDF_MAGIC,
        ),
    ],
    ids=["gif-animation", "webp", "bmp", "pdf"],
)
async def test_binary_types_are_saved_as_files(
    api: Api, jp_root_dir: Path, code: str, mime_type: str, magic: bytes
) -> None:
    session = await api.create()
    result = await run(api, session["id"], code)
    assert result["status"] == "ok", result["output"]
    [stored] = result["files"]
    assert stored["mime_type"] == mime_type
    assert f"[{mime_type}: {stored['id']}]" in result["output"]
    assert len(result["output"]) < 300  # named, never base64
    reply = await api.request("GET", session["id"], "files", stored["id"])
    assert reply.status == 200
    assert reply.body.startswith(magic)
    assert len(reply.body) == stored["size"]
    [output] = await transcript_outputs(jp_root_dir, session)
    assert mime_type in output["data"]


async def test_a_display_of_several_types_shows_one_text_and_keeps_the_rest(
    api: Api, jp_root_dir: Path
) -> None:
    session = await api.create()
    result = await run(
        api,
        session["id"],
        "import base64, io\nimport matplotlib.pyplot as plt\nfrom IPython.display import display\n"
        "fig = plt.figure(); plt.plot([1, 2])\n"
        "png, pdf = io.BytesIO(), io.BytesIO()\n"
        "fig.savefig(png, format='png'); fig.savefig(pdf, format='pdf'); plt.close(fig)\n"
        "display({'text/plain': '<Figure>', 'text/markdown': '**a plot**',\n"
        "         'image/png': base64.b64encode(png.getvalue()).decode(),\n"
        "         'application/pdf': base64.b64encode(pdf.getvalue()).decode()}, raw=True)",
    )
    assert result["status"] == "ok", result["output"]
    [item] = data_items(result)
    assert item["mime_type"] == "text/markdown"
    kinds = {"text/plain", "text/markdown", "image/png", "application/pdf"}
    assert set(item["mime_types"]) == kinds
    assert [f["mime_type"] for f in result["files"]] == ["image/png", "application/pdf"]
    png, pdf = result["files"]
    assert result["output"] == (
        f"**a plot**\n[image/png: {png['id']}]\n[application/pdf: {pdf['id']}]\n"
    )
    [output] = await transcript_outputs(jp_root_dir, session)
    assert set(output["data"]) == kinds


async def test_pandas_dataframe_gives_its_text_and_an_html_file(api: Api) -> None:
    session = await api.create()
    result = await run(api, session["id"], "import pandas as pd\npd.DataFrame({'a': [1, 2]})")
    assert result["status"] == "ok", result["output"]
    [item] = data_items(result)
    assert item["mime_type"] == "text/plain"
    assert "a\n0  1\n1  2" in item["text"]
    assert [f["mime_type"] for f in result["files"]] == ["text/html"]


async def test_a_type_that_cannot_be_used_is_named(api: Api) -> None:
    session = await api.create()
    result = await run(
        api,
        session["id"],
        "from IPython.display import display\n"
        "display({'image/gif': {'not': 'base64'}, 'text/plain': 'an animation'}, raw=True)",
    )
    assert result["status"] == "ok", result["output"]
    assert result["files"] == []
    assert result["output"] == "an animation\n[image/gif: not kept, its data is not base64 text]\n"


async def test_a_renderers_json_model_is_a_file_not_text(api: Api) -> None:
    session = await api.create()
    result = await run(
        api,
        session["id"],
        "from IPython.display import display\n"
        "display({'application/vnd.vegalite.v5+json': {'mark': 'bar'},"
        " 'text/plain': 'alt.Chart(...)'}, raw=True)",
    )
    [stored] = result["files"]
    assert stored["mime_type"] == "application/vnd.vegalite.v5+json"
    marker = f"[application/vnd.vegalite.v5+json: {stored['id']}]"
    assert result["output"] == f"alt.Chart(...)\n{marker}\n"
    reply = await api.request("GET", session["id"], "files", stored["id"])
    assert json.loads(reply.body) == {"mark": "bar"}


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
async def test_lone_surrogates_are_escaped_and_the_line_kept(api: Api, stream: str) -> None:
    session = await api.create()
    result = await run(
        api,
        session["id"],
        f"import sys\nprint('before')\nprint('a\\ud800b c\\udcffd', file=sys.{stream})\n"
        "print('after')",
    )
    assert result["status"] == "ok"
    # stdout and stderr are sent apart, so only each stream's own order is certain.
    assert "a\\ud800b c\\xffd\n" in result["output"]
    assert result["output"].startswith("before\n")
    assert "after\n" in result["output"]
    assert "ZMQStream" not in result["output"]
    assert "Traceback" not in result["output"]


async def test_error_with_a_lone_surrogate_is_reported(api: Api) -> None:
    session = await api.create()
    result = await run(api, session["id"], "raise ValueError('bad \\ud800 value')")
    assert result["status"] == "error"
    assert result["error"]["ename"] == "ValueError"
    assert "bad \\ud800 value" in result["error"]["evalue"]


async def test_exit_says_the_state_is_lost_and_the_session_goes_on(api: Api) -> None:
    session = await api.create()
    await run(api, session["id"], "x = 1")
    result = await run(api, session["id"], "print('bye')\nexit()")
    assert result["status"] == "ok"
    assert result["output"].startswith("bye\n")
    assert "asked the kernel to exit" in result["output"]
    assert "state" in result["output"]
    after = await run(api, session["id"], "print('still here')\nx")
    assert after["output"].startswith("still here\n")
    assert after["error"]["ename"] == "NameError"
    assert "had died" not in after["output"]
    assert (await run(api, session["id"], "quit()"))["output"].count("exit") == 1
    assert (await run(api, session["id"], "1 + 1"))["output"] == "2\n"
