"""Tokens/s and time to first token of one model server, called directly and through the guard.

The upstream is llama-cpp-python's OpenAI-compatible server with the embedded SmolLM2 (or `--upstream URL`); the
guard runs in its own process in front of it with its default settings (hold-back 8 tokens; the output classifier's
steps and torch threads as `--step-tokens` and `--classifier-threads` say, by default the guard's), with trained
classifiers (`--classifiers DIR`, through `cai guard serve`) or keyword classifiers. Both arms send the same
prompts (the first of `builtin:eval-helpful`: ordinary requests that no classifier data is made from, unlike the
classifiers' general pool `builtin:helpful`) with the same settings (greedy, `--max-tokens`) as streamed chat
requests, at concurrency 1 and 8. A round sends every prompt twice per arm, in the order direct, guard, guard,
direct, so that a machine slowing down or speeding up during the round weighs on both arms alike; the table sums
`--rounds` rounds (3), and the overhead of each round is printed too, for the run's spread. Tokens are the
content chunks received (llama.cpp sends one token per chunk; greedy decoding makes both arms' answers the same);
tokens/s is all tokens an arm received over the wall time of its requests; time to first token is from sending a
request to its first content chunk. An answer the guard halts (`halted`: on these benign prompts, a false positive)
brings fewer tokens, which counts against the guard's tokens/s; the wall time beside it shows what the guard's
scoring itself cost. The CPU seconds each server process used during each arm show where the time went, and the
guard's CPU per relayed token is its own cost, whatever else the machine is running. The last line is the guard's
tokens/s overhead at concurrency 8. By default the two servers share the machine's cores; `--own-cores` pins the
model server to core 0 and the guard to core 1 in both arms (llama-cpp-python decodes on one thread by default).

    .venv/bin/python benchmarks/guard_overhead.py                     # 16 prompts, 64 tokens each, 3 rounds
    .venv/bin/python benchmarks/guard_overhead.py --classifiers runs/classifiers/model
    .venv/bin/python benchmarks/guard_overhead.py --classifiers runs/classifiers/model --own-cores
    .venv/bin/python benchmarks/guard_overhead.py --classifiers runs/classifiers/model --step-tokens 1  # as before
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import psutil
from guard_processes import guard_server, llama_server
from rich.console import Console
from rich.table import Table

from constitutional.guard.settings import GuardSettings
from constitutional.models.local_server import free_port, server_process
from constitutional.sources import load_prompts

PROMPTS = "builtin:eval-helpful"  # held out of the classifier data (its general pool is builtin:helpful)


@dataclass
class Arm:
    name: str
    concurrency: int
    tokens: int
    seconds: float
    first_token: list[float]
    halted: int  # answers the guard ended with content_filter: on these benign prompts, false positives
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds each server process used during the arm

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


async def one_request(client: httpx2.AsyncClient, base: str, prompt: str, max_tokens: int) -> tuple[int, float, bool]:
    """Tokens received, the time to the first one, and whether the answer was halted, for one streamed chat
    request."""
    body = {"model": "smollm2", "messages": [{"role": "user", "content": prompt}], "stream": True,
            "temperature": 0, "max_tokens": max_tokens}  # fmt: skip
    started = time.perf_counter()
    first, tokens, halted = None, 0, False
    async with client.stream("POST", f"{base}/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            halted = halted or any(choice.get("finish_reason") == "content_filter" for choice in event["choices"])
            if any((choice.get("delta") or {}).get("content") for choice in event["choices"]):
                tokens += 1
                first = first if first is not None else time.perf_counter() - started
    return tokens, first or 0.0, halted


async def run_arm(name: str, base: str, prompts: list[str], concurrency: int, max_tokens: int) -> Arm:
    limit = asyncio.Semaphore(concurrency)

    async def limited(client, prompt):
        async with limit:
            return await one_request(client, base, prompt, max_tokens)

    async with httpx2.AsyncClient(timeout=600, limits=httpx2.Limits(max_connections=concurrency)) as client:
        await one_request(client, base, prompts[0], 4)  # warm-up: connections, the server's first-call costs
        started = time.perf_counter()
        results = await asyncio.gather(*(limited(client, prompt) for prompt in prompts))
        seconds = time.perf_counter() - started
    tokens = sum(t for t, _, _ in results)
    return Arm(name, concurrency, tokens, seconds, [f for _, f, _ in results], sum(h for _, _, h in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--upstream", help="an OpenAI-compatible base URL (default: start llama-cpp-python's server)")
    parser.add_argument(
        "--classifiers", type=Path, help="trained classifiers for `cai guard serve` (default: keywords)"
    )
    parser.add_argument("--hold-back", type=int, default=8)
    parser.add_argument(
        "--rounds", type=int, default=3, help="times each arm's four-part sequence runs (the table sums them all)"
    )
    defaults = GuardSettings.model_fields
    parser.add_argument("--step-tokens", type=int, default=defaults["step_tokens"].default)
    parser.add_argument(
        "--classifier-threads",
        type=int,
        default=defaults["classifier_threads"].default,
        help="torch threads of trained classifiers",
    )
    parser.add_argument(
        "--own-cores",
        action="store_true",
        help="the model server on core 0 and the guard on core 1 (taskset), in both arms: a guard with a core of its "
        "own, as in a deployment, instead of both sharing the two cores",
    )
    args = parser.parse_args()
    prompts = [record.messages[-1]["content"] for record in load_prompts(PROMPTS)[0][: args.prompts]]
    scratch = Path(tempfile.mkdtemp(prefix="guard-overhead-"))
    with contextlib.ExitStack() as stack:
        upstream = args.upstream
        processes = {}
        if upstream is None:
            port = free_port()
            upstream = f"http://127.0.0.1:{port}/v1"
            server = stack.enter_context(
                server_process(
                    pinned(llama_server(port), args.own_cores and "0"), f"{upstream}/models", scratch / "llama.log"
                )
            )
            processes["model server"] = psutil.Process(server.pid)
        guard_port = free_port()
        command = guard_server(
            guard_port,
            upstream,
            args.classifiers,
            scratch / "audit.jsonl",
            args.hold_back,
            args.step_tokens,
            args.classifier_threads,
        )
        guarded = f"http://127.0.0.1:{guard_port}/v1"
        guard = stack.enter_context(
            server_process(
                pinned(command, args.own_cores and "1"), f"http://127.0.0.1:{guard_port}/health", scratch / "guard.log"
            )
        )
        processes["guard"] = psutil.Process(guard.pid)
        parts: dict[tuple[int, str], list[Arm]] = {}
        for _ in range(args.rounds):
            for concurrency in (1, 8):
                for name in ("direct", "guard", "guard", "direct"):
                    base = upstream if name == "direct" else guarded
                    before = {key: cpu_seconds(process) for key, process in processes.items()}
                    arm = asyncio.run(run_arm(name, base, prompts, concurrency, args.max_tokens))
                    arm.cpu = {key: cpu_seconds(process) - before[key] for key, process in processes.items()}
                    parts.setdefault((concurrency, name), []).append(arm)
    show(parts, args)


def print_rounds(direct: list[Arm], guard: list[Arm]) -> None:
    """The overhead at concurrency 8 in each round (each arm's two parts of it): the spread of the run."""
    rounds = [(merged(direct[i : i + 2]), merged(guard[i : i + 2])) for i in range(0, len(direct), 2)]
    overheads = [(1 - g.tokens_per_second / d.tokens_per_second) * 100 for d, g in rounds]
    Console().print("overhead at concurrency 8, per round: " + ", ".join(f"{o:.1f}%" for o in overheads))


def pinned(command: list[str], cores: str | bool) -> list[str]:
    return ["taskset", "-c", cores, *command] if cores else command


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def merged(parts: list[Arm]) -> Arm:
    first = parts[0]
    return Arm(
        first.name,
        first.concurrency,
        sum(p.tokens for p in parts),
        sum(p.seconds for p in parts),
        [t for p in parts for t in p.first_token],
        sum(p.halted for p in parts),
        {key: sum(p.cpu[key] for p in parts) for key in first.cpu},
    )


def show(parts: dict[tuple[int, str], list[Arm]], args) -> None:
    arms = [merged(arm_parts) for arm_parts in parts.values()]
    classifiers = f"classifiers {args.classifiers}" if args.classifiers else "keyword classifiers"
    if args.classifiers:
        classifiers += f" on {args.classifier_threads} torch thread(s)"
    processes = list(arms[0].cpu)
    table = Table("arm", "concurrency", "halted", "tokens", "seconds", "tokens/s", "TTFT median (ms)", "TTFT p90 (ms)",
                  *(f"{key} CPU s" for key in processes),
                  title=f"{len(arms[0].first_token)} requests x {args.max_tokens} tokens, hold-back {args.hold_back}, "
                  f"classifier steps of {args.step_tokens} tokens, {classifiers}")  # fmt: skip
    for arm in arms:
        ttft = sorted(arm.first_token)
        table.add_row(arm.name, str(arm.concurrency), str(arm.halted), str(arm.tokens), f"{arm.seconds:.2f}",
                      f"{arm.tokens_per_second:.1f}", f"{statistics.median(ttft) * 1000:.0f}",
                      f"{ttft[int(0.9 * (len(ttft) - 1))] * 1000:.0f}",
                      *(f"{arm.cpu[key]:.2f}" for key in processes))  # fmt: skip
    console = Console(width=160)
    console.print(table)
    guarded = [arm for arm in arms if arm.name == "guard"]
    per_token = sum(arm.cpu["guard"] for arm in guarded) / sum(arm.tokens for arm in guarded) * 1e6
    console.print(f"the guard's own CPU: {per_token:.0f} us per token it relayed")
    direct, guard = (next(a for a in arms if a.name == name and a.concurrency == 8) for name in ("direct", "guard"))
    console.print(
        f"at concurrency 8: {guard.halted} of {len(guard.first_token)} answers halted; wall time through the guard "
        f"{(guard.seconds / direct.seconds - 1) * 100:+.1f}% against direct"
    )
    print_rounds(parts[8, "direct"], parts[8, "guard"])
    console.print(f"overhead: {(1 - guard.tokens_per_second / direct.tokens_per_second) * 100:.1f}%")


if __name__ == "__main__":
    main()
