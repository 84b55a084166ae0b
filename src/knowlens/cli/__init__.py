"""The ``knowlens`` command line (typer + rich).

Each area registers its commands from its own module (``cli/_<area>.py`` exposing
``register(app)``), so the areas never edit one another's code. User errors
(:class:`knowlens.errors.KnowlensError`, and click's usage errors such as an unknown option
or a non-integer ``--seed``) print as one red line and exit with status 2, with no traceback,
whether the app runs as ``knowlens`` or under ``typer.testing.CliRunner``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

__all__ = ["app", "error_line", "main"]

if TYPE_CHECKING:  # checked against the typer the dev extras install
    from typer._click import exceptions as _cx
else:
    try:  # typer >= 0.26 vendors click as typer._click; older typer uses click itself
        from typer._click import exceptions as _cx
    except ImportError:  # pragma: no cover - depends on the installed typer
        from click import exceptions as _cx

console = Console(stderr=True)


def error_line(message: str) -> None:
    """Print one red ``error:`` line on stderr (never wrapped: scripts grep it)."""
    from rich.markup import escape

    text = " ".join(str(message).split())  # one line, whatever the message held
    # escape: messages quote user input and fields like analyses[1].limit, not markup
    console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


class _OneLineErrors(TyperGroup):
    """The root group: runs commands and turns user errors into one line + exit code 2."""

    def main(  # type: ignore[override]  # click overloads main on standalone_mode; one here
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:  # programmatic use: let the caller see the exceptions
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        from knowlens.errors import KnowlensError

        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _cx.NoArgsIsHelpError as e:
            e.show()
            sys.exit(e.exit_code)
        except _cx.ClickException as e:
            where = getattr(getattr(e, "ctx", None), "command_path", None) or "knowlens"
            error_line(f"{e.format_message().rstrip('.')}. See '{where} --help'.")
            sys.exit(2 if isinstance(e, _cx.UsageError) else e.exit_code)
        except typer.Abort:
            console.print("aborted")
            sys.exit(1)
        except KnowlensError as e:
            error_line(str(e))
            sys.exit(2)
        except KeyboardInterrupt:
            console.print(
                "[yellow]interrupted[/]: finished cache entries are kept; rerun to resume."
            )
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name="knowlens",
    cls=_OneLineErrors,
    help="Measure what a language model knows about its own answers and behaviour.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
) -> None:
    """knowlens: uncertainty, probes, transfer and jailbreak analyses for any causal LM."""
    import logging

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


# One module per area; each exposes register(app).
_AREAS = ["_models", "_run", "_tasks", "_extract", "_jailbreak"]

for _area in _AREAS:
    importlib.import_module(f"knowlens.cli.{_area}").register(app)


def main() -> None:
    """Entry point (``knowlens``); errors are handled by the root group (see module doc)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
