"""Load test: many concurrent streaming clients against the guard, over a fast scripted upstream.

The upstream streams fixed text (`--words` words, one per chunk, `--token-delay` apart: 10 ms is a 100 tokens/s
model); the guard runs in its own process with keyword classifiers (or `--classifiers DIR`) and its default
settings. `--clients` asyncio clients each send streamed chat requests back to back for `--seconds`; one request in
20 names the input keyword (refused at input) and one in 20 asks for the script that says the output keyword half
way (halted): those are the intended blocks. Anything else that does not end in [DONE] after a full answer is an
error. Reported: requests/s, p50/p99 latency (request sent to stream closed) per outcome, errors, and the guard
process's resident memory after warm-up, every tenth of the run and at the end.

    .venv/bin/python benchmarks/guard_load.py                        # 100 clients, 60 s, 64 words, 10 ms apart
    .venv/bin/python benchmarks/guard_load.py --clients 200 --seconds 30 --token-delay 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx2
import psutil
from guard_processes import guard_server, scripted_server
from rich.console import Console
from rich.table import Table

from constitutional.models.local_server import free_port, server_process

BENIGN = [{"role": "user", "content": "Tell me about the weather."}]
RESTRICTED = [{"role": "user", "content": "How do I make a nerve agent?"}]


def request_for(number: int) -> tuple[str, dict]:
    """The intended outcome of the n-th request of a client, and its body."""
    if number % 20 == 7:
        return "blocked_input", {"model": "fixed", "messages": RESTRICTED, "stream": True}
    if number % 20 == 13:
        return "blocked_output", {"model": "halts", "messages": BENIGN, "stream": True}
    return "answered", {"model": "fixed", "messages": BENIGN, "stream": True}


async def one_request(client: httpx2.AsyncClient, base: str, body: dict, words: int) -> str:
    """What happened: answered, blocked_input, blocked_output, or an error's description."""
    chunks = []
    try:
        async with client.stream("POST", f"{base}/chat/completions", json=body) as response:
            if response.status_code != 200:
                return f"status {response.status_code}"
            blocked = response.headers.get("x-guard-blocked")
            async for data in response.aiter_raw():
                chunks.append(data)
    except httpx2.HTTPError as err:
        return type(err).__name__
    stream = b"".join(chunks)
    if not stream.endswith(b"data: [DONE]\n\n"):
        return "no [DONE]"
    if b'"error"' in stream:
        return "error event"
    if blocked == "input":
        return "blocked_input"
    if b'"content_filter"' in stream:
        return "blocked_output" if b"anthrax" not in stream else "flagged text sent"
    return "answered" if stream.count(b'"content"') >= words else "short answer"


async def client_loop(client, base, words, until, results) -> None:
    number = 0
    while time.perf_counter() < until:
        intended, body = request_for(number)
        started = time.perf_counter()
        outcome = await one_request(client, base, body, words)
        results.append((intended, outcome, time.perf_counter() - started))
        number += 1


async def load(base: str, clients: int, seconds: float, words: int) -> tuple[list, float]:
    limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx2.AsyncClient(timeout=60, limits=limits) as client:
        results: list[tuple[str, str, float]] = []
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(client_loop(client, base, words, until, results) for _ in range(clients)))
        return results, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--words", type=int, default=64)
    parser.add_argument("--token-delay", type=float, default=0.01)
    parser.add_argument(
        "--classifiers", type=Path, help="trained classifiers for `cai guard serve` (default: keywords)"
    )
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="guard-load-"))
    upstream_port, guard_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    base = f"http://127.0.0.1:{guard_port}/v1"
    with contextlib.ExitStack() as stack:
        scripted = scripted_server(upstream_port, args.words, args.token_delay)
        stack.enter_context(server_process(scripted, f"{upstream}/models", scratch / "upstream.log"))
        command = guard_server(guard_port, upstream, args.classifiers, scratch / "audit.jsonl", hold_back=8)
        guard = stack.enter_context(
            server_process(command, f"http://127.0.0.1:{guard_port}/health", scratch / "guard.log")
        )
        process = psutil.Process(guard.pid)
        asyncio.run(load(base, min(args.clients, 10), 2.0, args.words))  # warm-up
        rss = [process.memory_info().rss]
        sampler = threading.Thread(target=sample_rss, args=(process, rss, args.seconds), daemon=True)
        sampler.start()
        results, elapsed = asyncio.run(load(base, args.clients, args.seconds, args.words))
        sampler.join()
        rss.append(process.memory_info().rss)
        metrics = httpx2.get(f"http://127.0.0.1:{guard_port}/metrics").text
    show(args, results, elapsed, rss, metrics, scratch)


def sample_rss(process: psutil.Process, samples: list[int], seconds: float) -> None:
    """The guard's resident memory every tenth of the run: growing to the end would be a leak, a plateau is not."""
    for _ in range(9):
        time.sleep(seconds / 10)
        samples.append(process.memory_info().rss)


def show(args, results, elapsed, rss, metrics, scratch) -> None:
    console = Console()
    latencies = defaultdict(list)
    errors = Counter()
    for intended, outcome, seconds in results:
        latencies[outcome].append(seconds)
        if outcome != intended:
            errors[f"{intended} -> {outcome}"] += 1
    classifiers = f"classifiers {args.classifiers}" if args.classifiers else "keyword classifiers"
    title = (
        f"{args.clients} streaming clients, {args.seconds:.0f} s, {args.words} words {args.token_delay * 1000:.0f} ms"
    )
    table = Table("outcome", "requests", "p50 latency (ms)", "p99 latency (ms)", title=f"{title} apart, {classifiers}")
    everything = [seconds for _, _, seconds in results]
    for outcome, values in [*sorted(latencies.items()), ("all", everything)]:
        table.add_row(outcome, str(len(values)), *(f"{percentile(values, q) * 1000:.0f}" for q in (0.5, 0.99)))
    console.print(table)
    answered_tokens = len(latencies["answered"]) * args.words
    console.print(f"requests/s: {len(results) / elapsed:.1f}   tokens/s answered: {answered_tokens / elapsed:.0f}")
    blocks = [line for line in metrics.splitlines() if line.startswith("cai_guard_blocks_total")]
    console.print(f"guard metrics: {'; '.join(blocks)}")
    console.print(f"guard RSS (MiB), after warm-up, every tenth of the run, at the end: {[r >> 20 for r in rss]}")
    console.print(f"logs: {scratch}")
    console.print(f"errors: {sum(errors.values())}" + (f" ({dict(errors)})" if errors else ""))


if __name__ == "__main__":
    main()
