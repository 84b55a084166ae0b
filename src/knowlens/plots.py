"""Seed-style figures, drawn from tidy tables only (never from models).

    import matplotlib.pyplot as plt
    from knowlens import plots
    fig, ax = plt.subplots(figsize=plots.heatmap_size(matrix))
    plots.heatmap(ax, matrix, center=0.0, cbar_label="AUROC - baseline AUROC",
                  xlabel="Test dataset", ylabel="Train dataset")
    plots.save_figure(fig, "runs/demo/figures", "probe_transfer")   # -> [png, svg]

Conventions (from the seed figures): values printed in every cell, a colour bar named after
the metric, a diverging map centred on ``center`` for difference matrices (red = positive,
blue = negative, as seed 003) and a sequential map otherwise (dark purple -> orange, as seed
001). Missing cells are grey and say "n/a"; cells with too few examples are hatched and a
legend says why. The Agg backend is forced so figures render headless and deterministically.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors
import matplotlib.patches as mpatches
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from knowlens._cache import atomic_write_bytes
from knowlens.errors import KnowlensError

__all__ = [
    "DIVERGING",
    "SEQUENTIAL",
    "heatmap",
    "heatmap_size",
    "pivot",
    "reliability_diagram",
    "save_figure",
]

SEQUENTIAL = "magma"  # seed 001: dark purple (low) -> bright orange (high)
DIVERGING = "RdBu_r"  # seed 003: blue (negative) -> white (0) -> red (positive)
MISSING_COLOR = "#d9d9d9"
DiagonalStyle = Literal["outline", "distinct", "blank"]

# Deterministic SVG output (no random ids, no timestamps) so reruns produce identical files.
matplotlib.rcParams["svg.hashsalt"] = "knowlens"
matplotlib.rcParams["svg.fonttype"] = "none"


def _as_frame(x: Any, like: pd.DataFrame, name: str) -> pd.DataFrame | None:
    if x is None:
        return None
    if isinstance(x, pd.DataFrame):
        return x.reindex(index=like.index, columns=like.columns)
    arr = np.asarray(x)
    if arr.shape != like.shape:
        raise KnowlensError(
            f"heatmap(): '{name}' must have the matrix's shape {like.shape}; got {arr.shape}. "
            "Pass a DataFrame with the same index/columns or an array of that shape."
        )
    return pd.DataFrame(arr, index=like.index, columns=like.columns)


def _text_color(rgba: Sequence[float]) -> str:
    r, g, b = rgba[:3]
    # Relative luminance (sRGB approx.): white text on dark cells, black on light ones.
    return "white" if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5 else "black"


def heatmap_size(
    matrix: pd.DataFrame, *, cell: float = 0.75, min_w: float = 3.6, min_h: float = 2.6
) -> tuple[float, float]:
    """A figure size (inches) that keeps labels readable for ``matrix`` (one panel)."""
    n_rows, n_cols = matrix.shape
    label_w = 0.09 * max((len(str(i)) for i in matrix.index), default=4)
    label_h = 0.07 * max((len(str(c)) for c in matrix.columns), default=4)
    w = max(min_w, n_cols * cell + label_w + 1.6)
    h = max(min_h, n_rows * cell * 0.62 + label_h + 1.0)
    return (round(w, 2), round(h, 2))


def heatmap(
    ax: plt.Axes,
    matrix: pd.DataFrame,
    *,
    annotate: bool = True,
    fmt: str = ".2f",
    cmap: str | mcolors.Colormap | None = None,
    center: float | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cbar_label: str = "",
    ci_low: pd.DataFrame | np.ndarray | None = None,
    ci_high: pd.DataFrame | np.ndarray | None = None,
    hatch_mask: pd.DataFrame | np.ndarray | None = None,
    hatch_label: str | None = None,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    diagonal: DiagonalStyle | None = None,
    diagonal_label: str = "off the colour scale",
    explain: bool = True,
    colorbar: bool = True,
    fontsize: float | None = None,
) -> Any:
    """Draw an annotated heatmap of ``matrix`` (rows = index, columns = columns) on ``ax``.

    Args:
        matrix: numeric DataFrame; NaN cells are drawn grey with "n/a".
        annotate: print each value (``fmt``) in its cell; with ``ci_low``/``ci_high`` the
            95% interval is printed below it in smaller type.
        cmap: colour map; default diverging (``RdBu_r``) when ``center`` is given, else
            sequential (``magma``).
        center: centre of a diverging map (e.g. 0 for "probe minus baseline"); the limits
            are made symmetric around it unless ``vmin``/``vmax`` are given.
        hatch_mask: bool cells to hatch (e.g. fewer than ``min_n`` examples);
            ``hatch_label`` names the reason in a legend under the axes.
        diagonal: how to draw cells where row label == column label (or i == j for square
            matrices): ``"outline"`` keeps the colour and draws a black frame; ``"distinct"``
            draws them off the colour scale (light grey, italic value) because they measure
            something else (e.g. a source model's own attack success rate); ``"blank"`` hides
            them. ``diagonal_label`` explains "distinct" cells under the x label.
        explain: write what hatching / grey diagonals mean under the x label; multi-panel
            figures pass False and say it once for the whole figure.

    Returns:
        The ``AxesImage`` (its ``.colorbar`` attribute holds the colour bar, if drawn).
    """
    if not isinstance(matrix, pd.DataFrame):
        raise KnowlensError(
            f"heatmap(): 'matrix' must be a pandas DataFrame; got {type(matrix).__name__}. "
            "Build one with table.pivot(index=..., columns=..., values='value')."
        )
    if matrix.size == 0:
        raise KnowlensError(
            "heatmap(): 'matrix' is empty (0 rows or columns); nothing to draw. "
            "Check that the table has rows for this panel."
        )
    if diagonal not in (None, "outline", "distinct", "blank"):
        raise KnowlensError(
            f"heatmap(): 'diagonal' must be None, 'outline', 'distinct' or 'blank'; got {diagonal!r}."
        )
    values = matrix.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    lo = _as_frame(ci_low, matrix, "ci_low")
    hi = _as_frame(ci_high, matrix, "ci_high")
    hatch = _as_frame(hatch_mask, matrix, "hatch_mask")
    hatch_arr = (
        np.zeros_like(values, dtype=bool)
        if hatch is None
        else hatch.fillna(False).to_numpy(dtype=bool)
    )

    diag = np.zeros_like(values, dtype=bool)
    if diagonal is not None:
        rows = [str(r) for r in matrix.index]
        cols = [str(c) for c in matrix.columns]
        if set(rows) & set(cols):
            for i, r in enumerate(rows):
                for j, c in enumerate(cols):
                    diag[i, j] = r == c
        elif n_rows == n_cols:
            np.fill_diagonal(diag, True)

    scaled = values.copy()
    if diagonal in ("distinct", "blank"):
        scaled[diag] = np.nan  # off the colour scale
    finite = scaled[np.isfinite(scaled)]
    if center is not None:
        span = float(np.max(np.abs(finite - center))) if finite.size else 1.0
        span = span or 1.0
        vmin = center - span if vmin is None else vmin
        vmax = center + span if vmax is None else vmax
        norm: mcolors.Normalize = mcolors.TwoSlopeNorm(
            vcenter=center, vmin=min(vmin, center - 1e-9), vmax=max(vmax, center + 1e-9)
        )
        cmap = cmap or DIVERGING
    else:
        if vmin is None:
            vmin = float(finite.min()) if finite.size else 0.0
        if vmax is None:
            vmax = float(finite.max()) if finite.size else 1.0
        if vmax <= vmin:
            vmin, vmax = vmin - 0.05, vmax + 0.05
        norm = mcolors.Normalize(vmin=vmin, vmax=vmax)
        cmap = cmap or SEQUENTIAL
    cm = (plt.get_cmap(cmap) if isinstance(cmap, str) else cmap).with_extremes(bad=MISSING_COLOR)

    img = ax.imshow(np.ma.masked_invalid(scaled), cmap=cm, norm=norm, aspect="auto")
    img.colorbar = None
    if fontsize is None:
        fontsize = float(np.clip(11 - 0.25 * max(n_rows, n_cols), 6.5, 10))

    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            is_diag = bool(diag[i, j])
            if is_diag and diagonal == "distinct":
                ax.add_patch(
                    mpatches.Rectangle(
                        (j - 0.5, i - 0.5), 1, 1, facecolor="#f2f2f2", edgecolor="#7f7f7f", lw=1.0
                    )
                )
            if is_diag and diagonal == "outline":
                ax.add_patch(
                    mpatches.Rectangle(
                        (j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.6
                    )
                )
            if hatch_arr[i, j]:
                ax.add_patch(
                    mpatches.Rectangle(
                        (j - 0.5, i - 0.5),
                        1,
                        1,
                        fill=False,
                        hatch="///",
                        edgecolor="#555555",
                        lw=0,
                    )
                )
            if not annotate or (is_diag and diagonal == "blank"):
                continue
            if not np.isfinite(v):
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=fontsize, color="#555555")
                continue
            if is_diag and diagonal == "distinct":
                color, style = "#333333", "italic"
            else:
                color, style = _text_color(cm(norm(v))), "normal"
            label = format(v, fmt)
            if lo is not None and hi is not None:
                a, b = lo.iat[i, j], hi.iat[i, j]
                if pd.notna(a) and pd.notna(b):
                    ax.text(
                        j,
                        i - 0.12,
                        label,
                        ha="center",
                        va="center",
                        fontsize=fontsize,
                        color=color,
                        style=style,
                        weight="bold",
                    )
                    ax.text(
                        j,
                        i + 0.22,
                        f"[{format(a, fmt)}, {format(b, fmt)}]",
                        ha="center",
                        va="center",
                        fontsize=fontsize * 0.72,
                        color=color,
                    )
                    continue
            ax.text(
                j, i, label, ha="center", va="center", fontsize=fontsize, color=color, style=style
            )

    ax.set_xticks(range(n_cols))
    ax.set_yticks(range(n_rows))
    col_labels = [str(c) for c in matrix.columns]
    rotate = n_cols > 4 or max((len(c) for c in col_labels), default=0) > 10
    ax.set_xticklabels(
        col_labels,
        rotation=45 if rotate else 0,
        ha="right" if rotate else "center",
        rotation_mode="anchor",
        fontsize=fontsize + 0.5,
    )
    ax.set_yticklabels([str(r) for r in matrix.index], fontsize=fontsize + 0.5)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=fontsize + 2)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=fontsize + 2)
    if title:
        ax.set_title(title, fontsize=fontsize + 3, pad=8)
    if colorbar:
        cb = ax.figure.colorbar(img, ax=ax, fraction=0.046, pad=0.03)
        cb.set_label(cbar_label, fontsize=fontsize + 1)
        cb.ax.tick_params(labelsize=fontsize)
        cb.outline.set_visible(False)
        img.colorbar = cb

    # Explanations go under the x label (a legend there would collide with rotated labels).
    notes = []
    if hatch_arr.any():
        notes.append(f"hatched: {hatch_label or 'too few examples'}")
    if diagonal == "distinct" and diag.any():
        notes.append(f"grey diagonal: {diagonal_label}")
    if notes and explain:
        ax.set_xlabel(
            (xlabel or "") + "\n" + "; ".join(notes),
            fontsize=fontsize + (2 if not xlabel else 1),
        )
    return img


def pivot(
    table: pd.DataFrame,
    *,
    index: str,
    columns: str,
    value: str = "value",
    index_order: Sequence[Any] | None = None,
    column_order: Sequence[Any] | None = None,
) -> pd.DataFrame:
    """A ``table.pivot`` that keeps a given row/column order (first appearance by default)."""
    missing = [c for c in (index, columns, value) if c not in table.columns]
    if missing:
        raise KnowlensError(
            f"pivot(): column(s) {missing} not in table; available: {list(table.columns)}."
        )
    m = table.pivot_table(index=index, columns=columns, values=value, aggfunc="first", dropna=False)
    rows = list(index_order) if index_order is not None else list(dict.fromkeys(table[index]))
    cols = list(column_order) if column_order is not None else list(dict.fromkeys(table[columns]))
    m = m.reindex(index=rows, columns=cols)
    m.index.name, m.columns.name = index, columns
    return m


def reliability_diagram(
    ax: plt.Axes,
    bins: pd.DataFrame,
    *,
    title: str | None = None,
    label: str | None = None,
    color: str | None = None,
) -> None:
    """Reliability diagram from a bins table with columns ``confidence`` (mean predicted
    confidence per bin), ``accuracy`` (observed frequency) and ``count``.

    Bars show observed accuracy per bin; the diagonal is perfect calibration; bin counts are
    printed above the bars so sparse bins are visible.
    """
    need = {"confidence", "accuracy", "count"}
    if not need <= set(bins.columns):
        raise KnowlensError(
            f"reliability_diagram(): bins table needs columns {sorted(need)}; got "
            f"{list(bins.columns)}."
        )
    b = bins[bins["count"] > 0]
    has_edges = {"lo", "hi"} <= set(bins.columns)
    x = (b["lo"] + b["hi"]) / 2 if has_edges else b["confidence"]
    width = float((bins["hi"] - bins["lo"]).iloc[0]) if has_edges else 1.0 / max(len(bins), 1)
    # Max-class confidence lives in [0.5, 1]: zoom there so the bars are readable.
    lo_x = 0.5 if len(b) and float(b["confidence"].min()) >= 0.5 else 0.0
    ax.plot([lo_x, 1], [lo_x, 1], ls="--", color="#888888", lw=1, label="perfect calibration")
    ax.bar(
        x,
        b["accuracy"],
        width=width * 0.9,
        color=color or "#6a51a3",
        alpha=0.85,
        edgecolor="white",
        label=label or "observed",
    )
    for xi, (_, r) in zip(x, b.iterrows(), strict=True):
        ax.text(
            xi,
            min(r["accuracy"] + 0.03, 1.02),
            str(int(r["count"])),
            ha="center",
            va="bottom",
            fontsize=6.5,
            color="#333333",
        )
    ax.set_xlim(lo_x, 1)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("confidence", fontsize=9)
    ax.set_ylabel("accuracy", fontsize=9)
    ax.tick_params(labelsize=8)
    if title:
        ax.set_title(title, fontsize=9.5)


def learning_curves(curves: pd.DataFrame) -> plt.Figure:
    """One panel per (model, estimator) of a ``learning_curves`` table: training loss (mean
    over the steps since the previous evaluation) and validation loss against the step, the
    validation AUROC on the right axis, the step whose parameters were kept dashed."""
    need = {"model", "estimator", "step", "val_loss", "val_auroc", "best_step"}
    if not need <= set(curves.columns):
        raise KnowlensError(
            f"learning_curves(): the table needs columns {sorted(need)}; got {list(curves)}."
        )
    models = list(dict.fromkeys(curves["model"]))
    ests = list(dict.fromkeys(curves["estimator"]))
    fig, axes = plt.subplots(
        len(models), len(ests), figsize=(3.6 * len(ests), 2.6 * len(models) + 0.5), squeeze=False
    )
    handles: dict[str, Any] = {}
    for i, model in enumerate(models):
        for j, est in enumerate(ests):
            ax = axes[i, j]
            g = curves[(curves["model"] == model) & (curves["estimator"] == est)]
            if g.empty:
                ax.set_visible(False)
                continue
            g = g.sort_values("step")
            if "train_loss" in g:
                ax.plot(g["step"], g["train_loss"], "o-", ms=3, color="#9e9ac8", label="train loss")
            ax.plot(g["step"], g["val_loss"], "o-", ms=3, color="#54278f", label="validation loss")
            ax.axvline(
                float(g["best_step"].iloc[0]), ls="--", lw=1, color="#444444", label="step kept"
            )
            ax.set_xlabel("step", fontsize=8.5)
            ax.set_ylabel("loss", fontsize=8.5)
            ax.tick_params(labelsize=7.5)
            right = ax.twinx()
            right.plot(g["step"], g["val_auroc"], "s:", ms=3, color="#e6550d", label="val. AUROC")
            right.set_ylim(0, 1)
            right.set_ylabel("validation AUROC", fontsize=8.5, color="#e6550d")
            right.tick_params(labelsize=7.5, colors="#e6550d")
            n = ""
            if {"n_train", "n_validation"} <= set(g.columns):
                r = g.iloc[0]
                n = f" (train {int(r['n_train'])}, val. {int(r['n_validation'])})"
            ax.set_title(f"{model}\n{est}{n}", fontsize=8.5)
            for a in (ax, right):
                for h, lab in zip(*a.get_legend_handles_labels(), strict=True):
                    handles.setdefault(lab, h)
    fig.legend(
        list(handles.values()),
        list(handles.keys()),
        loc="lower center",
        ncol=len(handles),
        fontsize=7.5,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def save_figure(fig: plt.Figure, out_dir: str | Path, stem: str, *, dpi: int = 150) -> list[Path]:
    """Write ``<out_dir>/<stem>.png`` and ``.svg`` atomically, close ``fig``, return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for ext in ("png", "svg"):
            buf = io.BytesIO()
            meta = {"Software": None} if ext == "png" else {"Date": None}
            fig.savefig(buf, format=ext, dpi=dpi, bbox_inches="tight", metadata=meta)
            path = out / f"{stem}.{ext}"
            atomic_write_bytes(path, buf.getvalue())
            paths.append(path)
    finally:
        plt.close(fig)
    return paths
