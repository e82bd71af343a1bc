"""A boot storm's raw file (bench/storm/run.sh) summed up: medians per side over the rounds, the
harness's health, where the server's CPU went (STORM_SAMPLE=1), the summary table's lines
(bench/summary/storm-N-COND.tsv, for bench/summary.py: only from a run of both sides, which
decides the ratio) and a time-to-kernel CDF plot. run.sh calls it after the last round; it can
be run again on any raw file.

Usage: python3 bench/storm/summary.py RESULTS/storm-TIME.jsonl [CONTENDED (0|1)]
"""
import datetime, glob, json, os, statistics, subprocess, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def per_1000(r):
    booted = r["sim"].get("machines", 0) - max(r["sim"].get("failures", 0), 0)
    return r["server_cpu_s"] / booted * 1000 if booted > 0 else None
def med(side, f):
    v = [f(r) for r in runs if r["side"] == side and f(r) is not None]
    return statistics.median(v) if v else None
rows = [("time-to-kernel p50 s", lambda r: r["sim"].get("time_to_kernel_p50")),
        ("time-to-kernel p99 s", lambda r: r["sim"].get("time_to_kernel_p99")),
        ("time-to-done p99 s", lambda r: r["sim"].get("time_to_done_p99")),
        ("failures", lambda r: r["sim"].get("failures")),
        ("DHCP retransmits", lambda r: r["sim"].get("dhcp_retransmits")),
        ("DHCP NAKs", lambda r: r["sim"].get("dhcp_naks")),
        ("TFTP retransmits", lambda r: r["sim"].get("tftp_retransmits")),
        ("server peak RSS MiB", lambda r: r["server_peak_rss_kib"] / 1024),
        ("server CPU s", lambda r: r["server_cpu_s"]),
        ("server CPU s / 1000 boots", per_1000),
        ("events dropped", lambda r: (r.get("events") or {}).get("dropped")),
        ("wall s", lambda r: r["sim"].get("wall_seconds")),
        ("simulator CPU s", lambda r: r["sim"].get("cpu_s"))]
print(f"{'median over rounds':24} {'chainboot':>10} {'anchor':>10} {'ratio':>7}")
for name, f in rows:
    c, a = med("chainboot", f), med("anchor", f)
    ratio = f"{c / a:.2f}x" if c is not None and a else "-"
    fmt = lambda x: "-" if x is None else f"{x:.2f}"
    print(f"{name:24} {fmt(c):>10} {fmt(a):>10} {ratio:>7}")
for r in runs:
    if r["sim"].get("errors"):
        print(r["side"], r["round"], "errors:", r["sim"]["errors"])
    h = dict(r.get("harness", {}))
    if r["sim"].get("cpu_s") is not None:
        h["simulator_cpu_s"] = r["sim"]["cpu_s"]
    lost = {k: v for k, v in h.items() if k != "simulator_cpu_s" and k != "udp_rcvbuf_errors_server_ns" and v}
    print(r["side"], r["round"], "harness:", h,
          "<- the harness dropped packets: this run measured the harness, not the server" if lost else "")
