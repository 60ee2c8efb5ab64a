"""Start ``jupyter server`` about a second sooner: ``python -m jupyter_exec_ext.launch [ARGS]``.

Takes the arguments of ``jupyter server``. ``LocalJupyterServer`` of the client starts the
server this way, because agents wait for it.

Importing jupyter_server imports jupyter_events, which imports jsonschema's format checkers,
and those import ``rfc3987_syntax`` when it is installed: it builds a grammar at import time,
about 1 s of the 1.9 s that importing jupyter_server took on our 2-core machines. The only
thing it adds is checking the ``iri`` string format, which neither jupyter_server's event
schemas nor this extension use. Marking it as not importable makes jsonschema skip that
format, as it does wherever the package is not installed.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run jupyter_server's ServerApp with this process's arguments."""
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    from jupyter_server.serverapp import main as serve  # noqa: PLC0415 - after the line above

    serve()


if __name__ == "__main__":
    main()
