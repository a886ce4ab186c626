"""The transformers backend: batched, left-padded generation (a cache of fixed size, reusing what earlier calls read:
kvcache.py; on-tensor sampling: sampling.py; CPU decode attention: attention.py) and one-pass choice scoring."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from constitutional.errors import InputError
from constitutional.models.attention import use_decode_attention
from constitutional.models.base import Prompt, SamplingParams, cut_at_stop
from constitutional.models.kvcache import (
    KeysValues,
    KeyValueStore,
    answer_read,
    filled_cache,
    holds_every_position,
    keep_rows,
)
from constitutional.models.prefix import PrefixGroup, group_by_prefix
from constitutional.models.sampling import NucleusSampler
from constitutional.models.spec import ModelSpec
from constitutional.models.tokens import common_prefix, render_with_tokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Message contents are rendered through the chat template as numbered slots first (see `render`). A slot is padded
# with a tab on each side: a template that trims contents removes the tabs, which tells how to trim the content.


def pick_device(requested: str) -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested != "auto":
        return _DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On 2 CPU cores bf16 decoding of short prompts ran about 2x faster than fp32 (165 vs 79 tokens/s at batch
    # 16); long-prompt (prefill-bound) work has not been re-measured.
    return torch.bfloat16 if device.type == "cpu" else torch.float32


class StopOnText(StoppingCriteria):
    """Stops a sequence once its answer (never the prompt) contains a stop string.

    transformers' own `stop_strings` also match across the prompt/answer boundary, which ends answers early.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str], prompt_length: int):
        self.tokenizer, self.stops, self.prompt_length = tokenizer, list(stops), prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        answers = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [any(stop in answer for stop in self.stops) for answer in answers]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class TransformersModel:
    """A causal LM from transformers behind the LanguageModel protocol."""

    def __init__(self, name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 16):
        self.name = name
        self.model = model.eval()
        use_decode_attention(model)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        layers = DynamicCache(config=model.config).layers
        windows = [layer.sliding_window for layer in layers if getattr(layer, "is_sliding", False)]
        self._window = min(windows, default=None)
        # Keys and values of what generation read, for calls that continue it; only where every layer keeps every
        # position (a sliding window forgets the beginning a later call would reuse).
        self.store = KeyValueStore() if holds_every_position(model.config) else None
        eos = model.generation_config.eos_token_id
        self._end_tokens = {*(eos if isinstance(eos, list) else [eos]), tokenizer.pad_token_id} - {None}

    @classmethod
    def load(cls, spec: ModelSpec, path: str) -> TransformersModel:
        """Load weights from `path` (already resolved from an embedded name) as the spec says."""
        device = pick_device(spec.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                path,
                dtype=pick_dtype(spec.dtype, device),
                trust_remote_code=spec.trust_remote_code,
                use_safetensors=True,
            )
        except OSError as err:
            raise InputError(
                f"cannot load model '{spec.name}': {err}",
                field="name",
                hint="use an embedded name (smollm2-135m-instruct, gemma3-270m), a local folder with safetensors, "
                "or a Hugging Face id already in the local cache",
            ) from None
        return cls(spec.name, model.to(device), tokenizer, spec.batch_size)

    @property
    def has_chat_template(self) -> bool:
        return bool(self.tokenizer.chat_template)

    @property
    def context_window(self) -> int | None:
        """Positions the model was built for (`max_position_embeddings`, GPT-2's `n_positions`); None if unsaid."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def prompt_tokens(self, prompts: Sequence[Prompt]) -> list[int]:
        return [len(self.render(prompt)) for prompt in prompts]

    def render(self, prompt: Prompt) -> list[int]:
        return render_with_tokenizer(self.tokenizer, prompt, self.name)

    def _batches(self, sequences: list[list[int]]) -> Iterator[list[int]]:
        """Index batches that keep rows sharing a beginning together, and otherwise rows of similar length.

        Shared beginnings are read once per batch (see `_inputs`); similar lengths waste little on padding.
        """
        rank = {}
        for number, group in enumerate(group_by_prefix(sequences, max_rows=self.batch_size)):
            for i in group.rows:
                rank[i] = (0, number, len(sequences[i])) if group.length else (1, 0, len(sequences[i]))
        order = sorted(range(len(sequences)), key=rank.__getitem__)
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    def _pad(self, sequences: list[list[int]]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad({"input_ids": sequences}, padding=True, return_tensors="pt")
        return {key: value.to(self.model.device) for key, value in batch.items()}

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        watch: Callable[[int, list[int]], StoppingCriteria] | None = None,
    ) -> list[str]:
        """`watch`, when given, makes one more stopping criterion per batch from the batch's padded prompt length and
        the indices of its prompts: a streaming output classifier stopping the answers it flags
        (classifiers/stream_model.py)."""
        encoded = [self.render(prompt) for prompt in prompts]
        outputs: list[str] = [""] * len(encoded)
        for batch_number, indices in enumerate(self._batches(encoded)):
            if params.seed is not None:
                torch.manual_seed(params.seed + batch_number)
            rows = [encoded[i] for i in indices]
            batch = self._generation_inputs(rows, params.max_new_tokens)
            prompt_length = batch["input_ids"].shape[1]
            criteria = [StopOnText(self.tokenizer, params.stop, prompt_length)] if params.stop else []
            if watch is not None:
                criteria.append(watch(prompt_length, indices))
            generated = self.model.generate(
                **batch,
                **self._picking(params),
                max_new_tokens=params.max_new_tokens,
                repetition_penalty=params.repetition_penalty,
                no_repeat_ngram_size=params.no_repeat_ngram_size,
                stopping_criteria=StoppingCriteriaList(criteria) if criteria else None,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            self._remember(rows, batch, generated)
            new_tokens = generated[:, prompt_length:]
            for i, text in zip(
                indices, self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True
            ):
                outputs[i] = cut_at_stop(text, params.stop)
        return outputs

    def _picking(self, params: SamplingParams) -> dict:
        """How `generate` picks each next token: greedily, from scores a NucleusSampler has already drawn from when
        sampling (transformers' own top-p sorts the vocabulary at every step)."""
        sampler = [NucleusSampler(params.temperature, params.top_p)] if params.temperature > 0 else []
        return {
            "do_sample": False,
            "temperature": None,
            "top_p": None,
            "top_k": None,
            "logits_processor": LogitsProcessorList(sampler),
        }

    def _inputs(self, sequences: list[list[int]], keep: int = 1) -> dict:
        """Scoring inputs for one batch: left-padded, or with shared beginnings already read into a cache.

        The last `keep` tokens of every row stay out of the cache, because their logits are needed.
        """
        groups = group_by_prefix(sequences, keep)
        if not any(group.length for group in groups):
            return self._pad(sequences)
        return self._prefilled(sequences, groups, keep)

    def _prefilled(self, sequences: list[list[int]], groups: list[PrefixGroup], keep: int) -> dict:
        """Read each shared beginning once, copy its cache to the rows of its group, and pass the rest as input.

        Every row becomes [padding, beginning | padding, remainder]: the beginnings, left-padded to one width,
        are what the cache holds; the remainders follow, left-padded to another. The attention mask hides both
        paddings and position ids count real tokens only, so each row computes what it would alone.
        """
        cached, cache = self._read_beginnings(sequences, groups, keep)
        group_of = [0] * len(sequences)
        for number, group in enumerate(groups):
            for row in group.rows:
                group_of[row] = number
        cache.reorder_cache(torch.tensor(group_of, device=self.model.device))  # one copy of its group's cache per row
        return self._joined(sequences, [cached[number] for number in group_of], cache)

    def _read_beginnings(
        self, sequences: list[list[int]], groups: list[PrefixGroup], keep: int
    ) -> tuple[list[int], DynamicCache]:
        """One pass over each group's shared beginning, left-padded to one width: the tokens read per group and
        the cache (a row per group). A row that shares with no one reads up to the same width too, which costs it
        nothing extra; never its last `keep` tokens."""
        width = max(group.length for group in groups)
        cached = [group.length or max(0, min(width, len(sequences[group.rows[0]]) - keep)) for group in groups]
        pad = self.tokenizer.pad_token_id
        device = self.model.device
        heads = torch.tensor(
            [[pad] * (width - n) + sequences[g.rows[0]][:n] for g, n in zip(groups, cached, strict=True)],
            device=device,
        )
        head_mask = torch.tensor([[0] * (width - n) + [1] * n for n in cached], device=device)
        out = self.model(
            input_ids=heads,
            attention_mask=head_mask,
            position_ids=(head_mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            logits_to_keep=1,
        )
        return cached, out.past_key_values

    def _joined(self, sequences: list[list[int]], cached: list[int], cache) -> dict:
        """Rows as [padding, beginning | padding, remainder], the first `cached[row]` tokens already in `cache`."""
        width = max(cached)
        pad = self.tokenizer.pad_token_id
        device = self.model.device
        heads = torch.tensor(
            [[pad] * (width - n) + sequence[:n] for sequence, n in zip(sequences, cached, strict=True)],
            dtype=torch.long,
            device=device,
        )
        head_mask = torch.tensor([[0] * (width - n) + [1] * n for n in cached], dtype=torch.long, device=device)
        rests = self._pad([sequence[n:] for sequence, n in zip(sequences, cached, strict=True)])
        return {
            "input_ids": torch.cat([heads, rests["input_ids"]], dim=1),
            "attention_mask": torch.cat([head_mask, rests["attention_mask"]], dim=1),
            "past_key_values": cache,
        }

    def _generation_inputs(self, sequences: list[list[int]], room: int) -> dict:
        """Inputs for generating up to `room` tokens after each sequence, into a cache of fixed size.

        A row's beginning comes already read from the store (an earlier call read it) or from one pass over the
        beginnings rows of this batch share; `generate` reads the rest.
        """
        beginnings: list[KeysValues | None] = [None] * len(sequences)
        if self.store is not None:
            beginnings = [self.store.longest(sequence, len(sequence) - 1) for sequence in sequences]
        fresh = [row for row, beginning in enumerate(beginnings) if beginning is None]
        groups = [
            PrefixGroup([fresh[i] for i in group.rows], group.length)
            for group in group_by_prefix([sequences[row] for row in fresh])
        ]
        shared = max((group.length for group in groups), default=0)
        # A sliding-window layer keeps fewer positions than a longer beginning, which could not be copied whole.
        if shared and (self._window is None or shared < self._window - 1):
            cached, cache = self._read_beginnings(sequences, groups, keep=1)
            for number, (group, n) in enumerate(zip(groups, cached, strict=True)):
                held = [(layer.keys[number, :, -n:], layer.values[number, :, -n:]) for layer in cache.layers]
                for row in group.rows:
                    beginnings[row] = held if n else None
        cached = [0 if beginning is None else beginning[0][0].shape[-2] for beginning in beginnings]
        batch = self._joined(sequences, cached, None)
        length = batch["input_ids"].shape[1] + room
        batch["past_key_values"] = filled_cache(self.model.config, beginnings, max(cached), length)
        return batch

    def _remember(self, sequences: list[list[int]], batch: dict, generated: torch.Tensor) -> None:
        """Store every row's prompt and answer with their keys and values, for calls that continue them."""
        if self.store is not None:
            read = batch["attention_mask"].shape[1]
            answers = [answer_read(row, self._end_tokens) for row in generated[:, read:].tolist()]
            keep_rows(self.store, batch["past_key_values"], batch["attention_mask"], sequences, answers)

    @torch.inference_mode()
    def choice_logprobs(self, prompts: Sequence[Prompt], choices: Sequence[str]) -> list[list[float]]:
        """One forward pass per prompt over the prompt and the choices' shared first tokens; no generation.

        Choices such as " (A)" / " (B)" differ only in their last tokens: those tails are scored on top of the
        prompt's cached keys and values, so the prompt is processed once however many choices there are.
        """
        # Prompt and choices are tokenized apart and joined, so exactly the choice's tokens are scored
        # (joint tokenization could merge a token across the boundary and blur what is scored).
        choice_ids = [self.tokenizer(choice, add_special_tokens=False)["input_ids"] for choice in choices]
        if any(not ids for ids in choice_ids):
            raise InputError("a choice is empty after tokenization", field="choices", hint="pass non-empty choices")
        shared = common_prefix(choice_ids)
        tails = [ids[len(shared) :] for ids in choice_ids]
        sequences = [self.render(prompt) + shared for prompt in prompts]
        scores: list[list[float]] = [[] for _ in sequences]
        for indices in self._batches(sequences):
            rows = self._score_batch([sequences[i] for i in indices], len(shared), tails)
            for row, i in zip(rows, indices, strict=True):
                scores[i] = row
        return scores

    def _score_batch(self, sequences: list[list[int]], shared: int, tails: list[list[int]]) -> list[list[float]]:
        """Log-probabilities of (shared tokens + each tail) at the end of every sequence, batched."""
        batch = self._inputs(sequences, keep=shared + 1)
        cache = batch.get("past_key_values")
        read = cache.get_seq_length() if cache is not None else 0
        mask = batch["attention_mask"]
        # With padding, positions must count real tokens only.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=batch["input_ids"][:, read:],
            attention_mask=mask,
            position_ids=positions[:, read:],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=shared + 1,
        )
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)
        targets = batch["input_ids"][:, batch["input_ids"].shape[1] - shared :]
        shared_score = logprobs[:, :-1].gather(-1, targets.unsqueeze(-1)).sum(dim=(1, 2))
        next_token = logprobs[:, -1]
        totals = torch.stack(
            [shared_score + (next_token[:, tail[0]] if tail else 0.0) for tail in tails], dim=1
        )  # (batch, choices)
        width = max(len(tail) for tail in tails) - 1
        if width > 0:
            totals += self._score_tail_rest(out.past_key_values, mask, positions, tails, width)
        return totals.tolist()

    def _score_tail_rest(self, cache, mask, positions, tails: list[list[int]], width: int) -> torch.Tensor:
        """Scores of every tail token after the first, each choice continuing from a copy of the cached prompt."""
        rows, choices = mask.shape[0], len(tails)
        device = self.model.device
        cache.batch_repeat_interleave(choices)  # row-major: prompt 0 x every choice, then prompt 1 ...

        def per_row(token_lists: list[list[int]], fill: int) -> torch.Tensor:
            padded = [tokens + [fill] * (width - len(tokens)) for tokens in token_lists]
            return torch.tensor(padded, device=device).repeat(rows, 1)

        fed = per_row([tail[:-1] for tail in tails], self.tokenizer.pad_token_id)  # each predicts the next
        targets = per_row([tail[1:] for tail in tails], 0)
        tail_mask = per_row([[1] * len(tail[1:]) for tail in tails], 0)
        out = self.model(
            input_ids=fed,
            attention_mask=torch.cat([mask.repeat_interleave(choices, 0), tail_mask], dim=1),
            position_ids=positions[:, -1:].repeat_interleave(choices, 0) + torch.arange(1, width + 1, device=device),
            past_key_values=cache,
        )
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)
        token_scores = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return (token_scores * tail_mask).sum(-1).view(rows, choices)
