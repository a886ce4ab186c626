"""What every `cai` command shares: the consoles, one clear line per error, and the outcome table."""

from __future__ import annotations

import errno
import functools

import typer
from rich.console import Console
from rich.table import Table

from constitutional.errors import InputError, ModelUnavailableError

console = Console(stderr=True)
out = Console()


def friendly_errors(command):
    """Bad input and interruptions end with one clear message, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except InputError as err:
            console.print(f"[bold red]error:[/] {err}", highlight=False)
            raise typer.Exit(2) from None
        except ModelUnavailableError as err:
            console.print(f"[bold red]error:[/] {err}\nrecords written so far are kept; rerun to resume.")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: records written so far are kept; rerun the same command to resume.")
            raise typer.Exit(130) from None
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            console.print(
                f"[bold red]error:[/] disk full writing {err.filename or 'the run directory'}: "
                "records written so far are kept; free some space and rerun to resume."
            )
            raise typer.Exit(1) from None

    return wrapper


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_outcomes(run_dir: str, outcomes) -> None:
    """What each stage did (skipped, ran, resumed, redone), how long it took, and its summary."""
    table = Table("stage", "action", "seconds", "summary", title=f"run directory: {run_dir}")
    for o in outcomes:
        summary = ", ".join(f"{k}={_cell(v)}" for k, v in o.summary.items())
        table.add_row(o.name, o.action, f"{o.seconds:.1f}", summary)
    console.print(table)
