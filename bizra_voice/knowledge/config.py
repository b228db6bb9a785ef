"""Config of hybrid mode's knowledge model (``args.knowledge``) and of its server-side tools (``args.tools``).

Pure pydantic, so ``bizra_voice.config.AppConfig`` can hold these sections and ``config_errors`` can say
what is wrong with them in one sentence, without importing transformers, openai or mcp.

``knowledge.backend`` picks where answers come from:

- ``local`` (the default): a colocated Ray Serve deployment that loads ``model`` with transformers
  (Qwen2.5-1.5B-Instruct on the GPU profiles, a tiny random Qwen2 on the CPU profile);
- ``openai``: any OpenAI-compatible ``/v1/chat/completions`` endpoint at ``base_url`` (vLLM, Ollama,
  llama.cpp's server, TGI, ``transformers serve``, a company gateway), streamed; ``model`` is the name that
  gateway knows the model by. Nothing is loaded here; the deployment is a thin client on the CPU.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bizra_voice import constants as C

DEFAULT_SYSTEM_PROMPT = (
    "You are the knowledge module of a voice assistant. Answer in one to three short spoken sentences, "
    "no lists, no markdown.")

# OpenAI function names and Qwen2.5's template accept these; an MCP server's name prefixes nothing, but it
# is shown in logs and events, so it follows the same rule.
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QwenConfig(_Strict):
    """The colocated knowledge model (``knowledge.backend: local``); also the deprecated ``args.qwen`` section."""

    enabled: bool = True
    model: str = Field(C.QWEN_REPO, description="HF repo id or local folder of a causal LM with a chat template "
                       "(backend local), or the model name the gateway serves (backend openai).")
    tiny_random: bool = Field(False, description="Generate a tiny random Qwen2 + local tokenizer (CPU dev).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_new_tokens: int = Field(96, ge=1, le=2048)
    max_input_tokens: int = Field(2048, ge=32)
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, max_length=4000)
    num_gpus: float = Field(0.0, ge=0.0, le=8.0)
    num_cpus: float = Field(0.0, ge=0.0)
    num_replicas: int = Field(1, ge=1)
    max_ongoing_requests: int = Field(4, ge=1)
    gpu_memory_fraction: float | None = Field(None, gt=0.0, le=1.0, description="Cap of this process's "
                                              "CUDA allocator (fractional num_gpus does not cap memory).")


class KnowledgeConfig(QwenConfig):
    """Hybrid mode's knowledge model: the local Qwen deployment, or an OpenAI-compatible gateway."""

    backend: Literal["local", "openai"] = Field("local", description="local: load `model` in a colocated "
                                                "deployment; openai: stream from the gateway at `base_url`.")
    base_url: str | None = Field(None, description="backend openai: the gateway's OpenAI API root, ending in "
                                 "/v1 (e.g. http://127.0.0.1:8001/v1).")
    api_key_env: str | None = Field(None, description="backend openai: environment variable holding the API key "
                                    "(read in the replica); unset or empty = no key.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="backend openai: sampling temperature "
                                      "sent to the gateway (unset = the gateway's default).")
    connect_timeout_s: float = Field(3.0, gt=0.0, description="backend openai: TCP/TLS connect to the gateway.")
    first_token_timeout_s: float = Field(10.0, gt=0.0, description="backend openai: longest wait for the first "
                                         "streamed chunk of one completion before it is abandoned.")
    answer_timeout_s: float = Field(60.0, gt=0.0, description="backend openai: longest one completion may "
                                    "stream before it is abandoned.")
    probe_interval_s: float = Field(5.0, gt=0.0, description="backend openai: period of the health probe "
                                    "(GET /v1/models, a one-token completion when that is not usable).")
    probe_backoff_max_s: float = Field(30.0, gt=0.0, description="backend openai: longest wait between probes "
                                       "of a gateway that is down (the wait doubles from 1 s).")

    @model_validator(mode="after")
    def _gateway_has_an_address(self) -> KnowledgeConfig:
        if self.backend == "openai" and self.enabled:
            if not self.base_url:
                raise ValueError("backend openai needs `base_url`, the gateway's API root such as "
                                 "http://127.0.0.1:8001/v1")
            if not re.match(r"^https?://", self.base_url):
                raise ValueError(f"`base_url` must start with http:// or https://, not {self.base_url!r}")
            if self.tiny_random:
                raise ValueError("tiny_random generates a local model; it does not apply to backend openai")
        return self

    @property
    def local(self) -> bool:
        return self.backend == "local"

    @property
    def deployment_name(self) -> str:
        """The Ray Serve deployment answering for it (the model here, or a client of the gateway)."""
        return "QwenKnowledge" if self.local else "GatewayKnowledge"

    @property
    def label(self) -> str:
        """How reasons name this model: "the knowledge model (<label>) is unhealthy: …"."""
        return "Qwen" if self.local else f"gateway {self.model}"

    def local_view(self) -> QwenConfig:
        """The colocated Qwen deployment's settings (disabled when the answers come from a gateway)."""
        fields = {name: getattr(self, name) for name in QwenConfig.model_fields}
        fields["enabled"] = self.enabled and self.local
        return QwenConfig(**fields)


