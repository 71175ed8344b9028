"""The outputs of a run: the printed table, bench.json, bench.md (the committed-results format) and bench.png."""

from __future__ import annotations

import json
from pathlib import Path

from focalfast.bench.variants import TRAIN_VARIANTS
from focalfast.bench.workloads import PASS_LABELS


JSON_FORMAT = "focalfast-bench/1"
CPU_NOTE = ("CPU run: these numbers time PyTorch's CPU kernels to exercise the harness. "
            "They are not GPU numbers and say nothing about the fused kernels' speed.")


COLUMNS = ("case", "shape", "dtype", "backend", "time ms", "x eager", "x compiled", "GB/s",
           "% roofline", "peak MiB")
TRAIN_COLUMNS = ("img/s", "x timm")


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}" if abs(value) >= 1 else f"{value:.{digits + 1}f}"


def table_rows(rows: list) -> tuple:
    """Header and cells of the table (rows that ran or failed; skipped ones are listed apart)."""
    shown = [r for r in rows if r["status"] != "skipped"]
    with_train = any(r["kind"] == "train" for r in shown)
    header = COLUMNS + (TRAIN_COLUMNS if with_train else ())
    cells = []
    for r in shown:
        ok = r["status"] == "ok"
        peak = r.get("peak_memory_bytes")
        line = [f"{r['kind']} {PASS_LABELS[r['pass']]}", r["shape"], r["dtype"], r["variant"],
                fmt(r.get("median_ms"), 3) if ok else r["status"],
                fmt(r.get("speedup_vs_eager")), fmt(r.get("speedup_vs_compiled")),
                fmt(r.get("achieved_gbps"), 1), fmt(r.get("roofline_pct"), 1),
                fmt(None if peak is None else peak / 2**20, 1)]
        if with_train:
            line += [fmt(r.get("images_per_s"), 1), fmt(r.get("speedup_vs_timm"))]
        cells.append(line)
    return header, cells


def format_table(rows: list) -> str:
    header, cells = table_rows(rows)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def format_markdown_table(rows: list) -> str:
    header, cells = table_rows(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    return "\n".join(lines)


def not_run_lines(rows: list) -> list:
    """One line per (variant, reason) that kept rows from running, and per failure."""
    seen, lines = set(), []
    for r in rows:
        if r["status"] == "ok":
            continue
        where = "" if r["status"] == "skipped" else f" [{r['kind']} {PASS_LABELS[r['pass']]} {r['shape']} {r['dtype']}]"
        text = f"{r['variant']} {r['status']}{where}: {r.get('reason', '')}"
        if text not in seen:
            seen.add(text)
            lines.append(text)
    return lines


def format_max_resolution(entries: list) -> str:
    lines = []
    for e in entries:
        if "error" in e:
            lines.append(f"{e['variant']}: {e['error']}")
            continue
        peak = e.get("peak_memory_bytes")
        lines.append(f"{e['variant']:>8} {e['dtype']} batch {e['batch']}: largest resolution under "
                     f"{e['cap_bytes'] / 2**30:.1f} GiB = {e['resolution']} px"
                     + (f" (peak {peak / 2**30:.2f} GiB)" if peak else ""))
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    """The committed-results format (benchmarks/results/README.md): header, table, notes."""
    env = report["environment"]
    lines = [f"# focalfast bench: {env['device']}", "",
             f"- device: {env['device']}" + (f", {env.get('sm_count')} SMs, "
                                             f"{env.get('memory_bytes', 0) / 2**30:.0f} GiB"
                                             if env["device_type"] == "cuda" else ""),
             f"- torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, Triton {env['triton']}, "
             f"Python {env['python']}",
             f"- commit {env['commit']}, date {env['date']}",
             f"- suite {report['settings']['suite']}, training step of {report['settings']['model']}; "
             f"median of {report['settings']['rounds']} timed calls after {report['settings']['warmup']} "
             f"warm-up calls (training step: {report['settings']['rounds_train']} after "
             f"{report['settings']['warmup_train']}), "
             + ("CUDA events, input sets rotated to cover 4x L2" if env["device_type"] == "cuda"
                else "time.perf_counter")]
    ceilings = report.get("ceilings")
    if ceilings:
        lines.append(f"- measured ceilings: copy {ceilings['bandwidth'] / 1e12:.2f} TB/s, fp32 FMA "
                     f"{ceilings['fp32_flops'] / 1e12:.1f} TFLOP/s, bf16 GEMM "
                     f"{ceilings['bf16_gemm_flops'] / 1e12:.0f} TFLOP/s")
    if env["device_type"] != "cuda":
        lines += ["", f"**{CPU_NOTE}**"]
    lines += ["", format_markdown_table(report["results"])]
    notes = not_run_lines(report["results"])
    if notes:
        lines += ["", "Not run or failed:", ""] + [f"- {n}" for n in notes]
    if report.get("max_resolution"):
        lines += ["", "Largest training resolution under the memory cap:", "", "```",
                  format_max_resolution(report["max_resolution"]), "```"]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """PNG: median time per case and backend (log scale); peak memory of training steps if measured."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = [r for r in report["results"] if r["status"] == "ok"]
    cases = list(dict.fromkeys((r["kind"], r["pass"], r["shape"], r["dtype"]) for r in ok))
    variants = [v for v in TRAIN_VARIANTS if any(r["variant"] == v for r in ok)]
    memory = [r for r in ok if r["kind"] == "train" and r.get("peak_memory_bytes")]
    panels = 2 if memory else 1
    height = max(3.0, 0.32 * len(cases) * max(1, len(variants)) / 2 + 1.5)
    fig = Figure(figsize=(10 * panels, height))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, panels, 1)
    median = {(r["kind"], r["pass"], r["shape"], r["dtype"], r["variant"]): r["median_ms"] for r in ok}
    bar = 0.8 / max(1, len(variants))
    for j, variant in enumerate(variants):
        found = [(i + j * bar, median[case + (variant,)]) for i, case in enumerate(cases)
                 if case + (variant,) in median]
        ax.barh([y for y, _ in found], [x for _, x in found], height=bar, label=variant)
    ax.set_yticks([i + bar * (len(variants) - 1) / 2 for i in range(len(cases))])
    ax.set_yticklabels([f"{k} {PASS_LABELS[p]} {s} {d}" for k, p, s, d in cases], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median time per call, ms (log scale)")
    ax.legend(fontsize=8)
    env = report["environment"]
    title = f"focalfast bench on {env['device']}, torch {env['torch']}, {env['commit']}"
    ax.set_title(title if env["device_type"] == "cuda" else title + "\nCPU: not GPU numbers", fontsize=9)
    if memory:
        ax2 = fig.add_subplot(1, 2, 2)
        labels = [f"{r['shape']} {r['dtype']} {r['variant']}" for r in memory]
        ax2.barh(range(len(memory)), [r["peak_memory_bytes"] / 2**30 for r in memory])
        ax2.set_yticks(range(len(memory)))
        ax2.set_yticklabels(labels, fontsize=7)
        ax2.invert_yaxis()
        ax2.set_xlabel("peak allocated memory of a training step, GiB")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_outputs(report: dict, out_dir: Path, with_plot: bool) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "markdown": out_dir / "bench.md"}
    paths["json"].write_text(json.dumps(report, indent=1, default=str) + "\n")
    paths["markdown"].write_text(markdown_report(report))
    if with_plot:
        paths["png"] = out_dir / "bench.png"
        plot(report, paths["png"])
    return paths
