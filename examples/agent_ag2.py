"""An ag2 1.x agent with a Jupyter tool (pip install "./client[ag2]").

ag2.testing.TestConfig scripts the model; put a real ModelConfig in its place.
"""

import asyncio
import json

from ag2 import Agent
from ag2.events import ToolCallEvent
from ag2.testing import TestConfig
from jupyter_exec_client import AsyncJupyterCodeExecutor, LocalJupyterServer
from jupyter_exec_client.integrations.ag2 import jupyter_tool


async def main() -> None:
    config = TestConfig(
        ToolCallEvent("run_python", arguments=json.dumps({"code": "x = 6 * 7\nprint(x)"})),
        "x is 42.",
    )
    with LocalJupyterServer() as server:
        async with AsyncJupyterCodeExecutor(server, output_dir=".") as executor:
            agent = Agent(
                "analyst", "Compute with run_python.", config=config, tools=[jupyter_tool(executor)]
            )
            print((await agent.ask("Compute 6 * 7.")).body)


asyncio.run(main())
