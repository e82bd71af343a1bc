#!/usr/bin/env python3
"""Renders the summary table at the top of bench/README.md from bench/summary/*.tsv, which the
bench scripts write after each run (one line per comparison: name, condition, ratio, date,
command, raw file). Quiet and contended ratios of a comparison share a row.

Usage: python3 bench/summary.py   (rewrites the part of bench/README.md between the markers)
"""
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN = "<!-- summary:begin (bench/summary.py writes this part) -->"
END = "<!-- summary:end -->"


def main():
    rows = {}
    for path in sorted(glob.glob(os.path.join(HERE, "summary", "*.tsv"))):
        for line in open(path):
            f = line.rstrip("\n").split("\t")
            if len(f) != 6:
                continue
            name, cond, ratio, date, command, raw = f
            row = rows.setdefault(name, {"date": date, "command": command, "raw": []})
            row[cond] = ratio
            row["date"] = max(row["date"], date)
            row["raw"].append(raw)
            if cond == "quiet" or "command" not in row:
                row["command"] = command
    lines = [
        BEGIN,
        "",
        "| comparison (chainboot / anchor; higher is better unless noted) | quiet | contended "
        "(CPU hog on one core) | date | command | raw |",
        "|---|---|---|---|---|---|",
    ]
    for name in sorted(rows):
        r = rows[name]
        raws = ", ".join(f"`{x}`" for x in sorted(set(r["raw"])))
        lines.append(
            f"| {name} | {fmt(r.get('quiet'))} | {fmt(r.get('contended'))} | {r['date']} | "
            f"`{r['command']}` | {raws} |"
        )
    if not rows:
        lines.append(
            "| (no run of the shipped binary recorded yet: see \"How the benchmarks run\" below) "
            "| | | | | |"
        )
    plots = sorted(glob.glob(os.path.join(HERE, "*", "results", "*.svg")))
    plots += sorted(glob.glob(os.path.join(HERE, "dhcp", "*.svg")))
    if plots:
        lines.append("")
        lines.append("Plots (latest run of each): " + ", ".join(
            f"[{os.path.relpath(p, HERE)}]({os.path.relpath(p, HERE)})" for p in latest(plots)))
    lines += ["", END]
    readme = os.path.join(HERE, "README.md")
    text = open(readme).read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + "\n".join(lines) + tail
    else:
        title, _, body = text.partition("\n")
        text = title + "\n\n" + "\n".join(lines) + "\n" + body
    open(readme, "w").write(text)
    print("\n".join(lines))


def latest(plots):
    """The newest plot per directory and kind (the names carry a UTC timestamp)."""
    by = {}
    for p in plots:
        d = os.path.dirname(p)
        kind = "".join(c for c in os.path.basename(p) if not c.isdigit())
        by[(d, kind)] = max(by.get((d, kind), p), p)
    return sorted(by.values())


def fmt(v):
    """A ratio gets its "x"; a verdict in words (a run whose machines failed) stays as it is."""
    if not v:
        return "not run"
    try:
        float(v)
    except ValueError:
        return v
    return f"{v}x"


if __name__ == "__main__":
    sys.exit(main())
