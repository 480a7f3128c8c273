"""Benchmark reports: the markdown table, CSV, JSON and the ratio chart."""
from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from pathlib import Path

from perf.bench_system import HALF_TITLES, ITEM_UNITS, SUBJECT, describe_error


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return ""
    if v == 0:
        return "0"
    return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:.0f}"


def ratio(res: dict, peer: str) -> float | None:
    a, b = res["runners"].get(SUBJECT, {}), res["runners"].get(peer, {})
    if a.get("median_ms") and b.get("median_ms"):
        return a["median_ms"] / b["median_ms"]
    return None


def peers_of(results: list[dict], half: str) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for res in results:
        if res.get("half") != half:
            continue
        for key, rec in res.get("runners", {}).items():
            if key != SUBJECT and rec.get("timed", True):
                seen.setdefault(key, rec.get("label", key))
    order = ["onnxruntime", "torch_eager", "torch_compile", "torch_compile_max", "onnxruntime_gpu"]
    return sorted(seen.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)


def check_cell(res: dict) -> str:
    rec = res.get("runners", {}).get(SUBJECT)
    if not rec:
        return "n/a"
    chk = rec.get("check")
    if chk == "ok":
        return f"yes ({rec.get('max_rel_err') or 0:.0e})"
    if chk == "MISMATCH":
        return "**NO** (see below)"
    if rec.get("status") != "ok":
        return "**failed**"
    return chk or "n/a"


def geomean(values: list[float]) -> float | None:
    vals = [v for v in values if v and v > 0]
    return math.exp(statistics.fmean(math.log(v) for v in vals)) if vals else None


def one_line(res: dict) -> str:
    if res.get("status") != "done" and not res.get("runners"):
        return f"{res['model']}: FAILED {res.get('error', '')}"
    parts = []
    for key, rec in res.get("runners", {}).items():
        if rec.get("median_ms") is not None:
            parts.append(f"{key} {_fmt_ms(rec['median_ms'])} ms")
        elif rec.get("status") != "ok":
            parts.append(f"{key} FAILED ({rec.get('failed_phase', '')})")
    for key, _ in peers_of([res], res["half"]):
        r = ratio(res, key)
        if r:
            parts.append(f"{SUBJECT}/{key} {r:.2f}")
    parts.append(f"check {check_cell(res)}")
    if (res.get("others_cpu_share") or 0) >= 0.05:
        parts.append(f"DISTURBED: others used {res['others_cpu_share']:.0%} of the CPUs")
    if res.get("status") != "done":
        parts.append(f"worker: {res.get('error')}")
    return f"{res['model']}: " + ", ".join(parts)


