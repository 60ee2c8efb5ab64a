"""kernel_pool_preload: pooled kernels import modules while they wait, sessions see none of it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from .conftest import Api
from .test_pool import wait_for_pool

pytestmark = pytest.mark.timeout(120)

#: What a session may see in its namespace that it did not define: IPython's own names.
NAMESPACE_PROBE = (
    "print(sorted(n for n in dir() if not n.startswith('_')))\n"
    "get_ipython().run_line_magic('who', '')"
)


@pytest.mark.parametrize("agent_config", [{"kernel_pool": {"python3": 1}}])
async def test_the_default_preload_is_imported_and_the_namespace_stays_clean(
    api: Api, manager: Any
) -> None:
    assert manager.kernel_pool_preload == ["numpy", "pandas", "matplotlib.pyplot"]
    [pooled] = await wait_for_pool(manager, 1)
    session = await api.create()
    assert session["kernel_id"] == pooled
    loaded = await api.execute(
        session["id"],
        "import sys\nprint([m in sys.modules for m in ('numpy', 'pandas', 'matplotlib.pyplot')])",
    )
    assert loaded["output"] == "[True, True, True]\n"
    namespace = await api.execute(session["id"], NAMESPACE_PROBE)
    assert namespace["output"] == (
        "['In', 'Out', 'exit', 'get_ipython', 'open', 'quit', 'sys']\nsys\t \n"
    )
    # The warm-up figure left no pyplot figure; a first plot comes out inline, once.
    plot = await api.execute(
        session["id"],
        "import matplotlib.pyplot as plt\nprint(plt.get_fignums())\nplt.plot([1, 2])\n"
        "print(plt.get_fignums())\nplt.show()",
    )
    assert plot["output"].startswith("[]\n[1]\n")
    assert [f["mime_type"] for f in plot["files"]] == ["image/png"]
    after = await api.execute(session["id"], "print(plt.get_fignums())")
    assert (after["output"], after["files"]) == ("[]\n", [])


@pytest.mark.parametrize(
    "agent_config",
    [
        {
            "kernel_pool": {"python3": 1},
            "kernel_pool_preload": ["json", "broken_preload_module", "no_such_module_xyz", "csv"],
        }
    ],
)
async def test_a_failing_preload_module_is_logged_and_the_kernel_serves(
    api: Api, manager: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_preload_module.py").write_text("raise RuntimeError('broken on import')\n")
    # Pooled kernels get the server's environment as it is when they start.
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    manager.log.addHandler(handler)
    try:
        [pooled] = await wait_for_pool(manager, 1)
    finally:
        manager.log.removeHandler(handler)
    [warning] = [r.getMessage() for r in records if "preloading" in r.getMessage()]
    assert "broken_preload_module (RuntimeError: broken on import)" in warning
    assert "no_such_module_xyz" not in warning  # not installed: skipped, not an error
    session = await api.create()
    assert session["kernel_id"] == pooled
    result = await api.execute(
        session["id"],
        "import sys\nprint([m in sys.modules for m in ('json', 'csv', 'broken_preload_module')])",
    )
    # The modules after the broken one were imported too.
    assert result["output"] == "[True, True, False]\n"


@pytest.mark.parametrize(
    "agent_config", [{"kernel_pool": {"python3": 1}, "kernel_pool_preload": []}]
)
async def test_an_empty_preload_list_imports_nothing(api: Api, manager: Any) -> None:
    await wait_for_pool(manager, 1)
    session = await api.create()
    result = await api.execute(session["id"], "import sys\nprint('pandas' in sys.modules)")
    assert result["output"] == "False\n"
