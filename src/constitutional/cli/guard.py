"""`cai guard serve`: the screening proxy in front of any OpenAI-compatible model server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from constitutional.cli.common import console, friendly_errors
from constitutional.guard.settings import API_KEY_ENV, DEFAULT_HOLD_BACK, DEFAULT_STEP_TOKENS, GuardSettings

guard_app = typer.Typer(no_args_is_help=True, help="The guard: screen requests and halt answers in front of a model.")


def _help(field: str) -> str:
    return GuardSettings.model_fields[field].description


@guard_app.command("serve")
@friendly_errors
def serve(
    upstream: Annotated[str, typer.Option(help=_help("upstream"))],
    classifiers: Annotated[
        Path, typer.Option(help="Folder of trained classifiers (input and output), as the classifier stage saves it.")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[str | None, typer.Option(envvar=API_KEY_ENV, help=_help("api_key"))] = None,
    hold_back: Annotated[int, typer.Option(help=_help("hold_back_tokens"))] = DEFAULT_HOLD_BACK,
    step_tokens: Annotated[int, typer.Option(help=_help("step_tokens"))] = DEFAULT_STEP_TOKENS,
    classifier_threads: Annotated[int, typer.Option(help=_help("classifier_threads"))] = 1,
    refusal_message: Annotated[str | None, typer.Option(help=_help("refusal_message"))] = None,
    connect_timeout: Annotated[float, typer.Option(help=_help("connect_timeout"))] = 5.0,
    read_timeout: Annotated[float, typer.Option(help=_help("read_timeout"))] = 60.0,
    max_request_bytes: Annotated[int, typer.Option(help=_help("max_request_bytes"))] = 1_000_000,
    max_concurrent: Annotated[int, typer.Option(help=_help("max_concurrent_requests"))] = 256,
    fail_open: Annotated[bool, typer.Option("--fail-open/--fail-closed", help=_help("fail_open"))] = False,
    audit_log: Annotated[Path | None, typer.Option(help=_help("audit_log"))] = Path("guard-audit.jsonl"),
    audit_max_bytes: Annotated[int, typer.Option(help=_help("audit_max_bytes"))] = 10_000_000,
    audit_backups: Annotated[int, typer.Option(help=_help("audit_backups"))] = 5,
    log_text: Annotated[bool, typer.Option(help=_help("log_text"))] = False,
) -> None:
    """Serve `/v1/chat/completions`, `/v1/completions` (streamed or not), `/v1/models`, `/health` and `/metrics`,
    screening every request with the input classifier and every answer, as it streams, with the output classifier.
    The upstream's key is read from $CAI_GUARD_UPSTREAM_API_KEY only. Example (a model server on port 8080 first):
    `cai guard serve --upstream http://127.0.0.1:8080/v1 --classifiers runs/classifiers/model --port 8000`
    """
    import uvicorn
    from pydantic import ValidationError

    from constitutional.errors import InputError, from_validation
    from constitutional.guard.server import create_app

    fields = {
        "upstream": upstream,
        "api_key": api_key,
        "hold_back_tokens": hold_back,
        "step_tokens": step_tokens,
        "classifier_threads": classifier_threads,
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "max_request_bytes": max_request_bytes,
        "max_concurrent_requests": max_concurrent,
        "fail_open": fail_open,
        "audit_log": audit_log,
        "audit_max_bytes": audit_max_bytes,
        "audit_backups": audit_backups,
        "log_text": log_text,
    }
    if refusal_message is not None:
        fields["refusal_message"] = refusal_message
    try:
        settings = GuardSettings(**fields)
    except ValidationError as err:
        raise from_validation(err, hint="see `cai guard serve --help`") from None
    if not classifiers.is_dir():
        raise InputError(
            f"{classifiers} is not a folder", field="--classifiers", hint="give the folder the classifier stage saved"
        )
    try:
        from constitutional.classifiers.saved import load_classifiers
    except ImportError:
        raise InputError(
            "this install cannot load trained classifiers (constitutional.classifiers.saved is missing)",
            field="--classifiers",
            hint="update the package to a version with the classifier stage",
        ) from None
    import torch

    torch.set_num_threads(settings.classifier_threads)  # before loading: the classifier threads inherit it
    input_classifier, output_classifier = load_classifiers(classifiers)
    app = create_app(settings, input_classifier, output_classifier)
    where = f"http://{host}:{port}/v1"
    console.print(f"guard on [bold]{where}[/] -> {settings.upstream}; audit log: {settings.audit_log or 'off'}")
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