class McpServerConfig(_Strict):
    """One MCP server whose tools the knowledge model may call: a command (stdio) or a URL (streamable HTTP)."""

    name: str = Field(..., pattern=NAME_PATTERN, description="Shown in logs and in tool events.")
    command: str | None = Field(None, description="stdio: the program to start (an absolute path is safest: it "
                                "is started by the knowledge replica, on its node).")
    args: list[str] = Field(default_factory=list, description="stdio: its arguments.")
    env: dict[str, str] = Field(default_factory=dict, description="stdio: extra environment variables.")
    cwd: str | None = Field(None, description="stdio: its working directory.")
    url: str | None = Field(None, description="streamable HTTP: the endpoint, e.g. http://127.0.0.1:8931/mcp.")
    bearer_token_env: str | None = Field(None, description="streamable HTTP: environment variable holding a "
                                         "bearer token sent as Authorization (read in the replica).")

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name!r} needs exactly one of `command` (stdio) or `url` "
                             "(streamable HTTP)")
        if self.url is not None and not re.match(r"^https?://", self.url):
            raise ValueError(f"MCP server {self.name!r}: `url` must start with http:// or https://")
        return self


class ToolsConfig(_Strict):
    """Server-side tools for hybrid turns: MCP servers, which of their tools are allowed, and the limits."""

    mcp: list[McpServerConfig] = Field(default_factory=list, description="MCP servers, reached by the "
                                       "knowledge deployment (one session per server and replica).")
    allow: list[str] = Field(default_factory=list, description="Tool names the knowledge model may see and "
                             "call; a tool not listed is never offered (empty = no tools).")
    call_timeout_s: float = Field(8.0, gt=0.0, le=120.0, description="Longest one tool call may take; then the "
                                  "model is told it timed out.")
    max_result_chars: int = Field(2000, ge=64, le=100_000, description="A tool result longer than this is cut "
                                  "before it goes to the model.")
    max_calls_per_answer: int = Field(3, ge=1, le=16, description="Tool calls one answer may make; then the "
                                      "model must answer with what it has.")
    connect_timeout_s: float = Field(20.0, gt=0.0, description="Longest wait for an MCP server to start and "
                                     "list its tools.")

    @model_validator(mode="after")
    def _names(self) -> ToolsConfig:
        names = [server.name for server in self.mcp]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"MCP server names must be unique; {', '.join(twice)} is given more than once")
        bad = [name for name in self.allow if not re.match(NAME_PATTERN, name)]
        if bad:
            raise ValueError(f"`allow` holds tool names (letters, digits, _ and -), not {bad[0]!r}")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.mcp) and bool(self.allow)
