#!/usr/bin/env python3
"""Draw targets.png from a `bench/run targets` results folder.

    bench/run plot [RESULTS_DIR] [--png PATH]     # installs matplotlib into the bench venv
    <bench venv>/bin/python bench/plot.py RESULTS_DIR [-o PATH]

Left: one group of bars per ratio target (sleipnir, Granian, hypercorn where it ran), each the
median of the per-round ratios to the target's baseline, on a log scale; the baseline is the
dotted line at 1 and the target's threshold the black bar across the group. Right: start-up
time in ms against its absolute limit. Reads only results.json (its "targets" list, written
by run.py's evaluate_targets).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
from pathlib import Path
from typing import Any

COLORS = {
    "sleipnir": "#1f5fa8",
    "granian-1core": "#e08a1e",
    "hypercorn-uvloop": "#3a9a48",
    "uvicorn-httptools-uvloop": "#9a9a9a",
}
LABELS = {
    "sleipnir": "sleipnir",
    "granian-1core": "Granian (1 worker, 1 thread)",
    "hypercorn-uvloop": "hypercorn (uvloop)",
    "uvicorn-httptools-uvloop": "uvicorn (httptools + uvloop)",
}
SERVERS = ["sleipnir", "granian-1core", "hypercorn-uvloop"]


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported late: only this script needs it, and
    mypy need not find it)."""
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def verdict(row: dict[str, Any]) -> tuple[str, str]:
    return {True: ("holds", "#2a7d2a"), False: ("misses", "#c0392b")}.get(
        row["holds"], ("not measured", "#777777")
    )


def ratio_panel(ax: Any, rows: list[dict[str, Any]]) -> None:
    values = [
        v for r in rows for v in (*r["values"].values(), r["threshold"]) if v is not None and v > 0
    ]
    lo = min([1.0, *values]) / 1.6
    hi = max([1.0, *values]) * 1.8
    height = 0.8 / len(SERVERS)
    for y, row in enumerate(rows):
        shown = [n for n in SERVERS if n in row["values"] or n in row["skipped"]]
        for i, n in enumerate(shown):
            yy = y - 0.4 + height * (i + 0.5) + height * (len(SERVERS) - len(shown)) / 2
            v = row["values"].get(n)
            if v is None or v <= 0:
                why = "n/a: " + row["skipped"][n] if n in row["skipped"] else "no data"
                ax.text(lo * 1.05, yy, why, va="center", fontsize=8, color="#555555")
                continue
            ax.barh(yy, v - lo, left=lo, height=height * 0.9, color=COLORS[n])
            weight = "bold" if n == "sleipnir" else "normal"
            ax.text(
                v * 1.03,
                yy,
                f"{v:.2f}",
                va="center",
                fontsize=8,
                fontweight=weight,
                zorder=5,  # over the threshold bar
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.85},
            )
        thr = row["threshold"]
        ax.plot([thr, thr], [y - 0.46, y + 0.46], color="black", lw=2.5, solid_capstyle="butt")
        word, color = verdict(row)
        ax.text(1.01, y, word, transform=ax.get_yaxis_transform(), va="center", color=color)
    ax.axvline(1.0, color="#555555", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlim(lo, hi)
    ticks = [2.0**k for k in range(math.floor(math.log2(lo)) + 1, math.ceil(math.log2(hi)))]
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.set_yticks(range(len(rows)), [label(r) for r in rows], fontsize=9)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first target on top
    ax.set_xlabel("ratio to the baseline (log scale; dotted: baseline = 1, black bar: target)")
    ax.grid(axis="x", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)


def label(row: dict[str, Any]) -> str:
    op = ">=" if row["higher"] else "<="
    better = "" if row["higher"] else ", lower is better"
    vs = (row["vs"] or "-").replace("-httptools-uvloop", "").replace("-uvloop", "")
    where = f" ({row['worst_workload']})" if row.get("worst_workload") else ""
    return f"{row['target']}{where}\nvs {vs}: target {op} {row['threshold']:g}{better}"


def startup_panel(ax: Any, row: dict[str, Any]) -> None:
    bars = dict(row["values"])
    if row["vs"] and row["vs"] in row["medians"]:  # the baseline's own median, for scale
        bars[row["vs"]] = row["medians"][row["vs"]]
    names = [n for n in [*SERVERS, *bars] if n in bars and bars[n] is not None]
    names = list(dict.fromkeys(names))
    for x, n in enumerate(names):
        ax.bar(x, bars[n], color=COLORS.get(n, "#9a9a9a"), width=0.7)
        ax.text(x, bars[n] * 1.02, f"{bars[n]:.0f}", ha="center", va="bottom", fontsize=9)
    ax.axhline(row["threshold"], color="black", lw=2.5)
    ax.set_xticks(range(len(names)), [LABELS.get(n, n).split(" (")[0] for n in names])
    top = max([row["threshold"], *(bars[n] for n in names)])
    ax.set_ylim(0, top * 1.25)
    ax.set_ylabel("ms, spawn to the first 200 (median)")
    word, color = verdict(row)
    ax.set_title(f"start-up, limit {row['threshold']:g} ms\n(black line): {word}", color=color)
    ax.grid(axis="y", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)


def draw(record: dict[str, Any], png: Path) -> None:
    plt = pyplot()
    targets: list[dict[str, Any]] = record["targets"]
    ratios = [r for r in targets if not r["absolute"]]
    starts = [r for r in targets if r["absolute"] and r["values"]]
    fig = plt.figure(figsize=(14, 0.62 * len(ratios) + 2.4), dpi=110)
    grid = fig.add_gridspec(1, 2, width_ratios=[4.2, 1], wspace=0.35)
    ratio_panel(fig.add_subplot(grid[0]), ratios)
    if starts:
        startup_panel(fig.add_subplot(grid[1]), starts[0])
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=COLORS[n]) for n in [*SERVERS, "uvicorn-httptools-uvloop"]
    ]
    fig.legend(
        handles,
        [LABELS[n] for n in [*SERVERS, "uvicorn-httptools-uvloop"]],
        loc="upper center",
        ncol=4,
        frameon=False,
        bbox_to_anchor=(0.5, 0.965),
    )
    args = record.get("args", {})
    fig.suptitle(
        "sleipnir against issue 6's targets: ratios to uvicorn 0.54 (httptools + uvloop) unless"
        f" named\ncommit {record.get('commit', '?')}, {record.get('stamp', '')}, medians over"
        f" {args.get('rounds', '?')} alternating round(s) of {args.get('duration', 0):g} s",
        fontsize=11,
        y=0.995,
    )
    fig.subplots_adjust(left=0.25, right=0.97, top=1 - 1.1 / fig.get_figheight(), bottom=0.1)
    fig.savefig(png)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results_dir", type=Path, help="a bench/results/<stamp>-targets folder")
    ap.add_argument("-o", "--out", type=Path, help="PNG path (default RESULTS_DIR/targets.png)")
    args = ap.parse_args()
    record = json.loads((args.results_dir / "results.json").read_text())
    if not record.get("targets"):
        ap.error(f"{args.results_dir}/results.json has no targets: not a `bench/run targets` run")
    png: Path = args.out or args.results_dir / "targets.png"
    draw(record, png)
    print(png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
