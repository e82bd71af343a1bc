#!/usr/bin/env python3
"""Medians and ratios from a bench/tftp raw TSV: one markdown table per condition (quiet,
contended) and topology; the lines for the summary table at the top of bench/README.md
(bench/summary/tftp.tsv); and a plot (gnuplot data and script next to the raw file).

Usage: summarize.py RAW.tsv [LOAD-AVERAGE-BEFORE]
"""
import csv
import datetime
import os
import statistics
import subprocess
import sys
from collections import defaultdict

ANCHORS = ["tftpd-hpa", "atftpd", "dnsmasq"]
OURS = ["chainboot", "chainboot-nopoll"]
# The cases that go into the summary table at the top of bench/README.md (besides the storm).
SUMMARY_CASES = ["big-bs1468-ws1", "big-bs1468-ws16", "big-bs1024-ws1"]


def main(path, load):
    runs = defaultdict(list)
    with open(path) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            if r.get("case") is None:
                continue  # a stray line (older run.sh wrote a failed client's CPU on two lines)
            r.setdefault("condition", "quiet")
            runs[(r["condition"], r["topology"], r["case"], r["server"])].append(r)
    raw = os.path.basename(path)
    rounds = max(len(v) for v in runs.values())
    print(f"Source: `{raw}`; medians over {rounds} rounds; load average before the run: {load}.\n")
    conditions = sorted({k[0] for k in runs}, key=lambda c: (c != "quiet", c))
    summary = []
    for cond in conditions:
        topologies = sorted({k[1] for k in runs if k[0] == cond}, key=lambda t: (t != "loopback", t))
        for topo in topologies:
            summary += table(runs, cond, topo)
    write_summary(path, raw, summary)
    plot(path, runs)


