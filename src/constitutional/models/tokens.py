"""Token-level pieces the local backends (transformers, vllm, llama.cpp) share, so both read a prompt the same way."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from constitutional.errors import InputError
from constitutional.models.base import Message, Prompt, render_transcript
from constitutional.models.prefix import shared_length

# A character no prompt text uses, marking where a message's content goes in a rendered chat template.
_SLOT_MARK = "\ue000"
_SLOT = re.compile(f"(\t?){_SLOT_MARK}(\\d+){_SLOT_MARK}(\t?)")


def common_prefix(sequences: Sequence[list[int]]) -> list[int]:
    """The longest run of token ids every sequence starts with."""
    length = min(len(s) for s in sequences)
    for sequence in sequences[1:]:
        length = min(length, shared_length(sequences[0], sequence))
    return list(sequences[0][:length])


def render_chat(
    messages: list[Message],
    apply_template: Callable[[list[Message]], str],
    template_ids: Callable[[str], list[int]],
    content_ids: Callable[[str], list[int]],
    model: str,
) -> list[int]:
    """Chat messages rendered through a template around numbered slots: the template's own text is tokenized with
    its special tokens (`template_ids`), each slot filled with its message's content read as plain text
    (`content_ids`). Both local backends render through this, so they give the same ids.

    A slot is padded with a tab on each side: a template that trims contents removes the tabs, which tells how to
    trim the content.
    """
    slots = [{**m, "content": f"\t{_SLOT_MARK}{i}{_SLOT_MARK}\t"} for i, m in enumerate(messages)]
    parts = _SLOT.split(apply_template(slots))  # template, (tab, slot number, tab, template) per slot
    ids: list[int] = []
    for index in range(0, len(parts), 4):
        if _SLOT_MARK in parts[index]:
            raise InputError(
                f"the chat template of {model} rewrites message contents, so their special tokens cannot be kept "
                "apart from the template's",
                field="name",
                hint="use a model whose chat template inserts message contents as they are",
            )
        ids += template_ids(parts[index])
        if index + 1 < len(parts):
            before, number, after = parts[index + 1 : index + 4]
            content = messages[int(number)]["content"]
            content = content if before else content.lstrip()
            content = content if after else content.rstrip()
            ids += content_ids(content)
    return ids


def render_with_tokenizer(tokenizer, prompt: Prompt, model: str) -> list[int]:
    """Token ids of a prompt with a Hugging Face tokenizer (the transformers and vllm backends): chat messages
    through its chat template if it has one, else the pretrained transcript.

    Only the chat template makes special tokens: text, and every message's content, is read as plain text, so an
    answer that contains "<|im_end|>" cannot end its turn. (Added tokens that are not special, such as Gemma's runs
    of newlines, are ordinary text and stay as they are; the BOS a tokenizer adds still comes.)
    """

    def plain(text: str, add_special_tokens: bool = False) -> list[int]:
        return tokenizer(text, add_special_tokens=add_special_tokens, split_special_tokens=True)["input_ids"]

    if isinstance(prompt, str):
        return plain(prompt, add_special_tokens=True)
    if not getattr(tokenizer, "chat_template", None):
        return plain(render_transcript(prompt), add_special_tokens=True)
    return render_chat(
        prompt,
        lambda slots: tokenizer.apply_chat_template(slots, tokenize=False, add_generation_prompt=True),
        lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
        plain,
        model,
    )
