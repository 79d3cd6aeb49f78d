"""Plot a bench_layernorm JSON: bandwidth as % of copy against N, one line per provider.

One row of panels per dtype, forward on the left, backward on the right (only the
directions the run timed); the dashed grey
line is the best peer of the baseline file (shapes with the same rows and N only).  Usage::

    python -m benchmarks.plot_results benchmarks/results/layernorm-h100-2026-11-26.json [-o out.png]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

MAIN_TAGS = ("sweep", "odd", "fp16", "fp32", "mixed")   # rows = elements // N
MODES = (("fwd", "forward"), ("bwd", "backward"))
STYLE = {  # provider -> (colour, marker)
    "fastlayernorm": ("tab:red", "o"), "torch": ("tab:blue", "s"), "compile": ("tab:green", "^"),
    "liger": ("tab:purple", "D"), "apex": ("tab:orange", "v"),
}
DTYPE_LABEL = {("bfloat16", "bfloat16"): "bf16", ("float16", "float16"): "fp16",
               ("float32", "float32"): "fp32", ("bfloat16", "float32"): "bf16 in, fp32 weight"}


def _series(rows: List[dict], dtype_pair: Tuple[str, str], mode: str) -> Dict[str, List[Tuple[int, float]]]:
    """provider -> sorted [(N, % of copy)] for the main-sweep rows of one dtype."""
    out: Dict[str, List[Tuple[int, float]]] = {}
    for r in rows:
        if (r["dtype"], r["wdtype"]) == dtype_pair and r["tag"] in MAIN_TAGS and r.get(f"{mode}_frac"):
            out.setdefault(r["provider"], []).append((r["N"], 100 * r[f"{mode}_frac"]))
    return {p: sorted(v) for p, v in out.items()}


def _baseline_series(summary: List[dict], dtype_pair: Tuple[str, str], mode: str) -> List[Tuple[int, float]]:
    return sorted((e["N"], 100 * e[f"baseline_best_{mode}_frac"]) for e in summary
                  if (e["dtype"], e["wdtype"]) == dtype_pair and e["tag"] in MAIN_TAGS
                  and e.get("baseline_match") == "exact" and e.get(f"baseline_best_{mode}_frac"))


def plot(data: Union[dict, str, Path], png_path: Union[str, Path]) -> Optional[Path]:
    """Writes the PNG; returns its path, or None (with a message) when it cannot."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot "
              "(re-plot later with python -m benchmarks.plot_results RESULT.json)", flush=True)
        return None
    try:
        if not isinstance(data, dict):
            data = json.loads(Path(data).read_text())
        rows = [r for r in data["rows"] if r.get("status") in ("ok", "partial")]
        pairs = list(dict.fromkeys((r["dtype"], r["wdtype"]) for r in rows if r["tag"] in MAIN_TAGS))
        if not pairs:
            print("plot: no sweep rows to plot", flush=True)
            return None
        # Only the directions the run timed (a backward-only run: one column).
        modes = [(mode, name) for mode, name in MODES
                 if any(r.get(f"{mode}_frac") for r in rows if r["tag"] in MAIN_TAGS)] or list(MODES)
        fig, axes = plt.subplots(len(pairs), len(modes), figsize=(max(9, 7 * len(modes)), 3.8 * len(pairs)),
                                 squeeze=False)
        for i, pair in enumerate(pairs):
            for j, (mode, mode_name) in enumerate(modes):
                _panel(axes[i][j], _series(rows, pair, mode),
                       _baseline_series(data.get("summary", []), pair, mode),
                       f"{DTYPE_LABEL.get(pair, '/'.join(pair))} {mode_name}",
                       data.get("baseline_device"))
        sep = " - " if len(modes) > 1 else "\n"  # one column: the title on two lines
        fig.suptitle(f"LayerNorm bandwidth as % of a device copy ({data['copy_gbs']:.0f} GB/s)"
                     f"{sep}{data['device']} - {data['date']}")
        fig.tight_layout()
        png_path = Path(png_path)
        png_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png_path, dpi=110)
        plt.close(fig)
        print(f"wrote {png_path}", flush=True)
        return png_path
    except Exception as exc:  # noqa: BLE001 - a plot must never cost the results
        print(f"plot failed: {type(exc).__name__}: {exc}", flush=True)
        return None


def _panel(ax, series, baseline, title, baseline_device=None) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_title(title)
    if not series:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    sizes = sorted({n for points in series.values() for n, _ in points})
    for provider, points in series.items():
        colour, marker = STYLE.get(provider, (None, "x"))
        ax.plot([n for n, _ in points], [v for _, v in points], marker=marker, color=colour,
                label=provider, linewidth=2.2 if provider == "fastlayernorm" else 1.2, markersize=4)
    if baseline:
        ax.plot([n for n, _ in baseline], [v for _, v in baseline], "--", color="grey",
                label="best peer (baseline file" + (f", {baseline_device.split(' (')[0]})"
                                                     if baseline_device else ")"),
                linewidth=1)
    ax.axhline(100, color="black", linestyle=":", linewidth=0.8)
    ax.set_xscale("log", base=2)
    if sizes:
        ax.xaxis.set_major_locator(FixedLocator(sizes))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(n) for n in sizes], rotation=60, fontsize=7)
    top = max([v for points in series.values() for _, v in points] + [v for _, v in baseline] + [100])
    ax.set_ylim(0, max(110, 1.05 * top))
    ax.set_xlabel("N (hidden size)")
    ax.set_ylabel("% of copy bandwidth")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Plot a bench_layernorm JSON result.")
    p.add_argument("json", help="result JSON written by benchmarks.bench_layernorm")
    p.add_argument("-o", "--output", default=None, help="PNG path (default: next to the JSON)")
    args = p.parse_args(argv)
    out = args.output or str(Path(args.json).with_suffix(".png"))
    return 0 if plot(args.json, out) else 1


if __name__ == "__main__":
    sys.exit(main())
