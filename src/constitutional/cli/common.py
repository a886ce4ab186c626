"""What every `cai` command shares: the consoles, one clear line per error, and the outcome table."""

from __future__ import annotations

import errno
import functools
import json
import sys

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from constitutional.errors import InputError, ModelUnavailableError

console = Console(stderr=True)
out = Console()


# `cai --debug` (or CAI_DEBUG=1): errors keep their tracebacks, for developers.
DEBUG = False
# Errors of a place that cannot be written: the user's to fix, like bad input.
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def _fail(message: str, code: int, hint: str | None = None) -> typer.Exit:
    text = escape(message + (f"\n  -> {hint}" if hint else ""))  # "[a, b]" in a message is text, not markup
    console.print(f"[bold red]error:[/] {text}", highlight=False)
    return typer.Exit(code)


def _frames(err: BaseException):
    tb = err.__traceback__
    while tb is not None:
        yield tb.tb_frame
        tb = tb.tb_next


def model_server_error(err: BaseException) -> str | None:
    """What a model server did wrong, when `err` comes from talking to one: an answer that is not JSON, or JSON
    without the fields of an OpenAI answer, or a refusal (404 unknown model, 401, 400 ...). None otherwise."""
    frames = list(_frames(err))
    client = [f for f in frames if f.f_code.co_filename.endswith(("models/openai_api.py", "models\\openai_api.py"))]
    openai = sys.modules.get("openai")
    if not client and not (openai and isinstance(err, openai.APIError)):
        return None
    server = next(
        (str(f.f_locals["self"].base_url) for f in client if hasattr(f.f_locals.get("self"), "base_url")), ""
    )
    where = f"the model server at {server}" if server else "the model server"
    if openai is not None and isinstance(err, openai.APIConnectionError):  # timeouts too
        return f"cannot reach {where} ({err}): is it running, and is base_url right?"
    if openai is not None and isinstance(err, openai.APIStatusError):
        detail = err.body.get("message") if isinstance(err.body, dict) else None
        return f"{where} refused the request ({err.status_code}): {detail or err.message}"
    if isinstance(err, json.JSONDecodeError):
        return f"{where} answered with something that is not JSON ({err.msg} at character {err.pos})"
    if openai is not None and isinstance(err, openai.APIError):
        return f"{where} answered with something this client cannot read ({type(err).__name__}: {err})"
    if isinstance(err, TypeError | AttributeError | IndexError | KeyError) and client:
        return f"{where} answered JSON without the fields of an OpenAI answer ({type(err).__name__}: {err})"
    return None


def friendly_errors(command):
    """Bad input, an unusable model server and interruptions end with one clear message, not a traceback.

    Anything unexpected ends with one line too, naming `cai --debug`, which lets every error keep its traceback.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        if DEBUG:
            return command(*args, **kwargs)
        try:
            return command(*args, **kwargs)
        except InputError as err:
            raise _fail(str(err), 2) from None
        except ModelUnavailableError as err:
            raise _fail(f"{err}\nrecords written so far are kept; rerun to resume.", 1) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: records written so far are kept; rerun the same command to resume.")
            raise typer.Exit(130) from None
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise _fail(
                    f"disk full writing {err.filename or 'the run directory'}: records written so far are kept; "
                    "free some space and rerun to resume.",
                    1,
                ) from None
            if err.errno in _NOT_WRITABLE:
                what = "read-only file system" if err.errno == errno.EROFS else "permission denied"
                raise _fail(
                    f"cannot write {err.filename or 'the run directory'}: {what}",
                    2,
                    "choose a --run-dir (or --output) you can write to, or fix its permissions",
                ) from None
            raise _unexpected(err) from None
        except Exception as err:
            if isinstance(err, typer.Exit) or type(err).__module__.startswith(("click", "typer")):
                raise
            server = model_server_error(err)
            if server is not None:
                raise _fail(
                    server, 2, "check that base_url points at an OpenAI-compatible API (e.g. http://HOST:8000/v1)"
                ) from None
            raise _unexpected(err) from None

    return wrapper


def _unexpected(err: BaseException) -> typer.Exit:
    return _fail(
        f"unexpected {type(err).__name__}: {err}",
        1,
        "this is a bug: rerun with `cai --debug ...` for the traceback, and report it",
    )


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_outcomes(run_dir: str, outcomes) -> None:
    """What each stage did (skipped, ran, resumed, redone), how long it took, and its summary."""
    table = Table("stage", "action", "seconds", "summary", title=f"run directory: {run_dir}")
    for o in outcomes:
        summary = ", ".join(f"{k}={_cell(v)}" for k, v in o.summary.items())
        table.add_row(o.name, o.action, f"{o.seconds:.1f}", summary)
    console.print(table)
