"""The report: sections of tables and notes from each benchmark, written as REPORT.md with a PNG plot."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path


@dataclass
class Table:
    caption: str
    headers: list[str]
    rows: list[list]


@dataclass
class Section:
    """One benchmark's outcome: a one-sentence summary for the README, tables, notes, raw data for the plot."""

    key: str
    title: str
    summary: str = ""
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)


def fmt(value, digits: int = 2) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def machine() -> dict:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "absent"

    import subprocess

    def tool(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError:
            return "absent"
        out = (done.stdout + done.stderr).strip().splitlines()
        return out[0] if out else "absent"

    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "os": platform.platform(),
        "versions": {d: version(d) for d in ("brainhands", "grpcio", "protobuf", "structlog", "orjson", "redis", "asyncpg")},
        "nginx": tool(["nginx", "-v"]),
        "h2load": tool(["h2load", "--version"]),
        "redis-server": tool(["redis-server", "--version"]),
    }


def render(sections: list[Section], meta: dict) -> str:
    lines = ["# brainhands benchmarks", ""]
    lines += [
        f"Run: `{meta['command']}` on {meta['started']} ({meta['mode']} mode, "
        f"{meta['elapsed_s']:.0f} s). Every figure below is a ratio or a comparison measured in the same run: "
        "absolute times move with the machine and with whatever else runs on it.",
        "",
        "## Summary",
        "",
    ]
    lines += [f"- **{s.title}.** {s.summary}" for s in sections if s.summary]
    m = meta["machine"]
    lines += [
        "",
        "## Machine and versions",
        "",
        f"- CPUs: {m['cpus']} ({m['cpu_model']}); load average at start {meta['load_start']}, at end {meta['load_end']}"
        " (the machine is shared: other work was running).",
        f"- Python {m['python']} on {m['os']}",
        "- " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- {m['nginx']}; {m['h2load']}; {m['redis-server']}",
        "",
    ]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for t in s.tables:
            lines += [f"**{t.caption}**", "", "| " + " | ".join(t.headers) + " |", "|" + "---|" * len(t.headers)]
            lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in t.rows]
            lines.append("")
        for note in s.notes:
            lines += [note, ""]
    return "\n".join(lines).rstrip() + "\n"


def write(out_dir: Path, sections: list[Section], meta: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_latency(out_dir, sections)
    if plot is not None:
        for s in sections:
            if s.key == "gateway":
                s.notes.insert(0, f"![p50 and p99 latency against concurrency]({plot.name})")
    path = out_dir / "REPORT.md"
    path.write_text(render(sections, meta))
    (out_dir / "results.json").write_text(json.dumps({"meta": meta, "sections": [asdict(s) for s in sections]}, indent=1, default=str))
    return path


def plot_latency(out_dir: Path, sections: list[Section]) -> Path | None:
    """latency.png: p50 and p99 per path against concurrency (log scales). Needs matplotlib (the bench extra)."""
    series = next((s.data.get("latency") for s in sections if s.key == "gateway"), None)
    if not series:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for i, (path, points) in enumerate(sorted(series.items())):
        xs = sorted(int(c) for c in points)
        color = f"C{i}"
        ax.plot(xs, [points[str(x)]["p50_us"] / 1000 for x in xs], "o-", color=color, label=f"{path} p50")
        ax.plot(xs, [points[str(x)]["p99_us"] / 1000 for x in xs], "s--", color=color, alpha=0.6, label=f"{path} p99")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent calls (streams on one HTTP/2 connection)")
    ax.set_ylabel("latency per call (ms)")
    ax.set_title("Echo hand: latency against concurrency, per path")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out_dir / "latency.png"
    fig.savefig(path)
    plt.close(fig)
    return path
