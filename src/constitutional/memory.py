"""How much memory a model takes to run or train, estimated from its folder without loading it.

The shape comes from `config.json` and the tensor shapes in the safetensors headers (the first few kilobytes of each
weights file), so a 70B model is sized as fast as a tiny one. The estimates count what is held for the whole stage:

- weights: parameters x bytes per value of the dtype they are loaded in;
- training: float32 weights (the stages load them so, and mixed precision keeps float32 masters), plus for every
  trained value its float32 gradient and Adam's two float32 moments (12 bytes). With LoRA only the adapters are
  trained: rank x (inputs + outputs) values per linear layer (every linear layer but the output head, as peft's
  "all-linear" picks), plus whatever is trained in full beside them (a preference model's score head);
- KV cache: keys and values of every layer for every sequence of a batch: 2 x layers x sequences x tokens x
  key/value width (key/value heads x head size, the hidden size unless the model shares heads) x bytes per value;
  generating on the transformers backend adds the store of what earlier calls read, counted at its full budget.

Activations are left out: they depend on the batch's real lengths and on activation checkpointing.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from constitutional.errors import InputError

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GRADIENT_AND_ADAM = 12  # float32 gradient + Adam's first and second moments, per trained value
# 2-D weights that are not linear layers LoRA adapts: token and position embeddings, the output head.
_NOT_ADAPTED = ("embed", "wte", "wpe", "lm_head", "score")
# The transformers backend keeps the keys and values of the sequences its generation calls read, for prompts that
# continue them (models.kvcache.KeyValueStore), up to this budget. SmolLM2-135M keeps 23 KB per token (30 layers x
# keys and values x 3 heads x 64 x 2 bytes): 1 GiB holds ~46k tokens, the demo's 40-prompt chunk of ~600-token
# sequences three times over. A 7B model (128 KB per token) keeps ~8k.
GENERATION_STORE_BYTES = 2**30


@dataclass(frozen=True)
class ModelShape:
    """What the estimates need to know of a model."""

    parameters: int
    linear_shapes: tuple[tuple[int, int], ...]  # (outputs, inputs) of every linear layer LoRA would adapt
    layers: int
    hidden: int
    kv_width: int  # key/value heads x head size
    context: int | None  # positions the model was built for

    def lora_parameters(self, rank: int) -> int:
        return sum(rank * (outputs + inputs) for outputs, inputs in self.linear_shapes)


def _header(path: Path) -> dict:
    """The JSON header of a safetensors file: each tensor's dtype and shape."""
    with path.open("rb") as file:
        (size,) = struct.unpack("<Q", file.read(8))
        return json.loads(file.read(size))


def _tensor_shapes(folder: Path) -> dict[str, list[int]]:
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else None
    paths = [folder / name for name in files] if files else sorted(folder.glob("*.safetensors"))
    if not paths:
        raise InputError("no *.safetensors weights to size the model from", path=folder)
    shapes = {}
    for path in paths:
        shapes |= {name: entry["shape"] for name, entry in _header(path).items() if name != "__metadata__"}
    return shapes


def read_shape(folder: str | Path) -> ModelShape:
    """The shape of the model saved in `folder` (config.json + safetensors), read without loading any weight."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config = config.get("text_config", config)  # a multimodal model's language part holds the layers
    shapes = _tensor_shapes(folder)
    heads = config["num_attention_heads"]
    head_size = config.get("head_dim") or config["hidden_size"] // heads
    linear = tuple(
        (shape[0], shape[1])
        for name, shape in shapes.items()
        if len(shape) == 2 and name.endswith(".weight") and not any(part in name for part in _NOT_ADAPTED)
    )
    parameters = 0
    for shape in shapes.values():
        count = 1
        for size in shape:
            count *= size
        parameters += count
    return ModelShape(
        parameters=parameters,
        linear_shapes=linear,
        layers=config["num_hidden_layers"],
        hidden=config["hidden_size"],
        kv_width=config.get("num_key_value_heads", heads) * head_size,
        context=config.get("max_position_embeddings"),
    )


def weights_bytes(shape: ModelShape, dtype: str) -> int:
    return shape.parameters * BYTES[dtype]


def training_state_bytes(shape: ModelShape, lora_rank: int | None, trained_in_full: int = 0) -> int:
    """Gradients and optimizer state (and the adapters themselves, with LoRA) beside float32 weights."""
    if lora_rank is None:
        return shape.parameters * GRADIENT_AND_ADAM
    trained = shape.lora_parameters(lora_rank) + trained_in_full
    return trained * (BYTES["float32"] + GRADIENT_AND_ADAM)


def kv_cache_bytes(shape: ModelShape, sequences: int, tokens: int, dtype: str) -> int:
    if shape.context is not None:
        tokens = min(tokens, shape.context)
    return 2 * shape.layers * sequences * tokens * shape.kv_width * BYTES[dtype]


def gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**27 else f"{size / 2**20:.1f} MiB"
