"""The exports read by verl's and OpenRLHF's own code, and the reward files called the way each framework calls them.

verl 0.9.1 and OpenRLHF 0.11.2 are installed with `--no-deps` (`make install-dev`; their pins conflict with ours).
verl's package `__init__` starts its distributed runtime (Ray, tensordict), which we do not install, so its modules
are loaded here without running that `__init__`: `RLHFDataset` (its RL data loader) and `load_extern_object` (how it
loads `custom_reward_function.path`) are verl's own code. Its multi-turn SFT dataset does not import under our
transformers version, so that file is checked against the keys verl's shipped SFT config names.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import sys
import threading
import time
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from test_export import ask, build_run
from test_rl import build_preference_model

from constitutional.models.local_server import free_port
from constitutional.reward import PreferenceModel

ANSWER = "Mix flour, water, salt and yeast, then knead and bake."


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_path) -> Path:
    from constitutional.export.writer import export_run, reward_spec

    root = tmp_path_factory.mktemp("frameworks")
    run = build_run(root / "run", build_preference_model(root / "pm", tiny_model_path))
    spec = reward_spec("pm", run, None, "compare")
    for fmt in ("verl", "openrlhf"):
        export_run(run, fmt, root / fmt, test_share=0.3, reward=spec)
    return root


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def pm_score(exported: Path, record_id: str, answer: str = ANSWER) -> float:
    return PreferenceModel(exported / "run" / "preference_model").score([ask(record_id)], [answer])[0]


@pytest.mark.parametrize("fmt", ["verl", "openrlhf"])
def test_every_path_the_readme_names_exists(exported, fmt):
    folder = (exported / fmt).resolve()
    named = re.findall(re.escape(folder.as_posix()) + r"[^\s`\"']*", (folder / "README.md").read_text())
    assert len(named) >= 3 and all(Path(path).exists() for path in named), named


# ---- verl --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def verl():
    """verl's modules, loaded without its package __init__ (which imports Ray)."""
    spec = importlib.util.find_spec("verl")
    assert spec is not None, "verl is not installed: `make install-dev` installs it with --no-deps"
    saved = {name: module for name, module in sys.modules.items() if name == "verl" or name.startswith("verl.")}
    package = types.ModuleType("verl")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["verl"] = package
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.import_utils import load_extern_object

    yield SimpleNamespace(
        RLHFDataset=RLHFDataset, load_extern_object=load_extern_object, root=Path(package.__path__[0])
    )
    for name in [n for n in sys.modules if n == "verl" or n.startswith("verl.")]:
        del sys.modules[name]
    sys.modules.update(saved)


def test_verl_reads_the_prompts_with_its_rlhf_dataset(verl, exported, tokenizer, tmp_path):
    from omegaconf import OmegaConf

    config = OmegaConf.create(
        {"prompt_key": "prompt", "max_prompt_length": 256, "cache_dir": str(tmp_path), "filter_overlong_prompts": True}
    )
    manifest = json.loads((exported / "verl" / "export.json").read_text())
    for split in ("train", "test"):
        files = [str(exported / "verl" / "prompts" / f"{split}.parquet")]
        dataset = verl.RLHFDataset(data_files=files, tokenizer=tokenizer, config=config)
        assert len(dataset) == manifest["files"][f"prompts/{split}.parquet"]
        items = [dataset[i] for i in range(len(dataset))]
        assert [item["index"] for item in items] == list(range(len(items)))
        for item in items:
            info = item["extra_info"]
            assert item["raw_prompt"] == ask(info["id"]) == info["conversation"]
            assert info["split"] == split and item["data_source"] == f"constitutional/{info['kind']}"
            assert item["reward_model"]["style"] == "model" and item["ability"] in ("harmlessness", "helpfulness")
    by_id = {item["extra_info"]["id"]: item for item in items}
    train = verl.RLHFDataset(
        data_files=[str(exported / "verl/prompts/train.parquet")], tokenizer=tokenizer, config=config
    )
    by_id |= {train[i]["extra_info"]["id"]: train[i] for i in range(len(train))}
    assert by_id["r4"]["reward_model"]["ground_truth"] == "final r4"  # the run's answer: the judge's reference


def test_verl_loads_the_reward_file_and_scores_a_dataset_row(verl, exported, tokenizer, tmp_path):
    from omegaconf import OmegaConf

    path = str(exported / "verl" / "verl_reward.py")
    compute_score = verl.load_extern_object(module_path=path, object_name="compute_score")
    config = OmegaConf.create({"prompt_key": "prompt", "cache_dir": str(tmp_path)})
    dataset = verl.RLHFDataset(
        data_files=[str(exported / "verl/prompts/train.parquet")], tokenizer=tokenizer, config=config
    )
    row = dataset[0]
    # As verl's reward loop calls a custom reward: keyword arguments, one completion.
    result = compute_score(
        data_source=row["data_source"],
        solution_str=ANSWER,
        ground_truth=row["reward_model"]["ground_truth"],
        extra_info=row["extra_info"],
    )
    assert result["score"] == pytest.approx(pm_score(exported, row["extra_info"]["id"]), abs=1e-5)
    # As its batch reward manager calls it: plural keyword arguments, lists.
    batch = verl.load_extern_object(module_path=path, object_name="compute_score_batch")
    rows = [dataset[i] for i in range(2)]
    scores = batch(
        data_sources=[r["data_source"] for r in rows],
        solution_strs=[ANSWER, "No."],
        ground_truths=[r["reward_model"]["ground_truth"] for r in rows],
        extra_infos=[r["extra_info"] for r in rows],
    )
    assert [s["score"] for s in scores] == pytest.approx(
        [pm_score(exported, rows[0]["extra_info"]["id"]), pm_score(exported, rows[1]["extra_info"]["id"], "No.")],
        abs=1e-5,
    )


