"""Wall time of the sl_generate stage on the embedded policy: one process, then a local Ray cluster (a head and a
worker node on this machine's loopback addresses, one CPU each) with one and with two workers, then two workers of
which one is killed mid-chunk once a chunk is on disk.

Every arm runs the whole stage through the pipeline into a fresh run directory, with the same prompts, settings and
seed; its time includes loading the model (in the driver for the context checks, and in each worker). The ids each
arm completed are compared with the one-process run's, and counted on disk line by line (a reader would hide a
duplicate). A Ray worker reserves one CPU and Ray runs it with one torch thread; the one-process arm uses the
machine's torch default (every core).

    .venv/bin/python benchmarks/ray_stages.py --prompts 8 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer

from constitutional import pipeline
from constitutional.engine.testing import LocalCluster, local_cluster
from constitutional.models.embedded import resolve
from constitutional.recipe import load_recipe
from constitutional.records import SLRecord
from constitutional.runview import RunView


@dataclass
class Arm:
    name: str
    seconds: float
    ids: list[str]  # every id on disk, as often as it is written
    tokens: int  # generated tokens in the records (answers, critiques, revisions)
    first: float  # seconds until the first chunk was on disk (models loaded, one chunk done)
    note: str = ""


def _generated_tokens(run_dir: Path, tokenizer) -> int:
    records = RunView(run_dir).records("sl_generate", SLRecord)
    texts = [
        text
        for r in records
        for text in [r.initial, *(s.critique or "" for s in r.steps), *(s.revision for s in r.steps)]
    ]
    return sum(len(tokenizer(text, add_special_tokens=False).input_ids) for text in texts)


def _slug(name: str) -> str:
    return name.replace(",", "").replace(" ", "-")


def _ids_on_disk(folder: Path) -> list[str]:
    ids = []
    for path in [*folder.glob("part-*.jsonl"), *folder.glob("rejected-*.jsonl")]:
        ids += [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line]
    return ids


def _recipe(args: argparse.Namespace, run_dir: Path, engine: dict) -> Path:
    recipe = {
        "run_dir": str(run_dir),
        "seed": 0,
        "models": {"policy": {"name": args.policy}},
        "sl": {
            "helpful_prompts": None,
            "max_prompts": args.prompts,
            "num_revisions": args.revisions,
            "num_demonstrations": 1,
            "chunk_size": args.chunk_size,
            "sampling": {"max_new_tokens": args.max_new_tokens},
        },
        "engine": engine,
    }
    path = run_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def _run(
    args, folder: Path, name: str, engine: dict, tokenizer, cluster: LocalCluster | None = None, kill: bool = False
) -> Arm:
    run_dir = folder / _slug(name)
    recipe = load_recipe(_recipe(args, run_dir, engine))
    killed: list[int] = []
    watcher = None
    if kill:
        stage = run_dir / "sl_generate"
        watcher = threading.Thread(target=lambda: killed.append(cluster.kill_a_busy_worker(stage, chunks=1)))
        watcher.start()
    began = time.monotonic()
    first: list[float] = []
    stop = threading.Event()

    def first_chunk() -> None:
        while not stop.wait(0.05):
            if _ids_on_disk(run_dir / "sl_generate"):
                first.append(time.monotonic() - began)
                return

    timer = threading.Thread(target=first_chunk)
    timer.start()
    pipeline.run(recipe, ["sl_generate"])
    seconds = time.monotonic() - began
    stop.set()
    timer.join()
    note = ""
    if watcher is not None:
        watcher.join()
        chunks = len(list((run_dir / "sl_generate").glob("part-chunk-*.jsonl")))
        note = f"worker pid {killed[0]} killed after the first chunk; Ray restarted it; {chunks} chunk files"
    assert RunView(run_dir).is_complete("sl_generate")
    tokens = _generated_tokens(run_dir, tokenizer)
    return Arm(name, seconds, _ids_on_disk(run_dir / "sl_generate"), tokens, first[0] if first else seconds, note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=8, help="First N built-in red-team prompts.")
    parser.add_argument("--revisions", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=2, help="Prompts per chunk: the unit handed to a worker.")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="ray-stages-"))
    tokenizer = AutoTokenizer.from_pretrained(resolve(args.policy))
    load = os.getloadavg()
    local = {"kind": "local"}
    arms = [_run(args, folder, f"one process, {torch.get_num_threads()} torch threads", local, tokenizer)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each Ray worker gets: one CPU, one thread
    arms.append(_run(args, folder, "one process, 1 torch thread", local, tokenizer))
    torch.set_num_threads(threads)
    with local_cluster(nodes=2, cpus_per_node=1) as cluster:
        ray = {"kind": "ray", "address": cluster.address}
        arms.append(_run(args, folder, "ray, 1 worker", {**ray, "workers": 1}, tokenizer))
        arms.append(_run(args, folder, "ray, 2 workers", {**ray, "workers": 2}, tokenizer))
        arms.append(_run(args, folder, "ray, 2 workers, 1 killed", {**ray, "workers": 2}, tokenizer, cluster, True))
    expected = sorted({r.id for r in RunView(folder / _slug(arms[0].name)).records("sl_generate", SLRecord)})

    table = Table(
        title=f"sl_generate, {args.policy}: {args.prompts} prompts, {args.revisions} revision(s), "
        f"{args.max_new_tokens} tokens, chunks of {args.chunk_size}"
    )
    columns = ("arm", "wall s", "first chunk at s", "after it s", "tokens", "ids", "ids as one process", "each once")
    for column in (*columns, "note"):
        table.add_column(column)
    for arm in arms:
        table.add_row(
            arm.name,
            f"{arm.seconds:.1f}",
            f"{arm.first:.1f}",
            f"{arm.seconds - arm.first:.1f}",
            str(arm.tokens),
            str(len(set(arm.ids))),
            str(sorted(set(arm.ids)) == expected),
            str(len(arm.ids) == len(set(arm.ids))),
            arm.note,
        )
    console = Console(width=160)
    console.print(table)
    console.print(
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + f"; {os.cpu_count()} cores"
    )
    console.print(f"runs in {folder}")
    console.print(f"ratio: {arms[2].seconds / arms[3].seconds:.2f} (wall time, 1 worker / 2 workers)")


if __name__ == "__main__":
    main()
