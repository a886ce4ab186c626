"""`cai run RECIPE --dry-run`: everything a run needs, checked before any work, and the memory each stage takes.

Every model a stage loads is resolved (embedded names, local folders, Hugging Face ids in the local cache), every
server of `backend: openai` is asked for its model list, every input file is read, the run directory is checked,
and each stage's memory is estimated from its models' shapes (`memory`). Problems are collected rather than raised
one at a time, so one dry run lists them all. Nothing is written: not the run directory, not the model cache (an
embedded model not converted yet is sized once its first use has converted it).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from constitutional import memory, pipeline
from constitutional.errors import InputError
from constitutional.models import ModelSpec, check_model
from constitutional.models import embedded as names
from constitutional.recipe import Recipe
from constitutional.runview import MANIFEST, RunView
from constitutional.sources import source_path
from constitutional.stages import STAGES, StageDef, local_fingerprint, upstream_hashes
from constitutional.store import config_hash, refuse_foreign

SERVER_TIMEOUT = 5.0  # seconds for a server's model list: a live server answers in milliseconds
# Prompt tokens assumed per sequence for the KV cache, beside the tokens a stage generates: a prompt with its few-shot
# demonstrations and an earlier answer (critique and revision requests carry one). A real prompt may be shorter.
PROMPT_TOKENS = 1024
TRAINED = ("trains", "reference", "rewards")  # loaded in float32 by the training stages


@dataclass(frozen=True)
class Use:
    """One model a stage holds in memory, and what it does with it."""

    place: str  # the recipe field that names it
    spec: ModelSpec
    work: str  # generates | scores | trains | reference | rewards
    group: str = "stage"  # models of one group are in memory together; the stage's peak is its largest group
    sequences: int = 0  # KV cache: sequences in a batch
    tokens: int = 0  # ... and tokens in each
    lora_rank: int | None = None  # trains: LoRA rank, None for full fine-tuning
    score_head: bool = False  # a preference model: a new score head, trained in full

    @property
    def dtype(self) -> str:
        # "auto" loads bfloat16 on CPUs and recent GPUs, float16 on older ones: 2 bytes either way.
        return "float32" if self.work in TRAINED else "bfloat16" if self.spec.dtype == "auto" else self.spec.dtype


@dataclass
class Row:
    use: Use
    where: str  # a device, or the server that holds the model
    weights: int | None = None
    training: int | None = None
    kv: int | None = None
    note: str = ""  # why it is not sized
    served: bool = False

    @property
    def total(self) -> int | None:
        if self.weights is None:
            return None
        return self.weights + (self.training or 0) + (self.kv or 0)


@dataclass
class StagePlan:
    name: str
    action: str
    rows: list[Row]

    @property
    def peak(self) -> int | None:
        """Bytes of the largest group of models held together (None when a model could not be sized)."""
        local = [row for row in self.rows if not row.served]
        if any(row.total is None for row in local):
            return None
        return max(_group_totals(local).values(), default=0)


def _group_totals(rows: list[Row]) -> dict[tuple[str, str], int]:
    """Bytes per (where, group) of the rows that are sized."""
    totals: dict[tuple[str, str], int] = {}
    for row in rows:
        if row.total is not None:
            key = (row.where, row.use.group)
            totals[key] = totals.get(key, 0) + row.total
    return totals


@dataclass
class Plan:
    stages: list[StagePlan] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    servers: dict[str, tuple[str, ...] | InputError] = field(default_factory=dict)  # each asked once


# ---- which models each stage holds ----------------------------------------------------------------------------


def _rank(settings) -> int | None:
    return settings.lora_r if settings.lora else None


def uses(recipe: Recipe, stage: str) -> list[Use]:
    """The models `stage` holds in memory, with the batch and length its settings give them."""
    models, policy = recipe.models, ("models.policy", recipe.models.policy)
    pm = ("pm.base_model", ModelSpec(name=recipe.pm.base_model))
    generating = {"sequences": models.policy.batch_size}
    if stage == "sl_generate":
        return [Use(*policy, "generates", **generating, tokens=PROMPT_TOKENS + recipe.sl.sampling.max_new_tokens)]
    if stage == "sl_train":
        return [Use(*policy, "trains", lora_rank=_rank(recipe.sl_train))]
    if stage == "rl_sample":  # the SL-CAI model, when it answers, has the policy's shape
        return [Use(*policy, "generates", **generating, tokens=PROMPT_TOKENS + recipe.sample.sampling.max_new_tokens)]
    if stage == "rl_label":
        # The question holds both answers of a pair; a chain of thought is generated before the choice is scored.
        cot = recipe.label.cot_sampling.max_new_tokens if recipe.label.cot else 0
        tokens = PROMPT_TOKENS + 2 * recipe.sample.sampling.max_new_tokens + cot
        return [Use("models.feedback", models.feedback, "scores", sequences=models.feedback.batch_size, tokens=tokens)]
    if stage == "pm_train":
        return [Use(*pm, "trains", lora_rank=_rank(recipe.pm), score_head=True)]
    if stage == "rl_train":
        return _rl_uses(recipe, policy, pm)
    if stage == "evaluate":
        return _evaluation_uses(recipe, policy, pm)
    return []


def _rl_uses(recipe: Recipe, policy: tuple[str, ModelSpec], pm: tuple[str, ModelSpec]) -> list[Use]:
    rl = recipe.rl
    online = rl.algo != "dpo"
    # RLOO and GRPO generate their completions with the policy being trained.
    tokens = PROMPT_TOKENS + rl.max_completion_length if online else 0
    found = [Use(*policy, "trains", sequences=rl.batch_size if online else 0, tokens=tokens, lora_rank=_rank(rl))]
    if not rl.lora and (rl.beta > 0 or not online):  # with LoRA the reference is the policy with adapters off
        found.append(Use(*policy, "reference"))
    if online:
        found.append(Use(*pm, "rewards", score_head=True))
    return found


def _evaluation_uses(recipe: Recipe, policy: tuple[str, ModelSpec], pm: tuple[str, ModelSpec]) -> list[Use]:
    """Candidates answer one at a time (the base policy, and the SL and RL models of its shape); then the judge
    rates, beside the preference model when the run trains one."""
    answer = {"tokens": PROMPT_TOKENS + recipe.evaluate.sampling.max_new_tokens}
    found = [Use(*policy, "generates", group="base, sl, rl", sequences=policy[1].batch_size, **answer)]
    for label, spec in recipe.evaluate.candidates.items():
        place = f"evaluate.candidates.{label}"
        found.append(Use(place, spec, "generates", group=label, sequences=spec.batch_size, **answer))
    judge = recipe.models.judge
    tokens = PROMPT_TOKENS + 2 * recipe.evaluate.sampling.max_new_tokens
    found.append(Use("models.judge", judge, "scores", group="judge", sequences=judge.batch_size, tokens=tokens))
    found.append(Use(*pm, "rewards", group="judge", score_head=True))
    return found


# ---- resolving models and servers -----------------------------------------------------------------------------


@functools.cache
def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def weights_folder(spec: ModelSpec, place: str) -> Path | None:
    """The folder a model's weights load from, found without converting or downloading anything; None for an
    embedded model not converted yet. An InputError naming `place` when there is no such model here."""
    if spec.name in names.EMBEDDED:
        names.check_embedded(spec.name)
        folder = names.cache_root() / spec.name
        return folder if (folder / "config.json").is_file() else None
    local = spec.model_copy(update={"backend": "transformers"})
    check_model(local, place)  # a folder without weights, remote code, an id with a half-downloaded cache
    try:
        return Path(names.resolve(spec.name))  # only an embedded name would be converted, and it is not one
    except InputError as err:
        raise InputError(str(err).split("\n")[0], field=f"{place}.name", hint=err.hint) from None


def served_models(spec: ModelSpec, place: str) -> tuple[str, ...]:
    """The model ids an OpenAI-compatible server lists at `base_url`/models; an InputError if it does not answer."""
    import httpx2

    base_url, api_key_env = spec.base_url, spec.api_key_env
    if not base_url:
        check_model(spec, place)  # says that base_url is missing
    url = base_url.rstrip("/") + "/models"
    key = os.environ.get(api_key_env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    hint = "start the server first (the recipe's comments give the command), or fix base_url"
    try:
        response = httpx2.get(url, headers=headers, timeout=SERVER_TIMEOUT)
    except httpx2.TimeoutException:
        raise InputError(
            f"no answer from {url} in {SERVER_TIMEOUT:g} s", field=f"{place}.base_url", hint=hint
        ) from None
    except httpx2.HTTPError as err:
        raise InputError(f"cannot reach {url} ({err})", field=f"{place}.base_url", hint=hint) from None
    if response.status_code in (401, 403):
        raise InputError(
            f"{url} refused the API key ({response.status_code})",
            field=f"{place}.api_key_env",
            hint=f"set {api_key_env} to the key the server was started with (`--api-key`)",
        )
    try:
        response.raise_for_status()
        return tuple(str(model["id"]) for model in response.json()["data"])
    except (httpx2.HTTPError, ValueError, KeyError, TypeError):
        raise InputError(
            f"{url} answered {response.status_code}, but not with an OpenAI model list",
            field=f"{place}.base_url",
            hint="base_url must end where the OpenAI API starts, e.g. http://HOST:8000/v1",
        ) from None


def _row(use: Use, plan: Plan, run_dir: Path) -> Row:
    """Where the use runs and what it takes, noting problems in `plan`."""
    spec = use.spec
    if spec.backend == "openai" and use.work not in TRAINED:
        if spec.base_url not in plan.servers:
            try:
                plan.servers[spec.base_url] = served_models(spec, use.place)
            except InputError as err:
                plan.servers[spec.base_url] = err
        served = plan.servers[spec.base_url]
        if isinstance(served, InputError):
            raise served
        if spec.name not in served:
            plan.warnings.append(
                f"field '{use.place}.name': {spec.base_url} serves {', '.join(served) or 'no model'}, not "
                f"'{spec.name}' (vLLM refuses other names; llama.cpp answers any)"
            )
        return Row(use, spec.base_url, note="on the server", served=True)
    if spec.backend == "llamacpp":
        return Row(use, "llama.cpp", note="a GGUF file run by llama.cpp: not sized here")
    # Training places itself (each process on its GPU, else the CPU); a recipe that names a GPU still needs one.
    device = ("cuda" if _gpu() else "cpu") if use.work in TRAINED or spec.device == "auto" else spec.device
    if spec.device.startswith("cuda") and not _gpu():
        plan.errors.append(
            f"field '{use.place}.device': '{spec.device}', but no CUDA GPU is visible to torch on this machine "
            "-> run on the GPU machine, or set device: auto (CPU here)"
        )
    if Path(spec.name).absolute().is_relative_to(run_dir):
        return Row(use, device, note="written by this run")
    folder = weights_folder(spec, use.place)
    if folder is None:
        return Row(use, device, note="embedded: sized once converted (on first use)")
    shape = memory.read_shape(folder)
    row = Row(use, device, weights=memory.weights_bytes(shape, use.dtype))
    if use.work == "trains":
        row.training = memory.training_state_bytes(shape, use.lora_rank, shape.hidden if use.score_head else 0)
    if use.sequences and use.tokens:
        row.kv = memory.kv_cache_bytes(shape, use.sequences, use.tokens, use.dtype)
        if use.work == "generates" and use.spec.backend == "transformers":
            row.kv += memory.GENERATION_STORE_BYTES  # the store fills up over a stage's calls
    return row


# ---- the plan -------------------------------------------------------------------------------------------------


def _check_files(recipe: Recipe, stage: StageDef, plan: Plan) -> None:
    """Every input file exists (named by its recipe field), parses, and the constitution loads."""
    section = getattr(recipe, stage.section) if stage.section else None
    missing = False
    for key, value in section or ():
        if isinstance(value, str) and value in stage.inputs(recipe) and not source_path(value).exists():
            plan.errors.append(f"field '{stage.section}.{key}': no such file: {value} -> fix the path")
            missing = True
    if missing:
        return
    try:
        local_fingerprint(recipe, stage)  # the constitution and every input file, hashed
        pipeline.check_input_files(recipe, stage)
    except InputError as err:
        plan.errors.append(str(err))


def _action(recipe: Recipe, stage: StageDef, view: RunView | None) -> str:
    """What `cai run` would do with the stage, from the manifest as it is now (read, never written)."""
    status = view.status(stage.name) if view else None
    if status is None:
        return "run"
    try:
        fingerprint = {**local_fingerprint(recipe, stage), "upstream": upstream_hashes(recipe, stage, view)}
    except InputError:
        return "run after its upstream"
    if status.config_hash != config_hash(fingerprint):
        return "redo: settings changed"
    if status.complete:
        return "skip: complete"
    return "restart" if stage.resume == "restart" else "resume"


def _check_run_dir(run_dir: Path, plan: Plan) -> RunView | None:
    try:
        refuse_foreign(run_dir)
    except InputError as err:
        plan.errors.append(f"field 'run_dir': {err}")
        return None
    existing = next(parent for parent in (run_dir, *run_dir.absolute().parents) if parent.exists())
    if not os.access(existing, os.W_OK):
        plan.errors.append(f"field 'run_dir': {existing} is not writable -> choose a --run-dir you can write to")
    return RunView(run_dir) if (run_dir / MANIFEST).is_file() else None


def _check_memory(stage: StagePlan, plan: Plan) -> None:
    """A stage whose models would not fit where they run is worth a warning (the estimate leaves out activations)."""
    import psutil

    needs: dict[str, int] = {}
    for (device, _), total in _group_totals([row for row in stage.rows if not row.served]).items():
        needs[device] = max(needs.get(device, 0), total)
    for device, needed in needs.items():
        if device.startswith("cuda"):
            if not _gpu():
                continue  # reported as an error already
            import torch

            free = torch.cuda.mem_get_info(torch.device(device))[0]
        else:
            free = psutil.virtual_memory().available
        if needed > free:
            plan.warnings.append(
                f"{stage.name}: needs about {memory.gib(needed)} on {device}, which has {memory.gib(free)} free"
            )


def _collect(plan: Plan, check, *args) -> None:
    try:
        check(*args)
    except InputError as err:
        plan.errors.append(str(err))


def _sized(use: Use, plan: Plan, run_dir: Path) -> Row:
    try:
        return _row(use, plan, run_dir)
    except InputError as err:
        plan.errors.append(str(err))
        served = use.spec.backend == "openai" and use.work not in TRAINED
        return Row(use, "-", note="no answer" if served else "not found", served=served)


def plan_run(recipe: Recipe, stage_names: list[str] | None = None) -> Plan:
    """Check everything the stages need and size them; reads only (files, headers, servers), writes nothing."""
    plan = Plan()
    stages = pipeline.wanted_stages(stage_names, STAGES)
    run_dir = Path(recipe.run_dir)
    view = _check_run_dir(run_dir, plan)
    _collect(plan, pipeline.check_upstream, recipe, stages)
    for stage in stages:
        _check_files(recipe, stage, plan)
        for place, spec in pipeline.stage_models(recipe, stage):  # what `cai run` checks of every stage it is given
            if not Path(spec.name).absolute().is_relative_to(run_dir.absolute()):
                _collect(plan, check_model, spec, place)
        action = _action(recipe, stage, view) if view else "run"
        held = [] if action.startswith("skip") else uses(recipe, stage.name)  # a skipped stage loads nothing
        stage_plan = StagePlan(stage.name, action, [_sized(use, plan, run_dir.absolute()) for use in held])
        _check_memory(stage_plan, plan)
        plan.stages.append(stage_plan)
    plan.errors = list(dict.fromkeys(plan.errors))  # a model several stages use is reported once
    return plan
