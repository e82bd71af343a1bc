#!/usr/bin/env python3
"""From a bench/dhcp results file: a plot of ACKs/s per offered rate and server (gnuplot, SVG
next to the results file) and the lines for the summary table at the top of bench/README.md
(bench/summary/dhcp-<kea mode>-<condition>.tsv; DHCPv6: dhcp6-...).

Usage: summarize.py RESULTS.txt LOADGEN KEA_THREADS CONTENDED(0|1) [STORE(file|postgres)] [FAMILY(4|6)]
"""
import datetime
import os
import subprocess
import sys
from collections import defaultdict


def main(path, loadgen, kea_threads, contended, store="file", family="4"):
    steps = defaultdict(list)  # server -> [(rate, acks, held)]
    best = {}
    for line in open(path):
        f = line.split()
        if len(f) >= 7 and not line.startswith("#") and f[1].isdigit():
            steps[f[0]].append((int(f[1]), int(f[2]), f[6] == "yes"))
        if f[:1] == ["best"] and len(f) == 3:
            best[f[1]] = int(f[2])
    if not steps:
        return
    base = path.rsplit(".", 1)[0]
    servers = sorted(steps)
    for s in servers:
        with open(f"{base}-{s}.dat", "w") as out:
            for rate, acks, held in sorted(steps[s]):
                out.write(f"{rate} {acks} {1 if held else 0}\n")
    v6 = family == "6"
    kea = "Kea multi-threaded" if int(kea_threads) > 0 else "Kea single-threaded"
    if v6:
        kea = kea.replace("Kea", "kea-dhcp6")
    exchange = "DHCPv6 Solicit-Advertise-Request-Reply" if v6 else "DHCP DORA"
    answers = "Replies" if v6 else "ACKs"
    cond = "contended" if contended == "1" else "quiet"
    lines = ", ".join(
        f"'{base}-{s}.dat' using 1:2 with linespoints title '{s}'" for s in servers
    )
    script = f"""set terminal svg size 900,500
set output '{base}.svg'
set title '{exchange}, {answers}/s per offered exchanges/s ({loadgen}, {cond}, {kea})'
set xlabel 'offered exchanges/s'
set ylabel '{answers}/s'
set key top left
plot x title 'offered' with lines dashtype 2, {lines}
"""
    with open(base + "-plot.gp", "w") as f:
        f.write(script)
    try:
        subprocess.run(["gnuplot", base + "-plot.gp"], check=True)
        print(f"plot: {base}.svg")
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"(no plot: gnuplot: {e})")
    busy = os.environ.get("BENCH_NO_SUMMARY")
    if busy:
        print(f"no summary line: {busy} (numbers from a busy machine decide nothing)")
        return
    cb = best.get("chainboot", 0)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    results = os.path.join(repo, "bench", "summary")
    os.makedirs(results, exist_ok=True)
    mode = "kea-mt" if int(kea_threads) > 0 else "kea"
    if store == "postgres":
        mode += "-pg"
        kea += ", both on PostgreSQL"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%MZ")
    command = os.environ.get("BENCH_COMMAND", "bash bench/dhcp/run.sh")
    bench = "dhcp6" if v6 else "dhcp"
    name = "DHCPv6 exchanges/s" if v6 else "DHCP DORA/s"
    with open(os.path.join(results, f"{bench}-{mode}-{cond}.tsv"), "w") as out:
        for anchor in ("kea", "dnsmasq", "dhcpd"):
            if best.get(anchor):
                anchor_name = kea if anchor == "kea" else anchor
                out.write(
                    f"{name} vs {anchor_name} ({loadgen})\t{cond}\t{cb / best[anchor]:.2f}\t{date}\t"
                    f"{command}\t{os.path.relpath(os.path.abspath(path), repo)}\n"
                )


if __name__ == "__main__":
    main(*sys.argv[1:7])
