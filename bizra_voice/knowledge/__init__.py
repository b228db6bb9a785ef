"""Hybrid mode's knowledge: where answers come from (backends) and what the model may look up (tools).

- ``config.py``: the ``knowledge:`` and ``tools:`` config sections (pure pydantic).
- ``messages.py``: the chat messages of one question (system prompt, persona, conversation, question).
- ``answer_loop.py``: one answer as a stream of text pieces and ``tool.call`` / ``tool.result`` events:
  the model's turn, its tool calls executed, their results given back, until it answers (pure; backends
  and the toolbox are injected).
- ``local.py``: the colocated transformers model (Qwen2.5's ``<tool_call>`` format: ``qwen_tool_calls.py``).
- ``gateway.py`` + ``gateway_health.py``: any OpenAI-compatible ``/v1/chat/completions`` endpoint, with a
  health probe that backs off while the gateway is down.
- ``tools/``: MCP servers reached with the official ``mcp`` SDK (``mcp_toolbox.py``), results cut to size
  (``results.py``).

The Ray Serve shell that puts these together per replica is ``bizra_voice/serve/qwen.py``.
Importing this package imports nothing heavy: transformers, openai and mcp load where they are used.
"""
