"""The OpenAI Agents SDK with a Jupyter tool (pip install "./client[openai-agents]").

Needs OPENAI_API_KEY (or another model given to Agent(model=...)).
"""

import asyncio

from agents import Agent, Runner
from jupyter_exec_client import AsyncJupyterCodeExecutor, LocalJupyterServer
from jupyter_exec_client.integrations.openai_agents import jupyter_tool


async def main() -> None:
    with LocalJupyterServer() as server:
        async with AsyncJupyterCodeExecutor(server, output_dir=".", timeout=60) as executor:
            agent = Agent(
                name="analyst",
                instructions="Use run_python to compute.",
                tools=[jupyter_tool(executor)],
            )
            result = await Runner.run(agent, "Plot y = x**2 for x in 0..10 and describe it.")
            print(result.final_output)


asyncio.run(main())
