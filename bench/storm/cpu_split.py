#!/usr/bin/env python3
"""Splits a storm's server CPU profile (perf record -g, STORM_PERF=1) between the protocols.

Usage: perf script -i RUN.perf.data | python3 bench/storm/cpu_split.py

Each sample goes to the first kind whose marker is in its stack (kernel frames are complete
with -g; user frames without frame pointers are often only the innermost few, so the kernel's
socket calls carry most of the attribution):
  DHCP            chainboot_dhcp frames, or a dhcp-* thread
  events/store    the event writer's thread, SQLite, chainboot_events/chainboot_store frames
  TFTP            chainboot_tftp frames, or UDP socket calls (sendto, recvfrom, udp_sendmsg
                  ...) outside the DHCP threads, with the thread switches at their exit
  HTTP            hyper/axum/chainboot_http/chainboot_content frames, TCP socket calls,
                  read/write/writev, page-cache reads (filemap_read, preadv2: the bodies)
  scheduling      the rest of the kernel's thread switching and futex work
  other           anything else
A script, not a test: it reads what perf wrote and prints shares.
"""
import re
import sys

KINDS = [
    ("DHCP", re.compile(r"chainboot_dhcp|^dhcp")),
    ("events/store", re.compile(r"chainboot_events|chainboot_store|sqlite|rusqlite|^chainboot-event")),
    ("TFTP", re.compile(r"chainboot_tftp|udp_sendmsg|udp_recvmsg|__udp|udp_rcv|sendmmsg|udpv6|__libc_sendto|__libc_recvfrom|recvfrom")),
    ("HTTP", re.compile(r"hyper::|axum::|chainboot_http|chainboot_content|tcp_|__tcp|filemap_read|preadv|copy_page_to_iter|inet_csk_accept|accept4|writev|__libc_write|__libc_read")),
    ("scheduling", re.compile(r"futex|schedule|finish_task_switch|try_to_wake_up|_raw_spin_unlock_irqrestore|epoll")),
]


def main():
    counts = {k: 0 for k, _ in KINDS}
    counts["other"] = 0
    total = 0
    frames = []
    comm = ""
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line.strip():
            if frames or comm:
                total += 1
                text = "\n".join([comm] + frames)
                for kind, pat in KINDS:
                    if kind == "DHCP" and comm.startswith("dhcp"):
                        counts[kind] += 1
                        break
                    if kind == "events/store" and comm.startswith("chainboot-event"):
                        counts[kind] += 1
                        break
                    if pat.search(text):
                        counts[kind] += 1
                        break
                else:
                    counts["other"] += 1
            frames, comm = [], ""
            continue
        if not line.startswith((" ", "\t")):
            comm = line.split()[0] if line.split() else ""
        else:
            frames.append(line.strip())
    if total == 0:
        print("no samples")
        return
    for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"{kind:14} {n:8} {n / total:6.1%}")
    print(f"{'samples':14} {total:8}")


if __name__ == "__main__":
    main()
