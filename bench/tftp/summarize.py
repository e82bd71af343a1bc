#!/usr/bin/env python3
"""Medians and ratios from a bench/tftp raw TSV: one markdown table per topology."""
import csv
import statistics
import sys
from collections import defaultdict

ANCHORS = ["tftpd-hpa", "atftpd", "dnsmasq"]


def main(path):
    runs = defaultdict(list)
    with open(path) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            runs[(r["topology"], r["case"], r["server"])].append(r)
    topologies = sorted({k[0] for k in runs}, key=lambda t: (t != "loopback", t))
    print(f"Source: `{path.split('/')[-1]}`; medians over {max(len(v) for v in runs.values())} rounds.\n")
    for topo in topologies:
        cases = sorted({k[1] for k in runs if k[0] == topo}, key=case_order)
        servers = [s for s in ["chainboot"] + ANCHORS if any((topo, c, s) in runs for c in cases)]
        print(f"### {topo}\n")
        head = ["case"] + servers + ["chainboot / best anchor", "chainboot / tftpd-hpa"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for case in cases:
            storm = case.startswith("storm")
            cells, values = [case], {}
            for s in servers:
                rs = runs.get((topo, case, s), [])
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
                    ws = rs[0]["windowsize"]
                    values[s] = (mbps, failed)
                    note = "" if failed == 0 else f", {failed} failed"
                    cells.append(f"{mbps:.1f} MB/s (ws {ws}{note})")
            cb = values.get("chainboot")
            anchors = {s: v for s, v in values.items() if s != "chainboot" and v[1] == 0}
            if cb and anchors:
                if storm:
                    best = min(v[0] for v in anchors.values())
                    # Wall time: lower is better; ratio > 1 means chainboot is faster.
                    cells.append(f"{best / cb[0]:.2f}x faster" if cb[0] > 0 else "-")
                    hpa = values.get("tftpd-hpa")
                    cells.append(f"{hpa[0] / cb[0]:.2f}x faster" if hpa and cb[0] > 0 else "-")
                else:
                    best = max(v[0] for v in anchors.values())
                    cells.append(f"{cb[0] / best:.2f}x" if best > 0 else "-")
                    hpa = values.get("tftpd-hpa")
                    cells.append(f"{cb[0] / hpa[0]:.2f}x" if hpa and hpa[0] > 0 else "-")
            else:
                cells += ["-", "-"]
            print("| " + " | ".join(cells) + " |")
        print()


def case_order(c):
    if c.startswith("storm"):
        return (1, 0, 0)
    parts = c.split("-")
    return (0, int(parts[1][2:]), int(parts[2][2:]))


if __name__ == "__main__":
    main(sys.argv[1])
