"""Classifier folders: weights as safetensors, a config JSON with the calibrated threshold, a model card; and the one
loader the guard and the evaluation use.

    input/   model.safetensors + config.json (the fine-tuned encoder and its head), tokenizer files,
             classifier.json (threshold, max_length, training summary), README.md (the card)
    output/  head.safetensors (the value head only), classifier.json (backbone name, layer, head shape, the
             backbone's fingerprint, threshold, training summary), README.md

The output classifier's backbone is not copied: it is frozen, so the folder names it and loading resolves the name
through `constitutional.models` (an embedded model, a local folder, a model in the local Hugging Face cache; nothing
is downloaded), then checks it is the very model the head was trained on. A folder is written beside its final
place and renamed into it, so a kill mid-save leaves no half-written classifier.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from constitutional.classifiers.input_model import InputModel, TrainedInput, TrainingSummary
from constitutional.classifiers.stream_model import StreamModel, ValueHead, backbone_fingerprint
from constitutional.classifiers.stream_training import TrainedStream
from constitutional.errors import InputError
from constitutional.models.hf import TransformersModel

INPUT_DIR, OUTPUT_DIR = "input", "output"  # the two classifiers inside a folder `load_classifiers` reads
CONFIG_FILE = "classifier.json"
HEAD_FILE = "head.safetensors"
CARD_FILE = "README.md"
FORMAT_VERSION = 1


# ---- the model card ------------------------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


_INTENDED = {
    "input": "Screens a conversation before the model answers it: flags requests for the restricted content the "
    "classifier constitution describes, and names the most likely restricted category.",
    "output": "Scores an answer token by token while it streams and stops it once the running maximum of its scores "
    "crosses the threshold. Attached to the model it was trained on it reads that model's own hidden states "
    "(one small head per token); in front of another model it runs its backbone incrementally on the answer.",
}


def model_card(summary: TrainingSummary) -> str:
    """README.md of a classifier folder: what it was trained on, its threshold and calibration figures, its use and
    its limits."""
    threshold = summary.threshold
    calibration = summary.calibration
    lines = [
        f"# Constitutional classifier: {summary.kind}",
        "",
        f"Backbone: `{summary.backbone}`. Trained by `constitutional` on {summary.train_examples} synthetic examples "
        f"({summary.train_restricted} restricted), {summary.excluded_contested} contested examples left out; "
        f"{summary.seconds:.0f} s; final training loss {_number(summary.final_loss)}.",
        "",
        "## Intended use",
        "",
        _INTENDED[summary.kind],
        "",
        "## Training data",
        "",
        f"- Restricted categories: {', '.join(summary.categories) or 'none'}",
        f"- Jailbreak wrapper families seen in training: {', '.join(summary.wrappers)}",
        "",
        "## Threshold",
        "",
        f"Flags a score above **{threshold.value:.4f}**, calibrated to a false-positive rate of "
        f"{_percent(threshold.target_fpr)} on {threshold.benign_count} held-out benign examples (achieved "
        f"{_percent(threshold.achieved_fpr)})."
        + (
            "" if threshold.resolvable else " Too few benign examples to resolve that rate: no false positive allowed."
        ),
    ]
    if calibration is not None:
        lines += [
            "",
            "## Calibration split at the threshold",
            "",
            "| examples | restricted | recall | FPR | near-neighbour FPR | AUROC | AUPRC |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| {calibration.count} | {calibration.positives} | {_percent(calibration.recall)} | "
            f"{_percent(calibration.fpr)} | {_percent(calibration.near_neighbour_fpr)} | "
            f"{_number(calibration.auroc)} | {_number(calibration.auprc)} |",
            "",
            "These examples come from the same synthetic generator as the training data; the evaluation on the "
            "hand-written set (`cai clf eval`) is the figure to trust.",
        ]
    lines += [
        "",
        "## Limits",
        "",
        "- Trained on synthetic data written by a small model from the classifier constitution: it knows the "
        "categories as that model phrased them, and wrappers or languages unlike the training ones may pass.",
        "- The threshold holds its false-positive rate on data like the calibration split; other traffic has other "
        "rates. Recalibrate on your own benign traffic.",
        "- A screen, not a guarantee: pair it with the other classifier, rate limits and human review.",
        "",
    ]
    return "\n".join(lines)


# ---- saving ---------------------------------------------------------------------------------------------------------


def _write_folder(folder: Path, fill) -> Path:
    """Assemble the folder beside its place with `fill(staging)`, then move it in (replacing an older one)."""
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    fill(staging)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def _config(kind: str, summary: TrainingSummary, **fields: Any) -> str:
    return json.dumps(
        {"format_version": FORMAT_VERSION, "kind": kind, **fields, "summary": summary.model_dump(mode="json")},
        indent=2,
    )


def save_input_classifier(trained: TrainedInput, folder: str | Path) -> Path:
    """The fine-tuned encoder (safetensors), its tokenizer, classifier.json and the model card."""
    classifier = trained.classifier

    def fill(staging: Path) -> None:
        classifier.model.save_pretrained(staging, safe_serialization=True)
        classifier.tokenizer.save_pretrained(staging)
        config = _config("input", trained.summary, threshold=classifier.threshold, max_length=classifier.max_length)
        (staging / CONFIG_FILE).write_text(config, encoding="utf-8")
        (staging / CARD_FILE).write_text(model_card(trained.summary), encoding="utf-8")

    return _write_folder(Path(folder), fill)


def save_output_classifier(trained: TrainedStream, folder: str | Path) -> Path:
    """The value head (safetensors), classifier.json naming and fingerprinting its backbone, and the model card."""
    from safetensors.torch import save_file

    classifier = trained.classifier

    def fill(staging: Path) -> None:
        save_file({k: v.contiguous() for k, v in classifier.head.state_dict().items()}, str(staging / HEAD_FILE))
        settings = trained.summary.settings
        config = _config(
            "output",
            trained.summary,
            threshold=classifier.threshold,
            backbone=trained.summary.backbone,
            dtype=settings["dtype"],
            layer=classifier.layer,
            head_hidden=settings["head_hidden"],
            width=classifier.lm.model.config.hidden_size,
            fingerprint=classifier.fingerprint,
        )
        (staging / CONFIG_FILE).write_text(config, encoding="utf-8")
        (staging / CARD_FILE).write_text(model_card(trained.summary), encoding="utf-8")

    return _write_folder(Path(folder), fill)


# ---- loading --------------------------------------------------------------------------------------------------------


def _read_config(folder: Path, kind: str) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise InputError(
            f"not a saved {kind} classifier: {CONFIG_FILE} is missing",
            path=folder,
            hint="train one with `cai clf train`",
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise InputError(f"unreadable JSON: {err}", path=path) from None
    if config.get("kind") != kind:
        raise InputError(f"holds a {config.get('kind')!r} classifier, not an {kind} one", path=path, field="kind")
    if config.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"format version {config.get('format_version')} is not {FORMAT_VERSION}",
            path=path,
            field="format_version",
            hint="retrain the classifier with this version of constitutional",
        )
    return config


def load_input_classifier(folder: str | Path) -> InputModel:
    """The input classifier saved in `folder`, with its calibrated threshold; reads local files only."""
    from constitutional.finetuning import load_score_model, load_tokenizer

    folder = Path(folder)
    config = _read_config(folder, "input")
    model = load_score_model(folder, local_files_only=True)
    tokenizer = load_tokenizer(folder, local_files_only=True)
    return InputModel(model, tokenizer, config["max_length"], threshold=config["threshold"])


def load_output_classifier(folder: str | Path, backbone: TransformersModel | None = None) -> StreamModel:
    """The output classifier saved in `folder`. `backbone` shares an already loaded model (the policy, when the
    classifier was trained on it); otherwise the backbone the folder names is loaded, without the layers after the
    one the head reads. Either way it must be the model the head was trained on."""
    from safetensors.torch import load_file

    from constitutional.classifiers.settings import StreamClassifierSettings
    from constitutional.classifiers.stream_model import drop_layers_after
    from constitutional.classifiers.stream_training import load_backbone

    folder = Path(folder)
    config = _read_config(folder, "output")
    if backbone is None:
        backbone = load_backbone(StreamClassifierSettings(backbone=config["backbone"], dtype=config["dtype"]))
        drop_layers_after(backbone.model, config["layer"])  # its own backbone: only the head reads it
    if backbone_fingerprint(backbone.model, config["layer"]) != config["fingerprint"]:
        raise InputError(
            f"the head in {folder} was trained on other weights than those of {backbone.name}",
            field="backbone",
            hint=f"load it with the model it was trained on ({config['backbone']})",
        )
    head = ValueHead(config["width"], config["head_hidden"])
    head.load_state_dict(load_file(str(folder / HEAD_FILE)))
    return StreamModel(backbone, head, config["layer"], threshold=config["threshold"])


def load_classifiers(folder: str | Path, backbone: TransformersModel | None = None) -> tuple[InputModel, StreamModel]:
    """Both classifiers of a folder holding `input/` and `output/`, for the guard."""
    folder = Path(folder)
    return load_input_classifier(folder / INPUT_DIR), load_output_classifier(folder / OUTPUT_DIR, backbone)
