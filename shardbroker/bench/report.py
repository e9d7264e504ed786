"""Human-readable forms of the result document: a terminal table and Markdown (the README's
Performance section). Pure: the document in, text out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from shardbroker.bench.scenarios import SENDER_CEILING

Row = list[str]
Column = tuple[str, Callable[[dict[str, Any]], str]]

# A contender at this fraction of the sink's GB/s or more may have been held back by the
# bench's senders rather than by its own receive path.
SENDER_BOUND_AT = 0.8


def _small(v: float) -> str:
    """Per-batch counts: enough decimals to tell 0.004 from 0."""
    return format(v, ".1f" if abs(v) >= 10 else ".2f" if abs(v) >= 1 else ".3f")


def _fmt(v: float, fmt: str) -> str:
    return _small(v) if fmt == "small" else format(v, fmt)


def _num(v: float | None, fmt: str) -> str:
    return "–" if v is None else _fmt(v, fmt)


def _cell(e: dict[str, Any], metric: str, fmt: str, spread: bool = False) -> str:
    s = e["summary"].get(metric)
    if s is None:
        return "–"
    text = _fmt(s["median"], fmt)
    if spread and s["n"] > 1:
        text += f" ({_fmt(s['min'], fmt)}–{_fmt(s['max'], fmt)})"
    return text


THROUGHPUT_COLS: tuple[Column, ...] = (
    ("GB/s median (min–max)", lambda e: _cell(e, "gbps", ".2f", True)),
    ("batches/s", lambda e: _cell(e, "batches_per_s", ",.0f")),
    ("rx CPU s/GB", lambda e: _cell(e, "receiver_cpu_s_per_gb", ".3f")),
    ("machine CPU s/GB", lambda e: _cell(e, "machine_cpu_s_per_gb", ".3f")),
    ("recv calls/batch", lambda e: _cell(e, "recv_calls_per_batch", "small")),
    ("wakeups/batch", lambda e: _cell(e, "wakeups_per_batch", "small")),
    ("rx RSS MiB", lambda e: _cell(e, "receiver_rss_mib", ".0f")),
    ("x limit", lambda e: _num(e["ratios"].get("vs_limit"), ".2f")),
    ("x pyzmq", lambda e: _num(e["ratios"].get("vs_pyzmq"), ".2f")),
)

LATENCY_COLS: tuple[Column, ...] = (
    ("offered GB/s", lambda e: _cell(e, "offered_gbps", ".2f")),
    ("achieved GB/s", lambda e: _cell(e, "gbps", ".2f")),
    ("p50 us", lambda e: _cell(e, "latency_p50_us", ".0f", True)),
    ("p99 us", lambda e: _cell(e, "latency_p99_us", ".0f", True)),
    ("p99.9 us", lambda e: _cell(e, "latency_p999_us", ".0f", True)),
    ("rx CPU s/GB", lambda e: _cell(e, "receiver_cpu_s_per_gb", ".3f")),
    ("wakeups/batch", lambda e: _cell(e, "wakeups_per_batch", "small")),
)


# Ratio columns shown only in scenarios that have them: against the senders' ceiling (the
# sink) and, with --baseline, this checkout against the baseline's broker.
OPTIONAL_RATIOS = (("x sink", "vs_sink"), ("x base", "vs_base"))


def _ratio_col(title: str, key: str) -> Column:
    return title, lambda e: _num(e["ratios"].get(key), ".2f")


def _columns(s: dict[str, Any]) -> list[Column]:
    cols = list(LATENCY_COLS if s["kind"] == "latency" else THROUGHPUT_COLS)
    cols += [_ratio_col(title, key) for title, key in OPTIONAL_RATIOS
             if any(key in e["ratios"] for e in s["contenders"])]
    return cols


def display_name(name: str) -> str:
    """The sink's row says what it is: the load generator's ceiling, not a result to beat."""
    return f"{name} (sender ceiling)" if name == SENDER_CEILING else name


def ceiling_notes(s: dict[str, Any]) -> list[str]:
    """What the sink's figure says about the other rows of a throughput scenario."""
    sink = next((e for e in s["contenders"] if e["name"] == SENDER_CEILING), None)
    if sink is None or "gbps" not in sink["summary"]:
        return []
    near = [(e["name"], e["ratios"]["vs_sink"]) for e in s["contenders"]
            if e["name"] != SENDER_CEILING and (e["ratios"].get("vs_sink") or 0)
            >= SENDER_BOUND_AT]
    head = (f"{SENDER_CEILING} is not a contender: it reads, discards and acks, so its "
            f"{sink['summary']['gbps']['median']:.2f} GB/s is what the bench's senders can push "
            "here")
    if not near:
        return [f"{head}; every contender measured is below {SENDER_BOUND_AT:.0%} of it: "
                "none was limited by the load generator"]
    return [f"{head}; at {SENDER_BOUND_AT:.0%} of it or more, these may be limited by the "
            "load generator: " + ", ".join(f"{n} ({r:.2f})" for n, r in near)]