def table(runs, cond, topo):
    """Prints one table; returns (comparison, ratio) rows for the summary."""
    keys = [k for k in runs if k[0] == cond and k[1] == topo]
    cases = sorted({k[2] for k in keys}, key=case_order)
    servers = [s for s in OURS + ANCHORS if any(k[3] == s for k in keys)]
    print(f"### {cond}, {topo}\n")
    head = ["case"] + servers + ["chainboot / best anchor", "chainboot / polling off"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    out = []
    for case in cases:
        storm = case.startswith("storm")
        cells, values = [case], {}
        for s in servers:
            rs = runs.get((cond, topo, case, s), [])
            if not rs:
                cells.append("-")
                continue
            failed = sum(int(r["failed"]) if r["failed"].isdigit() else 10**6 for r in rs)
            if storm:
                wall = statistics.median(float(r["wall_s"]) for r in rs)
                values[s] = (wall, failed)
                cells.append(f"{wall:.3f} s, {failed} failed")
            else:
                mbps = statistics.median(float(r["mb_per_s"]) for r in rs)
                values[s] = (mbps, failed)
                note = "" if failed == 0 else f", {failed} failed"
                if rs[0]["windowsize"] == "1":
                    note += per_block(rs)
                cells.append(f"{mbps:.1f} MB/s (ws {rs[0]['windowsize']}{note})")
        cb = values.get("chainboot")
        anchors = {s: v for s, v in values.items() if s in ANCHORS and v[1] == 0}
        nopoll = values.get("chainboot-nopoll")
        ratio = None
        # A run of ours with failures has no ratio: its time or rate says nothing.
        if cb and cb[1] == 0 and anchors and cb[0] > 0:
            if storm:
                # Wall time: lower is better; a ratio > 1 means chainboot is faster.
                ratio = min(v[0] for v in anchors.values()) / cb[0]
            else:
                best = max(v[0] for v in anchors.values())
                ratio = cb[0] / best if best > 0 else None
        cells.append(f"{ratio:.2f}x" if ratio else "-")
        if cb and nopoll and cb[0] > 0 and nopoll[0] > 0:
            cells.append(f"{(nopoll[0] / cb[0]) if storm else (cb[0] / nopoll[0]):.2f}x")
        else:
            cells.append("-")
        print("| " + " | ".join(cells) + " |")
        if ratio and (case in SUMMARY_CASES or case.startswith("storm")):
            out.append((f"TFTP {topo} {case} vs best anchor", cond, ratio))
        if case in SUMMARY_CASES and case.endswith("-ws1") and cb and nopoll and nopoll[0] > 0:
            out.append((f"TFTP {topo} {case} vs chainboot with polling off", cond, cb[0] / nopoll[0]))
    print()
    return out


def per_block(rs):
    """A lock-step case per block (medians): wall time, the server's CPU time (older raw files
    have none, tftpd-hpa's is not measurable) and, for chainboot, the waits that busy-polled."""
    walls, cpus, polls = [], [], []
    for r in rs:
        bs, mbps, wall = int(r["blksize"] or 0), float(r["mb_per_s"]), float(r["wall_s"])
        if bs <= 0 or mbps <= 0:
            continue
        blocks = mbps * 1e6 * wall / bs
        walls.append(bs / mbps)
        if r.get("server_cpu_s") not in (None, "", "-"):
            cpus.append(float(r["server_cpu_s"]) * 1e6 / blocks)
        if r.get("polls") and r["server"] in OURS:
            polls.append(int(r["polls"]))
    if not walls:
        return ""
    text = f"; {statistics.median(walls):.0f} us"
    if cpus:
        text += f", CPU {statistics.median(cpus):.1f} us"
    text += " per block"
    if polls:
        text += f", polled {statistics.median(polls):.0f}"
    return text


def write_summary(path, raw, rows):
    """bench/summary/tftp.tsv: comparison, condition, ratio, date, command, raw file (read by
    bench/summary.py)."""
    results = os.path.join(os.path.dirname(os.path.abspath(path)), "..", "..", "summary")
    os.makedirs(results, exist_ok=True)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%MZ")
    command = os.environ.get("BENCH_COMMAND", "bash bench/tftp/run.sh")
    # Lines of other comparisons (another topology's or case's run) stay: a run replaces only
    # the comparisons it measured.
    out = os.path.join(results, "tftp.tsv")
    mine = {(comparison, cond) for comparison, cond, _ in rows}
    kept = []
    if os.path.exists(out):
        with open(out) as f:
            kept = [l for l in f if tuple(l.split("\t")[:2]) not in mine]
    with open(out, "w") as f:
        f.writelines(kept)
        for comparison, cond, ratio in rows:
            f.write(f"{comparison}\t{cond}\t{ratio:.2f}\t{date}\t{command}\tbench/tftp/results/{raw}\n")


def plot(path, runs):
    """Lock-step and windowed MB/s per server, quiet and contended (loopback), as an SVG."""
    base = path.rsplit(".", 1)[0]
    data = base + "-plot.dat"
    servers = [s for s in OURS + ANCHORS if any(k[3] == s for k in runs)]
    rows = []
    for cond in ("quiet", "contended"):
        for case in sorted({k[2] for k in runs if not k[2].startswith("storm")}, key=case_order):
            vals = []
            for s in servers:
                rs = runs.get((cond, "loopback", case, s), [])
                vals.append(f"{statistics.median(float(r['mb_per_s']) for r in rs):.1f}" if rs else "0")
            if any(v != "0" for v in vals):
                rows.append(f'"{case} {cond}" ' + " ".join(vals))
    if not rows:
        return
    with open(data, "w") as f:
        f.write("# case " + " ".join(servers) + "\n" + "\n".join(rows) + "\n")
    cols = ", ".join(
        f"{repr(data) if i == 0 else repr('')} using {i + 2}:xtic(1) title '{s}'"
        for i, s in enumerate(servers)
    )
    script = f"""set terminal svg size 1000,500
set output '{base}.svg'
set title 'TFTP on loopback, MB/s (median), quiet and with a CPU hog'
set style data histograms
set style fill solid border -1
set key top left
set xtics rotate by -30
set ylabel 'MB/s'
plot {cols}
"""
    with open(base + "-plot.gp", "w") as f:
        f.write(script)
    try:
        subprocess.run(["gnuplot", base + "-plot.gp"], check=True)
        print(f"Plot: `{os.path.basename(base)}.svg`\n")
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"(no plot: gnuplot: {e})\n")


def case_order(c):
    if c.startswith("storm"):
        return (1, 0, 0)
    parts = c.split("-")
    return (0, int(parts[1][2:]), int(parts[2][2:]))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "unknown")
