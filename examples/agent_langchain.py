"""A LangChain tool-calling loop on a Jupyter kernel (pip install "./client[langchain]" matplotlib).

A scripted chat model calls the tool; any chat model with bind_tools works in its place.
"""

from jupyter_exec_client import JupyterCodeExecutor, LocalJupyterServer
from jupyter_exec_client.integrations.langchain import JupyterTool
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage


class Scripted(GenericFakeChatModel):
    def bind_tools(self, tools, **kwargs):
        return self


def call(code, n):
    return AIMessage("", tool_calls=[{"name": "run_python", "args": {"code": code}, "id": str(n)}])


script = [call("x = 6 * 7", 1), call("print(x)", 2), AIMessage("x is 42.")]
with LocalJupyterServer() as server, JupyterCodeExecutor(server, output_dir=".") as executor:
    tool = JupyterTool(executor=executor)
    model = Scripted(messages=iter(script)).bind_tools([tool])
    messages = [HumanMessage("Compute 6 * 7.")]
    while (reply := model.invoke(messages)).tool_calls:
        messages += [reply, *(tool.invoke(c) for c in reply.tool_calls)]
        print(messages[-1].content[0]["text"])
    print(reply.content)