def _status(e: dict[str, Any]) -> str | None:
    if e["status"] == "skipped":
        return f"skipped: {e['skip_reason']}"
    if e["status"] == "failed":
        errors = [r["error"] for r in e["runs"] if r["error"]]
        return f"FAILED: {errors[0] if errors else 'no runs'}"
    return None


def scenario_rows(s: dict[str, Any]) -> tuple[Row, list[Row], list[str]]:
    """Header, rows, and footnotes (skips, partial failures) for one scenario."""
    cols = _columns(s)
    header = ["contender", *[c[0] for c in cols]]
    rows, notes = [], []
    for e in s["contenders"]:
        status = _status(e)
        if status is not None:
            notes.append(f"{e['name']}: {status}")
            continue
        rows.append([display_name(e["name"]), *[f(e) for _, f in cols]])
        if e["runs_failed"]:
            errors = [r["error"] for r in e["runs"] if r["error"]]
            notes.append(f"{e['name']}: {e['runs_failed']} of {len(e['runs'])} runs failed "
                         f"and are left out ({errors[0]})")
    return header, rows, notes + ceiling_notes(s)


def _title(s: dict[str, Any]) -> str:
    size = (f"{s['total_bytes'] / 2**30:.2f} GiB" if s["kind"] == "throughput"
            else f"{s['duration_s']:g} s")
    return f"{s['id']}: {s['title']} ({size})"


def render_text(doc: dict[str, Any]) -> str:
    out = []
    for s in doc["scenarios"]:
        header, rows, notes = scenario_rows(s)
        out.append(_title(s))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, *rows]:
            out.append("  " + "  ".join(c.rjust(w) if i else c.ljust(w)
                                        for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        out.append(f"  CPUs: {s['cpu_plan']['note']}")
        out += [f"  {n}" for n in [*notes, *_info(s)]]
        out.append("")
    out += _baseline_lines(doc)
    out += _target_lines(doc)
    return "\n".join(out).rstrip() + "\n"


def _baseline_lines(doc: dict[str, Any]) -> list[str]:
    b = doc["options"].get("baseline")
    if not b:
        return []
    rev = f" @ {b['revision']}" if b.get("revision") else ""
    aa = " (this checkout: an A/A run, a noise check)" if b.get("same_code") else ""
    return [f"@base = the broker of {b['root']}{rev}{aa}, run by {b['python']} "
            f"(Python {b['python_version']}) with the same arguments; x base = this checkout's "
            "GB/s over it"]


def _info(s: dict[str, Any]) -> list[str]:
    if "s1_rate_gbps" in s["info"]:
        rate = s["info"]["s1_rate_gbps"]
        return [f"pace: {s['load_fraction']:.0%} of {_num(rate, '.2f')} GB/s "
                f"({s['info'].get('s1_rate_source')})"]
    return []


def _target_lines(doc: dict[str, Any]) -> list[str]:
    lines = []
    for t in doc["targets"]:
        mark = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        value = _num(t["value"], ",.2f")
        lines.append(f"target {t['contender']} {t['description']}: {value} {t['unit']} "
                     f"({t['comparison']} {t['threshold']:g}): {mark}")
    return lines


def _md_table(header: Row, rows: Sequence[Row]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def render_markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"Measured {doc['date']} on {m.get('cpus_online')} vCPU {m.get('cpu_model')}, "
        f"{m.get('memory_gib')} GiB, Linux {m.get('kernel')}, Python {m.get('python')}; "
        f"loopback; medians of {doc['options']['repeat']} interleaved runs (min–max in "
        "brackets); GB/s = 10^9 payload bytes/s. CPU s/GB: receiving processes (rx) and all "
        "CPUs from /proc/stat (machine). Wakeups: voluntary context switches of the receiving "
        "threads.",
        "",
    ]
    base = _baseline_lines(doc)
    if base:
        lines += [*base, ""]
    for s in doc["scenarios"]:
        header, rows, notes = scenario_rows(s)
        lines.append(f"**{_title(s)}** — {s['cpu_plan']['note']}")
        lines.append("")
        lines += _md_table(header, rows)
        extra = [*notes, *_info(s)]
        if extra:
            lines.append("")
            lines += [f"* {n}" for n in extra]
        lines.append("")
    if doc["targets"]:
        lines.append("**Targets**")
        lines.append("")
        rows = [[t["contender"], t["description"], _num(t["value"], ",.2f") + f" {t['unit']}",
                 f"{t['comparison']} {t['threshold']:g}",
                 {True: "met", False: "missed", None: "not measured"}[t["met"]]]
                for t in doc["targets"]]
        lines += _md_table(["contender", "target", "value", "goal", "result"], rows)
    return "\n".join(lines).rstrip() + "\n"
