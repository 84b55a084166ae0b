"""``knowlens generate`` and ``knowlens extract``: answers and hidden states of one task."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

__all__ = ["register"]

console = Console(stderr=True)


def _model_and_task(
    model: str, task: str, split: str, limit: int | None, device: str, dtype: str | None
) -> tuple[Any, Any]:
    from knowlens.errors import KnowlensError
    from knowlens.jailbreak.targets import parse_target
    from knowlens.models import load_model
    from knowlens.tasks import load_task

    # Model specs read like target specs: MODEL?system=safety adds a deployment system prompt
    # (one parser for both, knowlens.jailbreak.targets).
    ts = parse_target(model)
    if ts.kind == "api":
        raise KnowlensError(
            f"Model '{model}' is an API target; generate/extract need local weights (token "
            "probabilities, hidden states). API targets are read by the prompt_transfer "
            "analysis (`models: [api:...]` in its config). Pass a local model spec here."
        )
    t = load_task(task, split=split, limit=limit)  # before loading: fast errors first
    with console.status(f"loading {ts.model}"):
        m = load_model(
            ts.model,
            device=device,
            dtype=dtype,
            system_prompt=ts.system_prompt,
            name=ts.options.get("name") or (ts.display if ts.system_prompt else None),
        )
    return m, t


def _generate(
    m: Any, t: Any, max_new_tokens: int | None, batch_size: int, chat: bool, cache: bool
) -> Any:
    from knowlens.generation import generate

    return generate(
        m,
        t,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        use_chat_template=chat,
        cache=cache,
    )


_MODEL = typer.Option(
    ...,
    "--model",
    "-m",
    help="Embedded name, HF directory, .gguf or hub id; MODEL?system=safety adds a system prompt.",
)
_TASK = typer.Option(..., "--task", "-t", help="Task name (see `knowlens tasks`).")
_SPLIT = typer.Option("test", "--split", help="Task split.")
_LIMIT = typer.Option(None, "--limit", "-n", min=1, help="Max examples.")
_DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
_MDTYPE = typer.Option(
    None,
    "--model-dtype",
    help="Dtype the model runs in: float32 (CPU default), bfloat16 (CUDA default), float16.",
)
_CHAT = typer.Option(True, "--chat-template/--no-chat-template", help="Use the chat template.")
_NOCACHE = typer.Option(False, "--no-cache", help="Recompute instead of reusing the cache.")
_MAXNEW = typer.Option(None, "--max-new-tokens", min=1, help="Answer length cap (default: task's).")


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate_cmd(
        model: str = _MODEL,
        task: str = _TASK,
        split: str = _SPLIT,
        limit: int | None = _LIMIT,
        max_new_tokens: int | None = _MAXNEW,
        batch_size: int = typer.Option(16, "--batch-size", min=1, help="Rows decoded together."),
        chat: bool = _CHAT,
        device: str = _DEVICE,
        model_dtype: str | None = _MDTYPE,
        no_cache: bool = _NOCACHE,
    ) -> None:
        """Greedy answers to a task, graded; prints accuracy and the table's path."""
        from knowlens._cache import entry_dir

        m, t = _model_and_task(model, task, split, limit, device, model_dtype)
        gens = _generate(m, t, max_new_tokens, batch_size, chat, not no_cache)
        where = (
            entry_dir("generations", gens.meta["cache_key"]) / "generations.parquet"
            if not no_cache
            else None
        )
        src = "cache" if gens.meta.get("cache_hit") else f"{gens.meta.get('seconds', 0):.1f} s"
        console.print(
            f"[bold green]{m.name}[/] on [bold]{t.name}[/]/{split}: {len(gens)} answers, "
            f"accuracy {gens.accuracy:.3f} ({src})"
        )
        for g in gens.rows[:3]:
            console.print(f"  [dim]{g.example_id}[/] {g.answer!r} -> {g.correct}", highlight=False)
        if where is not None:
            print(where)

    @app.command("extract")
    def extract_cmd(
        model: str = _MODEL,
        task: str = _TASK,
        layers: str = typer.Option("all", "--layers", "-l", help="all, or indices: 0,8,-1."),
        tokens: str = typer.Option(
            "exact_answer",
            "--tokens",
            help="last_prompt, last, exact_answer, exact_answer_first, exact_answer_mean, all.",
        ),
        split: str = _SPLIT,
        limit: int | None = _LIMIT,
        dtype: str = typer.Option(
            "auto",
            "--dtype",
            help="Storage dtype of the saved activations (= extract(dtype=)): auto (float16, "
            "or float32 if the model's values exceed it), float16 (clamps) or float32. The "
            "model's own dtype is --model-dtype.",
        ),
        max_positions: int = typer.Option(
            512, "--max-positions", min=1, help="Cap for --tokens all."
        ),
        batch_size: int = typer.Option(
            8, "--batch-size", min=1, help="Sequences per forward pass."
        ),
        max_new_tokens: int | None = _MAXNEW,
        chat: bool = _CHAT,
        device: str = _DEVICE,
        model_dtype: str | None = _MDTYPE,
        no_cache: bool = _NOCACHE,
    ) -> None:
        """Generate + grade, then extract hidden states; prints the output path and shape."""
        from knowlens.activations import extract
        from knowlens.activations._extract import SELECTORS, check_dtype, check_tokens

        check_tokens(tokens, SELECTORS)  # fail before loading anything
        check_dtype(dtype)
        m, t = _model_and_task(model, task, split, limit, device, model_dtype)
        from knowlens.activations._extract import resolve_layers

        resolve_layers(m, layers)
        gens = _generate(m, t, max_new_tokens, 16, chat, not no_cache)
        acts = extract(
            m,
            gens,
            layers=layers,
            tokens=tokens,
            dtype=dtype,
            max_positions=max_positions,
            batch_size=batch_size,
            cache=not no_cache,
        )
        src = "cache" if acts.meta.get("cache_hit") else f"{acts.meta.get('seconds', 0):.1f} s"
        console.print(
            f"[bold green]{m.name}[/] on [bold]{t.name}[/]/{split}: accuracy {gens.accuracy:.3f}; "
            f"activations [bold]{acts.tokens}[/] layers {_short(acts.layers)} shape "
            f"{tuple(acts.shape)} {acts.values.dtype} ({src})"
        )
        print(acts.meta.get("path") or "(not cached: --no-cache)")


def _short(layers: list[int]) -> str:
    if len(layers) > 4 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}..{layers[-1]}"
    return ",".join(map(str, layers))