# Where the server's CPU went, by thread kind (STORM_SAMPLE=1): DHCP's receive and commit
# threads, the event writer, tokio's workers (the first nproc runtime threads: HTTP, TFTP's
# request loop and task transfers, the policy) and its blocking pool (TFTP's lock-step
# transfers, resolutions, file reads that would block). Last value seen per thread, so a
# thread that ended between two samples loses at most a second of its CPU.
hz = os.sysconf("SC_CLK_TCK")
for f in sorted(glob.glob(sys.argv[1].rsplit(".", 1)[0] + "-*-r*.threads.raw")):
    last = {}
    for line in open(f):
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 4:
            continue
        pid, tid, comm, ticks = parts
        key = (pid, int(tid))
        last[key] = (comm.strip("()"), max(float(ticks), last.get(key, ("", 0.0))[1]))
    runtime = sorted(k for k, (c, _) in last.items() if c.startswith("tokio"))
    workers = set(runtime[: os.cpu_count() or 1])
    kinds = {}
    for k, (comm, ticks) in last.items():
        if comm.startswith("dhcp"):
            kind = "dhcp threads"
        elif comm.startswith("chainboot-event"):
            kind = "event writer"
        elif comm.startswith("tftp"):
            kind = "tftp resolvers"
        elif k in workers:
            kind = "tokio workers"
        elif comm.startswith("tokio"):
            kind = "tokio blocking pool"
        else:
            kind = "other threads"
        kinds[kind] = kinds.get(kind, 0.0) + ticks / hz
    total = sum(kinds.values()) or 1.0
    print(os.path.basename(f), "CPU s by thread:",
          ", ".join(f"{k} {v:.1f} ({v / total:.0%})" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
# The summary table's lines (bench/summary.py) and a time-to-kernel CDF (last round per side).
cond = "contended" if sys.argv[2:3] == ["1"] else "quiet"
base = sys.argv[1].rsplit(".", 1)[0]
n = runs[0]["sim"].get("machines", 0) if runs else 0
summary = os.path.join(os.path.dirname(os.path.abspath(sys.argv[1])), "..", "..", "summary")
out = os.path.normpath(os.path.join(summary, f"storm-{n}-{cond}.tsv"))
sides = sorted({r["side"] for r in runs})
lines = []
if sides == ["anchor", "chainboot"]:
    c99 = med("chainboot", lambda r: r["sim"].get("time_to_kernel_p99"))
    a99 = med("anchor", lambda r: r["sim"].get("time_to_kernel_p99"))
    c1k, a1k = med("chainboot", per_1000), med("anchor", per_1000)
    src = "bench/storm/results/" + os.path.basename(sys.argv[1])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%MZ")
    src = date + "\t" + os.environ.get("BENCH_COMMAND", "bash bench/storm/run.sh") + "\t" + src
    cfail = med("chainboot", lambda r: r["sim"].get("failures"))
    if cfail:
        # Times of a storm in which machines failed say nothing: the verdict is the failures.
        lines.append(f"storm {n}: p99 time-to-kernel vs dnsmasq+nginx (lower is better)\t{cond}\t"
                     f"{cfail:.0f} of {n} machines failed\t{src}\n")
    elif c99 and a99:
        lines.append(f"storm {n}: p99 time-to-kernel vs dnsmasq+nginx (lower is better)\t{cond}\t{c99 / a99:.2f}\t{src}\n")
    if c1k and a1k and not cfail:
        lines.append(f"storm {n}: CPU-s per 1000 boots vs dnsmasq+nginx (lower is better)\t{cond}\t{c1k / a1k:.2f}\t{src}\n")
# A run that decides no ratio (one side only: STORM_SIDES; or a side that booted nothing)
# leaves the summary's last verdict as it was; a new one replaces it whole (written beside it,
# then renamed, so a reader never sees half a file).
if sides != ["anchor", "chainboot"]:
    print(f"summary: a one-sided run ({' '.join(sides) or 'no runs'}) decides no ratio; {out} left as it was")
elif not lines:
    print(f"summary: no ratio (a side booted no machine); {out} left as it was")
else:
    os.makedirs(summary, exist_ok=True)
    with open(out + ".tmp", "w") as f:
        f.writelines(lines)
    os.replace(out + ".tmp", out)
    print("summary:", out)
plots = []
for side in ("chainboot", "anchor"):
    files = sorted(glob.glob(f"{base}-{side}-r*.machines.jsonl"))
    if not files:
        continue
    t = sorted(m["time_to_kernel"] for m in map(json.loads, open(files[-1])) if m.get("time_to_kernel") is not None)
    with open(f"{base}-{side}.cdf", "w") as f:
        for i, v in enumerate(t):
            f.write(f"{v:.4f} {(i + 1) / n if n else 0:.5f}\n")
    plots.append(f"'{base}-{side}.cdf' using 1:2 with lines title '{side}'")
if plots:
    with open(base + ".gp", "w") as f:
        f.write(f"""set terminal svg size 900,500
set output '{base}.svg'
set title 'Boot storm, {n} machines ({cond}): share of machines that reached the kernel'
set xlabel 'seconds since power-on'
set ylabel 'share of machines'
set key bottom right
plot {', '.join(plots)}
""")
    try:
        subprocess.run(["gnuplot", base + ".gp"], check=True)
        print("plot:", base + ".svg")
    except (OSError, subprocess.CalledProcessError) as e:
        print("(no plot: gnuplot:", e, ")")