def test_verl_sft_file_has_the_keys_verls_sft_config_reads(verl, exported):
    import pyarrow.parquet as pq

    sft_config = yaml.safe_load((verl.root / "trainer/config/sft_trainer_engine.yaml").read_text())
    ppo_config = yaml.safe_load((verl.root / "trainer/config/_generated_ppo_trainer.yaml").read_text())
    assert ppo_config["data"]["prompt_key"] == "prompt" and ppo_config["data"]["reward_fn_key"] == "data_source"
    rows = pq.read_table(exported / "verl" / "sft" / "train.parquet").to_pylist()
    key = sft_config["data"]["messages_key"]
    assert rows and all(row[key][-1]["role"] == "assistant" and row[key][0]["role"] == "user" for row in rows)
    assert not (exported / "verl" / "preference").exists()


# ---- OpenRLHF ----------------------------------------------------------------------------------------------------


def strategy(**data) -> SimpleNamespace:
    """The part of OpenRLHF's training strategy its datasets read: the --data.* arguments and rank checks."""
    args = SimpleNamespace(data=SimpleNamespace(tokenizer_chat_template=None, **data), use_ms=False)
    return SimpleNamespace(args=args, is_rank_0=lambda: True, print=lambda *a, **k: None)


def test_openrlhf_reads_the_prompts_and_its_executor_calls_the_reward_file(exported, tokenizer):
    from openrlhf.datasets import PromptDataset
    from openrlhf.datasets.utils import blending_datasets
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    args = strategy(input_key="input", label_key="label", apply_chat_template=True)
    data = blending_datasets(str(exported / "openrlhf" / "prompts"), strategy=args)
    dataset = PromptDataset(data, tokenizer, args)
    datasource, prompt, label, _ = dataset[0]
    record = json.loads(label)
    assert datasource == f"constitutional/{record['kind']}" and record["conversation"] == ask(record["id"])
    assert prompt == tokenizer.apply_chat_template(record["conversation"], tokenize=False, add_generation_prompt=True)
    executor = SingleTurnAgentExecutor(remote_rm_url=str(exported / "openrlhf" / "openrlhf_reward.py"))
    query = prompt + ANSWER + tokenizer.eos_token  # what OpenRLHF decodes: prompt, answer, special tokens kept
    (result,) = asyncio.run(executor._fetch_rewards_via_func([query], [prompt], [label]))
    assert result["rewards"].tolist() == pytest.approx([pm_score(exported, record["id"])], abs=1e-5)


def test_openrlhf_reads_the_preference_and_sft_files(exported, tokenizer):
    from openrlhf.datasets import RewardDataset, SFTDataset
    from openrlhf.datasets.utils import blending_datasets

    args = strategy(prompt_key="prompt", chosen_key="chosen", rejected_key="rejected", apply_chat_template=True)
    data = blending_datasets(str(exported / "openrlhf" / "preference"), strategy=args)
    pairs = RewardDataset(data, tokenizer, 256, args, num_processors=1)
    assert len(pairs) == sum(n for f, n in _files(exported).items() if f.startswith("preference/train"))
    assert all(pairs.chosens[i].startswith(data[i]["chosen"][0]["content"]) for i in range(len(pairs)))
    args = strategy(input_key="input", output_key="output", apply_chat_template=True)
    data = blending_datasets(str(exported / "openrlhf" / "sft"), strategy=args)
    sft = SFTDataset(data, tokenizer, 256, args, num_processors=1)
    assert len(sft) == len(data) and sft.responses[0].startswith(data[0]["output"][0]["content"])


def _files(exported: Path) -> dict[str, int]:
    return json.loads((exported / "openrlhf" / "export.json").read_text())["files"]


def test_openrlhf_http_reward_answers_its_client(exported):
    import uvicorn
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    from constitutional.export.openrlhf_reward import reward_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(reward_app(exported / "openrlhf" / "reward.json"), port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        executor = SingleTurnAgentExecutor(remote_rm_url=f"http://127.0.0.1:{port}/get_reward")
        labels = [json.dumps({"id": i, "kind": "red_team", "conversation": ask(i)}) for i in ("r0", "r1")]
        queries = [f"P{i}:{answer}" for i, answer in enumerate([ANSWER, "No."])]
        (result,) = asyncio.run(executor._fetch_rewards_via_http(queries, ["P0:", "P1:"], labels))
        assert result["rewards"] == pytest.approx(
            [pm_score(exported, "r0"), pm_score(exported, "r1", "No.")], abs=1e-5
        )
        assert set(result) == {"rewards", "scores", "extra_logs"}
        import httpx2

        bad = httpx2.post(
            f"http://127.0.0.1:{port}/get_reward", json={"query": ["x"], "prompts": ["x"], "labels": ["?"]}
        )
        assert bad.status_code == 400 and "label" in bad.json()["error"]["message"]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
