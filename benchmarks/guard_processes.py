"""The servers the guard benchmarks run, each in its own process as in a deployment: llama-cpp-python's server with
the embedded SmolLM2, a scripted upstream that streams fixed text, and the guard (with trained classifiers through
`cai guard serve --classifiers DIR`, or keyword classifiers when none are given).

Run as a script, it serves one of the last two (the benchmarks start it so):

    .venv/bin/python benchmarks/guard_processes.py upstream --port 9001 --words 64 --token-delay 0.01
    .venv/bin/python benchmarks/guard_processes.py guard --port 9002 --upstream http://127.0.0.1:9001/v1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The intended blocks of the load test: a request naming the input keyword is refused at input; the "halts" script
# says the output keyword half-way through its answer.
INPUT_KEYWORDS = {"nerve agent": "chemical"}
OUTPUT_KEYWORDS = {"anthrax": "biological"}


def fixed_words(count: int) -> list[str]:
    return [f"word{i} " for i in range(count)]


def llama_server(port: int) -> list[str]:
    from constitutional.models.embedded import gguf_file

    model = str(gguf_file("smollm2-135m-instruct"))
    # Its default, interrupt_requests=true, cuts a streaming answer off when the next request arrives: concurrent
    # clients need it off (requests then wait their turn).
    return [sys.executable, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", "2048", "--verbose", "false", "--interrupt_requests", "false"]  # fmt: skip


def guard_server(
    port: int,
    upstream: str,
    classifiers: Path | None,
    audit_log: Path,
    hold_back: int,
    step_tokens: int | None = None,
    classifier_threads: int | None = None,
) -> list[str]:
    """The guard's command line; `step_tokens` and `classifier_threads` left out (None) take the guard's defaults,
    and threads apply to trained classifiers only (keywords run no torch)."""
    options = [
        "--port",
        str(port),
        "--upstream",
        upstream,
        "--audit-log",
        str(audit_log),
        "--hold-back",
        str(hold_back),
    ]
    if step_tokens is not None:
        options += ["--step-tokens", str(step_tokens)]
    if classifiers is None:
        return [sys.executable, __file__, "guard", *options]
    if classifier_threads is not None:
        options += ["--classifier-threads", str(classifier_threads)]
    return [sys.executable, "-m", "constitutional.cli", "guard", "serve", "--classifiers", str(classifiers), *options]


def scripted_server(port: int, words: int, token_delay: float) -> list[str]:
    return [sys.executable, __file__, "upstream", "--port", str(port), "--words", str(words),
            "--token-delay", str(token_delay)]  # fmt: skip


def _serve_upstream(args) -> None:
    import uvicorn

    from constitutional.guard.testing import Script, scripted_upstream

    words = fixed_words(args.words)
    halts = [*words[: args.words // 2], "anthrax ", *words[args.words // 2 :]]
    scripts = {"fixed": Script(words, delay=args.token_delay), "halts": Script(halts, delay=args.token_delay)}
    app, _ = scripted_upstream(scripts)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", backlog=4096)


def _serve_keyword_guard(args) -> None:
    import uvicorn

    from constitutional.guard.server import create_app
    from constitutional.guard.settings import GuardSettings
    from constitutional.guard.testing import KeywordInputClassifier, KeywordOutputClassifier

    step = {} if args.step_tokens is None else {"step_tokens": args.step_tokens}
    settings = GuardSettings(upstream=args.upstream, audit_log=args.audit_log, hold_back_tokens=args.hold_back, **step)
    app = create_app(settings, KeywordInputClassifier(INPUT_KEYWORDS), KeywordOutputClassifier(OUTPUT_KEYWORDS))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", backlog=4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="server", required=True)
    upstream = sub.add_parser("upstream", help="the scripted upstream: fixed text, one word per chunk")
    upstream.add_argument("--port", type=int, required=True)
    upstream.add_argument("--words", type=int, default=64)
    upstream.add_argument("--token-delay", type=float, default=0.0, help="seconds between chunks")
    guard = sub.add_parser("guard", help="the guard with keyword classifiers")
    guard.add_argument("--port", type=int, required=True)
    guard.add_argument("--upstream", required=True)
    guard.add_argument("--audit-log", type=Path, required=True)
    guard.add_argument("--hold-back", type=int, default=8)
    guard.add_argument("--step-tokens", type=int, help="tokens per output-classifier step (default: the guard's)")
    args = parser.parse_args()
    (_serve_upstream if args.server == "upstream" else _serve_keyword_guard)(args)


if __name__ == "__main__":
    main()
