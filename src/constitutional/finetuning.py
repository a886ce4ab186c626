"""LoRA settings shared by every training stage (SFT, preference model, RL)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LoraSettings(BaseModel):
    """LoRA adapters on all linear layers, merged into the weights on save; or full fine-tuning."""

    model_config = ConfigDict(extra="forbid")

    lora: bool = Field(default=True, description="LoRA adapters (merged on save); false for full fine-tuning.")
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)

    def peft_config(self, task_type: str, modules_to_save: list[str] | None = None):
        """A peft LoraConfig for the trainer, or None for full fine-tuning."""
        if not self.lora:
            return None
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules="all-linear",
            modules_to_save=modules_to_save,
            task_type=task_type,
        )
