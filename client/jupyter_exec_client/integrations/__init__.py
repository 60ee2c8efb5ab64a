"""Adapters for agent frameworks, one module each, each an extra of the client package.

None of them is imported with ``jupyter_exec_client``: each module imports its framework when
it is imported itself, so the light client stays light.

* :mod:`.autogen_core`: ``JupyterCodeExecutor``, an autogen-core ``CodeExecutor``
  (``pip install "jupyter-exec-client[autogen-core]"``).
* :mod:`.ag2`: ``jupyter_tool(executor)``, a tool for ag2 1.x agents (``[ag2]``).
* :mod:`.smolagents`: ``JupyterExecutor``, a remote executor for smolagents' ``CodeAgent``
  (``[smolagents]``).
* :mod:`.openai_agents`: ``jupyter_tool(executor)``, a ``FunctionTool`` of the OpenAI Agents
  SDK (``[openai-agents]``).
* :mod:`.langchain`: ``JupyterTool``, a LangChain ``BaseTool`` (``[langchain]``).

AG2 Classic (PyPI ``autogen`` 0.14) needs no adapter: ``jupyter_exec_client.JupyterCodeExecutor``
is its executor, as for AutoGen 0.2.
"""
