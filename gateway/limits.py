"""Bounds on what one inference request may ask of the gateway, checked before any real work.

A prompt given as text is bounded in characters before it is tokenized, so tokenization (in a
worker thread for long prompts) stays bounded in time; a prompt of token ids in ids; a batch in
prompts (many short prompts are tokenized on the event loop); and ``max_tokens`` and ``n`` have
sane ceilings, so no absurd number reaches the predictor's arithmetic or the pods. Each breach
is a 400 that names the field (``prompt_too_long`` for prompts).
"""

from __future__ import annotations

from dataclasses import dataclass

from config import ServerConfig
from gateway.errors import BadRequestError
from gateway.parsing import ParsedRequest
from scheduler.framework.types import Api

_PROMPT_FIELD = {
    Api.COMPLETIONS: "prompt",
    Api.CHAT: "messages",
    Api.RESPONSES: "input",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestLimits:
    max_prompt_chars: int
    max_prompt_tokens: int
    max_tokens: int
    max_n: int
    max_batch_size: int

    @classmethod
    def from_config(cls, cfg: ServerConfig) -> RequestLimits:
        return cls(
            max_prompt_chars=cfg.max_prompt_chars,
            max_prompt_tokens=cfg.max_prompt_tokens,
            max_tokens=cfg.max_tokens_limit,
            max_n=cfg.max_n,
            max_batch_size=cfg.max_batch_size,
        )

    def check(self, parsed: ParsedRequest) -> None:
        field = _PROMPT_FIELD.get(parsed.api, "input")
        chars = parsed.prompt_chars
        if chars > self.max_prompt_chars:
            raise BadRequestError(
                f"the prompt is {chars} characters long; this gateway accepts at most "
                f"{self.max_prompt_chars}",
                code="prompt_too_long",
                param=field,
            )
        ids = 0 if parsed.prompt_ids is None else len(parsed.prompt_ids)
        if ids > self.max_prompt_tokens:
            raise BadRequestError(
                f"the prompt is {ids} tokens long; this gateway accepts at most "
                f"{self.max_prompt_tokens}",
                code="prompt_too_long",
                param=field,
            )
        for name, value in parsed.max_tokens_fields:
            if value > self.max_tokens:
                raise BadRequestError(
                    f"'{name}' must be at most {self.max_tokens}, got {value}", param=name
                )
        if parsed.batch_size > self.max_batch_size:
            raise BadRequestError(
                f"the request holds {parsed.batch_size} prompts (or inputs, or pairs); this "
                f"gateway accepts at most {self.max_batch_size}",
                code="too_many_prompts",
                param=field,
            )
        if parsed.n > self.max_n:
            raise BadRequestError(f"'n' must be at most {self.max_n}, got {parsed.n}", param="n")
