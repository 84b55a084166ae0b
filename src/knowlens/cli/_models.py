"""``knowlens models``: embedded and cached models."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models_cmd() -> None:
        """List embedded models (shipped as PyPI packages) and converted/cached ones."""
        from knowlens.models import list_models

        table = Table(title="knowlens models")
        for col in [
            "name",
            "kind",
            "installed",
            "converted",
            "layers",
            "hidden",
            "size MB",
            "licence",
        ]:
            table.add_column(col)
        for r in list_models():
            table.add_row(
                r["name"],
                r["kind"],
                "yes" if r.get("installed") else "no",
                "yes" if r.get("converted") else "no",
                str(r.get("layers", "-")),
                str(r.get("hidden", "-")),
                str(r.get("size_mb", "-")),
                r.get("licence", "-"),
            )
        Console().print(table)
