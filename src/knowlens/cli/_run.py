"""``knowlens run``, ``knowlens report`` and ``knowlens demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

__all__ = ["register"]

_DEMO_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs; values are YAML, validated later like the file's values."""
    from knowlens._yaml import load_yaml_text
    from knowlens.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"--set must look like key=value (e.g. --set n_bootstrap=200); got '{item}'."
            )
        if key in out:
            raise ConfigError(
                f"--set {key}=... is given twice ({key}={out[key]!r} and '{item}'); "
                "give each field once."
            )
        out[key] = load_yaml_text(value, where=f"--set {item}")
    return out


def _cli_overrides(set_: list[str], **options: Any) -> dict[str, Any]:
    """--set values, then the named options that were given (None = not given)."""
    from knowlens.errors import ConfigError

    overrides = _parse_set(set_)
    for key, value in options.items():
        if value is None:
            continue
        if key in overrides:
            raise ConfigError(
                f"'{key}' is given twice: --set {key}={overrides[key]!r} and --{key.replace('_', '-')} "
                f"{value}. Use one of them."
            )
        overrides[key] = value
    return overrides


def _parse_models(models: str | None) -> list[str] | None:
    from knowlens.errors import ConfigError

    if models is None:
        return None
    specs = [m.strip() for m in models.split(",")]
    if not any(specs) or not all(specs):
        raise ConfigError(
            f"--models must be a comma-separated list of model specs with no empty entry; got "
            f"{models!r}. Pass e.g. --models smollm2-135m-instruct,gemma3-270m, or leave "
            "--models out to use the config's models."
        )
    return specs


def _slowest_lines(stages: list[Any], n: int = 3) -> list[str]:
    """The ``n`` slowest stages (own seconds, nested stages excluded), one line each."""
    from knowlens.experiments._rundir import slowest

    lines = []
    for s in slowest(stages, n):
        where = f"{s.analysis}: " if s.analysis else ""
        cache = f", cache {s.cache} ({s.hits} hit, {s.misses} miss)" if s.cache else ""
        lines.append(f"{s.self_s:8.2f}s  {where}{s.label} [{s.kind}{cache}]")
    return lines


def _finish(res: Any, console: Console) -> None:
    hits = sum(res.cache_hits.values())
    console.print(
        f"[bold green]done[/]: {len(res.tables)} analyses ({hits} from cache), "
        f"{sum(len(v) for v in res.figures.values()) // 2} figures, tables in "
        f"{res.run_dir / 'tables'}"
    )
    if res.stages:
        console.print("slowest stages (all in the report's 'Where the time went'):")
        for line in _slowest_lines(res.stages):
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    # The report path goes to stdout (last line), so scripts can capture it.
    print(res.report)


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        config: Path = typer.Argument(..., help="YAML config (one analysis or a suite)."),
        models: str | None = typer.Option(
            None, "--models", help="Comma-separated model specs (replaces the config's)."
        ),
        limit: int | None = typer.Option(None, "--limit", help="Max examples per task/split."),
        output: Path | None = typer.Option(None, "--output", "-o", help="Runs folder."),
        name: str | None = typer.Option(None, "--name", help="Run name (folder under output)."),
        seed: int | None = typer.Option(None, "--seed", help="Seed for splits/training/CIs."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Recompute everything."),
        executor: str | None = typer.Option(
            None, "--executor", help="local (default) or ray: where generation/extraction run."
        ),
        ray_address: str | None = typer.Option(
            None, "--ray-address", help="Join an existing Ray cluster (host:port or auto)."
        ),
        set_: list[str] = typer.Option(
            [], "--set", help="Any config field, key=value (YAML value); repeatable."
        ),
    ) -> None:
        """Run the analyses of a config; writes runs/<name>/ and prints report.html's path."""
        from knowlens.experiments import run

        # Only options the user gave override the config (a default must not mask --set).
        overrides = _cli_overrides(
            set_,
            models=_parse_models(models),
            limit=limit,
            output=output,
            name=name,
            seed=seed,
            executor=executor,
            ray_address=ray_address,
        )
        res = run(config, use_cache=not no_cache, **overrides)
        _finish(res, Console(stderr=True))

    @app.command("report")
    def report_cmd(
        run_dir: Path = typer.Argument(..., help="A run folder, e.g. runs/demo."),
    ) -> None:
        """Redraw a run's figures from its saved tables and rebuild report.html (no models)."""
        from knowlens.report import build_report

        print(build_report(run_dir, redraw=True))

    @app.command("demo")
    def demo_cmd(
        output: Path | None = typer.Option(None, "--output", "-o", help="Runs folder."),
        limit: int | None = typer.Option(None, "--limit", help="Override the demo's sizes."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Recompute everything."),
    ) -> None:
        """Run every analysis on the embedded models (configs/demo.yaml) and print the report path."""
        from knowlens.experiments import run

        config = _DEMO_CONFIG if _DEMO_CONFIG.is_file() else Path("configs/demo.yaml")
        res = run(config, use_cache=not no_cache, **_cli_overrides([], output=output, limit=limit))
        _finish(res, Console(stderr=True))
