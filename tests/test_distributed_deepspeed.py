"""The DeepSpeed ZeRO configs of the GPU recipes, read by the code that reads them at launch.

DeepSpeed is not installed here (it trains on GPUs), so nothing trains under it in these tests. What is checked is
the file as `accelerate launch --deepspeed_config_file` reads it (accelerate's DeepSpeedPlugin), and as the
transformers Trainer completes it: every "auto" value filled from the training arguments our stages build from the
GPU recipes, with no value contradicting them.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from constitutional.finetuning import TrainingOutputs, trl_config
from constitutional.recipe import load_recipe

RECIPES = Path(__file__).parent.parent / "recipes"


def _autos(node, where: str = "") -> list[str]:
    """Every key still set to "auto", by dotted path."""
    if isinstance(node, dict):
        return [found for key, value in node.items() for found in _autos(value, f"{where}{key}.")]
    return [where.rstrip(".")] if node == "auto" else []


@pytest.fixture
def trainer_config():
    """transformers' HfTrainerDeepSpeedConfig, on the accelerate config class it builds on.

    Without the deepspeed package transformers defines that class over a bare `object`; its methods (which fill the
    "auto" values and collect contradictions) are the ones taken here, unchanged.
    """
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    methods = ("fill_match", "fill_only", "is_auto", "trainer_config_process", "trainer_config_finalize")

    class TrainerConfig(HfDeepSpeedConfig):
        def __init__(self, path: str):
            super().__init__(path)
            self._dtype, self.mismatches = None, []

    for name in methods:
        setattr(TrainerConfig, name, HfTrainerDeepSpeedConfig.__dict__[name])
    return TrainerConfig


@pytest.mark.parametrize(
    ("config_file", "stage", "recipe"), [("zero2.json", 2, "gpu.yaml"), ("zero3.json", 3, "gpu-multinode.yaml")]
)
def test_the_zero_config_is_read_by_accelerate_and_completed_by_the_trainer(
    config_file, stage, recipe, trainer_config, tiny_model_path, tmp_path
):
    from accelerate.utils import DeepSpeedPlugin
    from transformers import AutoConfig
    from trl import SFTConfig

    path = RECIPES / "deepspeed" / config_file
    plugin = DeepSpeedPlugin(hf_ds_config=str(path))  # what `accelerate launch --deepspeed_config_file` builds
    assert plugin.zero_stage == stage
    # ZeRO-3 keeps a slice of each weight per GPU: checkpoints hold whole 16-bit weights only with this set.
    assert plugin.zero3_save_16bit_model is (stage == 3)

    settings = load_recipe(RECIPES / recipe).sl_train
    outputs = TrainingOutputs(model_dir=tmp_path / "model", checkpoint_dir=tmp_path / "checkpoints")
    args = trl_config(SFTConfig, settings, outputs, seed=0, max_length=settings.max_length)
    config = trainer_config(str(path))
    config.trainer_config_process(args)
    model = SimpleNamespace(config=AutoConfig.from_pretrained(tiny_model_path))
    config.trainer_config_finalize(args, model, num_training_steps=100)  # raises on a value that contradicts args

    assert _autos(config.config) == []
    assert config.get_value("train_micro_batch_size_per_gpu") == settings.batch_size
    assert config.get_value("train_batch_size") == settings.batch_size * settings.gradient_accumulation_steps
    assert config.get_value("zero_optimization.reduce_bucket_size") == model.config.hidden_size**2
    assert _autos(json.loads(path.read_text())), "the file itself leaves the shared settings to the trainer"


def test_a_zero_config_that_contradicts_the_recipe_is_refused_by_the_trainer(trainer_config, tmp_path):
    from trl import SFTConfig

    config_file = tmp_path / "fixed.json"
    settings = json.loads((RECIPES / "deepspeed" / "zero2.json").read_text())
    config_file.write_text(json.dumps({**settings, "train_micro_batch_size_per_gpu": 3}))
    recipe = load_recipe(RECIPES / "gpu.yaml").sl_train
    outputs = TrainingOutputs(model_dir=tmp_path / "model", checkpoint_dir=tmp_path / "checkpoints")
    args = trl_config(SFTConfig, recipe, outputs, seed=0)
    config = trainer_config(str(config_file))
    config.trainer_config_process(args)
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=64))
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu=3"):
        config.trainer_config_finalize(args, model, num_training_steps=100)