def render_markdown(info: dict, results: list[dict], brief: bool = False) -> str:
    m = info["machine"]
    v = m.get("versions", {})
    lines = [f"# tritort benchmark: {info['host']}, {info['started'][:10]}", ""]
    if not brief:
        lines += [
            f"- machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('ram_gib', '?')} GiB RAM"
            + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU") + f"; {m.get('os')}",
            "- software: python " + m.get("python", "?") + ", "
            + ", ".join(f"{k} {val}" for k, val in v.items())
            + (f"; BLAS: {m['blas']}" if m.get("blas") else "")
            + (f"; tritort git {m['git']}" if m.get("git") else ""),
            f"- command: `{info['command']}`",
            f"- settings: {info['threads']} threads for every runtime (onnxruntime "
            "intra_op_num_threads, inter_op 1, sequential; NumPy's BLAS pool for tritort's CPU "
            f"provider), {info['warmup']} warm-up runs, {info['repeat']} timed rounds "
            "alternating the runtimes (order reversed every other round), runs shorter than "
            f"{info['min_sample_ms']:g} ms averaged in groups per sample, "
            f"{info.get('settle_ms', 0):g} ms idle before each sample, at most "
            f"{info['max_seconds']:g} s of timing per model"
            + ("; --quick shapes" if info.get("quick") else ""),
            "- ratio = tritort median latency / peer median latency: **below 1 tritort is "
            "faster**, above 1 it is slower. The geometric mean covers the models where both "
            "ran and the outputs agreed.",
            ""]
    for half in info["halves"]:
        rows = [r for r in results if r.get("half") == half]
        if not rows:
            continue
        peers = peers_of(rows, half)
        lines += [f"## {HALF_TITLES[half]}", ""]
        head = ["model", "input", "outputs agree", f"{SUBJECT} ms"]
        head += [f"{label} ms" for _, label in peers]
        head += [f"{SUBJECT} / {label}" for _, label in peers]
        head += [f"{SUBJECT} items/s"] + [f"{label} items/s" for _, label in peers]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        ratios: dict[str, list[float]] = {k: [] for k, _ in peers}
        for res in rows:
            recs = res.get("runners", {})
            unit = ITEM_UNITS.get(res.get("items", ""), "items/s")

            def lat(key: str) -> str:
                rec = recs.get(key, {})
                if rec.get("median_ms") is not None:
                    return (f"{_fmt_ms(rec['median_ms'])} [{_fmt_ms(rec['p10_ms'])}, "
                            f"{_fmt_ms(rec['p90_ms'])}]")
                if rec.get("status") == "failed":
                    return "failed"
                return "incomplete" if res.get("status") != "done" and rec else "n/a"

            def thr(key: str) -> str:
                rec = recs.get(key, {})
                return (f"{_fmt(rec['throughput_per_s'])} {unit}"
                        if rec.get("throughput_per_s") else "")

            cells = [f"{res['model']}", res.get("input", ""), check_cell(res), lat(SUBJECT)]
            cells += [lat(k) for k, _ in peers]
            for k, _ in peers:
                r = ratio(res, k)
                cells.append(f"**{r:.2f}**" if r else "")
                if r and recs.get(SUBJECT, {}).get("check") == "ok":
                    ratios[k].append(r)
            cells += [thr(SUBJECT)] + [thr(k) for k, _ in peers]
            lines.append("| " + " | ".join(cells) + " |")
        gm = ["**geometric mean**", "", "", ""] + [""] * len(peers)
        for k, _ in peers:
            g = geomean(ratios[k])
            gm.append(f"**{g:.2f}** ({len(ratios[k])} model{'' if len(ratios[k]) == 1 else 's'})" if g else "")
        gm += [""] * (1 + len(peers))
        lines += ["| " + " | ".join(gm) + " |", "",
                  "Latency per run in ms: median [p10, p90] over the timed samples. "
                  "Outputs agree: every output of tritort within the tolerance of the "
                  "reference (onnxruntime CPU), checked before timing; the number is the largest "
                  "absolute difference over the largest reference magnitude.", ""]
        if brief:
            continue
        lines += ["### Session creation and memory", "",
                  "| model | runtime | create cold s | create warm s | first run s | session "
                  "RSS MB | peak RSS MB | traced peak MB | samples | placement |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for res in rows:
            for key, rec in res.get("runners", {}).items():
                place = ", ".join(f"{ep.replace('ExecutionProvider', '')} {n}"
                                  for ep, n in rec.get("placement", {}).items())
                cuda = (f" (cuda {_fmt(rec['cuda_peak_mb'])})"
                        if rec.get("cuda_peak_mb") is not None else "")
                samples = (f"{rec['n_samples']} x {rec['inner']}" if rec.get("n_samples")
                           else "")
                lines.append(
                    f"| {res['model']} | {rec.get('label', key)} | {_fmt(rec.get('create_cold_s'))} "
                    f"| {_fmt(rec.get('create_warm_s'))} | {_fmt(rec.get('first_run_s'))} "
                    f"| {_fmt(rec.get('session_rss_mb'))} | {_fmt(rec.get('peak_rss_mb'))}{cuda} "
                    f"| {_fmt(rec.get('traced_peak_mb'))} | {samples} | {place} |")
        lines += [""]
        failures = []
        for res in rows:
            if res.get("status") != "done":
                failures.append(f"- **{res['model']}**: {res.get('error')}")
            for key, rec in res.get("runners", {}).items():
                if rec.get("status") == "failed":
                    failures.append(f"- **{res['model']}** / {rec.get('label', key)}, phase "
                                    f"'{rec.get('failed_phase', '?')}': {rec.get('error')}")
                if rec.get("check") == "MISMATCH":
                    failures.append(f"- **{res['model']}** / {rec.get('label', key)}: outputs "
                                    f"differ from the reference: {rec.get('check_detail')}")
                if rec.get("warm_error"):
                    failures.append(f"- **{res['model']}** / {rec.get('label', key)}, second "
                                    f"session: {rec['warm_error']}")
        if failures:
            lines += ["### Failures", ""] + failures + [""]
        by_note: dict[str, list[str]] = {}
        for res in rows:
            for n in dict.fromkeys(res.get("notes", [])):
                by_note.setdefault(n, []).append(res["model"])
        if by_note:
            lines += ["### Notes", ""] + [f"- {', '.join(ms)}: {n}" for n, ms in by_note.items()]
            lines += [""]
    if not brief:
        lines += ["## What is measured", "",
                  "- Each model runs in its own worker process holding every runtime: sessions "
                  "are created from the same .onnx file and fed the same seeded NumPy inputs "
                  "(host memory in, host memory out, for every runtime).",
                  "- **create cold**: the first session of that model in the process (after the "
                  "imports); **create warm**: a second session of the same model in the same "
                  "process. For torch, creation is building the module from its seed (and "
                  "wrapping it in torch.compile); compilation happens in the first run.",
                  "- **first run**: the first inference after creation (plans, kernel "
                  "compilation, allocator growth).",
                  "- **session RSS**: resident memory added by creating the session (weights, "
                  "plans). **peak RSS**: the kernel's high-water mark (VmHWM, reset through "
                  "/proc/self/clear_refs) during creation and first run, above the RSS before "
                  "creation; freed heap is returned (malloc_trim) before each runtime. "
                  "**cuda**: torch's allocator peak (GPU half only; onnxruntime-gpu's arena is "
                  "not visible to it).",
                  "- **traced peak**: tracemalloc's peak during one run: Python objects and "
                  "NumPy buffers (all of tritort's CPU work), only output arrays for "
                  "onnxruntime, whose C++ arena tracemalloc does not see.",
                  "- **latency**: after the warm-up, rounds alternate the runtimes (the order "
                  "reversed every other round); a sample is one run, or the mean of a group of "
                  "runs when one run is shorter than the minimum sample time (samples = rounds "
                  "x runs per sample). Throughput = batch / median latency.",
                  "- **disturbance**: the share of all CPUs used by other processes while a "
                  "model was timed (/proc/stat minus this process); 5% or more is noted per "
                  "model.",
                  ""]
    return "\n".join(lines)


CSV_FIELDS = ["date", "host", "half", "model", "input", "batch", "runtime", "label", "status",
              "failed_phase", "error", "check", "max_abs_err", "max_rel_err", "n_samples", "inner",
              "median_ms", "p10_ms", "p90_ms", "min_ms", "max_ms", "mean_ms",
              "throughput_per_s", "ratio_tritort_over_this", "create_cold_s", "create_warm_s",
              "first_run_s", "session_rss_mb", "peak_rss_mb", "traced_peak_mb", "cuda_peak_mb",
              "others_cpu_share"]


def write_reports(out: Path, stem: str, info: dict, results: list[dict], chart: bool
                  ) -> list[Path]:
    md, csv_path, js = out / f"{stem}.md", out / f"{stem}.csv", out / f"{stem}.json"
    md.write_text(render_markdown(info, results) + "\n")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for res in results:
            recs = res.get("runners") or {"": {"status": "failed"}}
            for key, rec in recs.items():
                row = {k: rec.get(k) for k in CSV_FIELDS if k in rec}
                row.update(date=info["started"][:10], host=info["host"], half=res.get("half"),
                           model=res["model"], input=res.get("input", ""),
                           batch=res.get("batch", ""), runtime=key,
                           label=rec.get("label", key))
                if res.get("others_cpu_share") is not None:
                    row["others_cpu_share"] = res["others_cpu_share"]
                if res.get("status") != "done" and not rec.get("error"):
                    row["error"] = res.get("error")
                if key and key != SUBJECT:
                    r = ratio(res, key)
                    row["ratio_tritort_over_this"] = f"{r:.4f}" if r else ""
                for k, val in list(row.items()):
                    if isinstance(val, float):
                        row[k] = f"{val:.6g}"
                w.writerow(row)
    slim = [{**res, "runners": {k: dict(v) for k, v in res.get("runners", {}).items()}}
            for res in results]
    js.write_text(json.dumps({"run": info, "results": slim}, indent=1, default=str))
    paths = [md, csv_path, js]
    if chart:
        try:
            paths.append(write_chart(out / f"{stem}.png", info, results))
        except Exception as e:  # noqa: BLE001
            print(f"chart not written: {describe_error(e)}", file=sys.stderr)
    return paths


def write_chart(path: Path, info: dict, results: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    halves = [h for h in info["halves"] if any(r.get("half") == h for r in results)]
    n_models = max(len([r for r in results if r.get("half") == h]) for h in halves)
    fig, axes = plt.subplots(len(halves), 1, figsize=(min(14, max(7, 0.75 * n_models + 3)),
                                                     5.0 * len(halves)), squeeze=False)
    for ax, half in zip(axes[:, 0], halves):
        rows = [r for r in results if r.get("half") == half]
        peers = peers_of(rows, half)
        width = 0.8 / max(1, len(peers))
        names = [r["model"] for r in rows]
        for j, (key, label) in enumerate(peers):
            xs, ys = [], []
            for i, res in enumerate(rows):
                r = ratio(res, key)
                x = i + (j - (len(peers) - 1) / 2) * width
                if r:
                    xs.append(x)
                    ys.append(r)
                    ok = res["runners"][SUBJECT].get("check") == "ok"
                    ax.annotate(f"{r:.2f}" + ("" if ok else " (outputs differ)"), (x, r),
                                ha="center", va="bottom" if r >= 1 else "top", fontsize=7,
                                rotation=90 if len(peers) > 2 or not ok else 0)
                elif j == 0:
                    ax.annotate("failed" if res.get("runners", {}).get(SUBJECT, {}).get(
                        "status") == "failed" else "n/a", (i, 1.0), ha="center", fontsize=7,
                        color="red")
            # bars grow from 1 (parity): up when tritort is slower, down when it is faster
            agreed = [ratio(res, key) for res in rows
                      if res.get("runners", {}).get(SUBJECT, {}).get("check") == "ok"]
            g = geomean([a for a in agreed if a])
            ax.bar(xs, [y - 1.0 for y in ys], bottom=1.0, width=width,
                   label=f"tritort / {label}" + (f" (geometric mean {g:.2f})" if g else ""))
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}"))
        ax.grid(axis="y", which="major", linewidth=0.3, alpha=0.5)
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_ylabel("latency ratio (log; >1: tritort slower)")
        m = info["machine"]
        where = m.get("gpu") if half == "gpu" else f"{m.get('cpu')}, {info['threads']} threads"
        ax.set_title(f"{HALF_TITLES[half].split(':')[0]}: tritort latency / peer, "
                     f"{info['host']} ({where}), {info['started'][:10]}", fontsize=9)
        ax.legend(fontsize=8)
        ax.margins(y=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
