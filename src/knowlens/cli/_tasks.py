"""``knowlens tasks``: list tasks, or preview one (prompt, gold answers, grader)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("tasks")
    def tasks_cmd(
        name: str = typer.Argument(None, help="Task name or YAML task file to preview."),
        split: str = typer.Option("test", help="Split to preview."),
        limit: int = typer.Option(2, help="Examples to show when previewing."),
        path: str = typer.Option(None, help="Local data file for benchmark tasks."),
    ) -> None:
        """List every task (size, kind, topics, source, licence), or preview one."""
        console = Console()
        if name is None:
            from knowlens.tasks import list_tasks

            table = Table(title="knowlens tasks")
            table.add_column("name", no_wrap=True, style="bold")
            for col in ["kind", "size", "grader", "topics", "source", "licence"]:
                table.add_column(col, overflow="fold")
            for r in list_tasks():
                topics = r["topics"]
                shown = ", ".join(topics[:2]) + (f" +{len(topics) - 2}" if len(topics) > 2 else "")
                size = "-" if r["size"] is None else str(r["size"])
                if not r["offline"]:
                    size = "hub / path="
                # short forms; `knowlens tasks NAME` shows the full provenance
                source = r["source"].split(" (")[0].split(";")[0]
                licence = r["licence"].split(";")[0].split(" (")[0]
                table.add_row(
                    r["name"], r["kind"], size, r["grader"], shown or "-", source, licence
                )
            console.print(table)
            console.print("Preview one: knowlens tasks NAME [--split test --limit 2]")
            return
        from knowlens.tasks import load_task

        task = load_task(name, split=split, limit=limit, path=path)
        console.print(
            f"[bold]{task.name}[/] v{task.version}  kind={task.kind}  grader={task.grader_name}  "
            f"splits={task.sizes}  max_new_tokens={task.max_new_tokens}",
            highlight=False,
        )
        console.print(f"source: {task.source}  licence: {task.licence}", highlight=False)
        for ex in task.examples:
            console.rule(f"{ex.id}  topic={ex.topic}")
            console.print(task.prompt(ex), markup=False, highlight=False)
            console.print(f"[green]gold:[/] {list(ex.answers[:5])}", highlight=False)
