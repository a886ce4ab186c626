"""What `cai guard serve` and the in-process guard are configured with: one validated model, every field explained."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

# The upstream's key is read from the environment only: a command-line flag would show it in `ps` and shell history.
UPSTREAM_KEY_ENV = "CAI_GUARD_UPSTREAM_API_KEY"
# The proxy's own key may come from the environment too (or `--api-key`), like vLLM's VLLM_API_KEY.
API_KEY_ENV = "CAI_GUARD_API_KEY"
DEFAULT_REFUSAL = "I can't help with that."
DEFAULT_HOLD_BACK = 8
DEFAULT_STEP_TOKENS = 32


class GuardSettings(BaseModel):
    """The guard's settings; `cai guard serve` has one flag per field, with these descriptions as help."""

    model_config = ConfigDict(extra="forbid")

    upstream: str = Field(
        description="Base URL of the OpenAI-compatible model server, up to /v1 (e.g. http://127.0.0.1:8080/v1)."
    )
    upstream_api_key: SecretStr | None = Field(
        default_factory=lambda: _secret(os.environ.get(UPSTREAM_KEY_ENV)),
        description=f"Key sent to the upstream; read from ${UPSTREAM_KEY_ENV}, never sent to clients.",
    )
    api_key: SecretStr | None = Field(
        default=None, description=f"Key clients must send (Authorization: Bearer); none: open (${API_KEY_ENV})."
    )
    hold_back_tokens: int = Field(
        default=DEFAULT_HOLD_BACK,
        ge=0,
        description="Tokens (in the output classifier's tokenizer) scored but not yet sent, so a flag can still "
        "withhold them; 0 sends each piece as soon as it is scored. The first token waits for this many + 1 tokens, "
        "rounded up to whole classifier steps.",
    )
    step_tokens: int = Field(
        default=DEFAULT_STEP_TOKENS,
        ge=1,
        description="Tokens of answer text (in the output classifier's tokenizer) collected, unsent, before one "
        "classifier step scores them together; an answer's first step is hold-back + 1 tokens (all its first "
        "token needs to go out) and its end is scored whatever its length. A trained classifier's step reads all "
        "its weights whatever the tokens (SmolLM2 cut after layer 15, bf16, one thread: 14 ms for 1 token, 18 ms "
        "for 16, 28 ms for 32), memory traffic the model server on the same machine feels; so longer steps cost "
        "it less, and the text after the first token then comes in bursts of this many tokens. 1: each piece "
        "scored as it comes.",
    )
    classifier_threads: int = Field(
        default=1,
        ge=1,
        description="Torch threads per classifier forward pass, set by `cai guard serve` before the classifiers "
        "load. One: the guard usually shares its cores with the model server, and a pass on more threads waits "
        "for the slowest of them (on a busy 2-core machine, 2 threads took 7 times as long as 1); more when the "
        "guard has cores of its own.",
    )
    refusal_message: str = Field(
        default=DEFAULT_REFUSAL,
        description="The answer to a blocked request; a halted stream ends with it (after a blank line).",
    )
    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to open a connection to the upstream.")
    read_timeout: float = Field(
        default=60.0, gt=0, description="Seconds the upstream may stay silent (before its answer or between chunks)."
    )
    max_request_bytes: int = Field(default=1_000_000, ge=1, description="Larger request bodies are refused (413).")
    max_concurrent_requests: int = Field(
        default=256, ge=1, description="Requests in flight at once; more are refused at once (429), not queued."
    )
    fail_open: bool = Field(
        default=False,
        description="When a classifier raises, let the text through (logged) instead of refusing it.",
    )
    max_input_batch: int = Field(
        default=32, ge=1, description="Most conversations screened in one input-classifier call."
    )
    audit_log: Path | None = Field(
        default=Path("guard-audit.jsonl"), description="JSON-lines file with one line per block; none: no file."
    )
    audit_max_bytes: int = Field(default=10_000_000, ge=1_000, description="Size at which the audit log rotates.")
    audit_backups: int = Field(default=5, ge=0, description="Rotated audit files kept.")
    log_text: bool = Field(
        default=False, description="Put the screened text into audit lines (off: stage, category, score only)."
    )

    @field_validator("upstream")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"'{value}' is not an http(s) URL; give the server's base URL, e.g. http://HOST:PORT/v1")
        return value.rstrip("/")

    @field_validator("upstream_api_key", "api_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return _secret(value) if isinstance(value, str) else value


def _secret(value: str | None) -> SecretStr | None:
    return SecretStr(value) if value else None
