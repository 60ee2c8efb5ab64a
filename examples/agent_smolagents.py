"""smolagents' CodeAgent on a Jupyter kernel (pip install "./client[smolagents]" matplotlib).

Runs without an LLM: a scripted model writes the code. Put a real model
(smolagents.InferenceClientModel, LiteLLMModel, ...) in its place for a real agent.
"""

from jupyter_exec_client import LocalJupyterServer
from jupyter_exec_client.integrations.smolagents import JupyterExecutor
from smolagents import CodeAgent
from smolagents.models import ChatMessage, MessageRole, Model

STEPS = [
    "import numpy as np\nxs = np.arange(10)\nprint(xs.sum())",
    "import matplotlib.pyplot as plt\nplt.plot(xs, xs ** 2)\nplt.show()",
    "final_answer(int((xs ** 2).sum()))",
]


class Scripted(Model):
    def generate(self, messages, **kwargs):
        return ChatMessage(role=MessageRole.ASSISTANT, content=f"<code>\n{STEPS.pop(0)}\n</code>")


with LocalJupyterServer() as server:
    executor = JupyterExecutor(server, additional_imports=[], logger=None, output_dir=".")
    with CodeAgent(
        tools=[],
        model=Scripted(model_id="scripted"),
        executor=executor,
        step_callbacks=[executor.attach_images],
    ) as agent:
        print("answer:", agent.run("Sum the squares of 0..9 and plot them."))
