#!/usr/bin/env python3
"""Where a VM boot's seconds went, from the e2e harness's bridge capture: every DHCP exchange,
TFTP transfer, HTTP request and IPv6 router solicitation/advertisement of one run, in seconds
after QEMU started, with the serial console's milestones beside them.

Usage: bench/boot/split.py RUN_DIR [LABEL]   (a run dir kept by the harness, E2E_KEEP=1; LABEL
defaults to vm1). Prints one line, `split key=value ...`, for bench/boot/run.sh's raw file:
  dhcpN=START+DUR        the Nth exchange: first DISCOVER (or REQUEST) to its ACK
                         (`disc`/`offer` give the DISCOVER-to-OFFER wait, dnsmasq's ping shows there)
  dhcp6_N=START+DUR      the Nth DHCPv6 exchange: Solicit (or a Request or Information-Request
                         starting one) to its Reply; `dhcp6_N_request_wait` is the client's time
                         from the Advertise to its Request (edk2 collects Advertises there)
  tftp:PATH=START+DUR    the completed transfer of PATH: read request to its last DATA block
                         (size in bytes, the agreed blksize and windowsize; probes the client
                         aborted are counted as `aborted`)
  http:PATH=START+DUR    a GET: request to the last byte the server sent on that connection
  rs, ra                 first router solicitation and advertisement
and the milestones of the run's result line (linux, marker, ...). Times are from the capture's
clock and QEMU's start (both the host's wall clock).
"""
import os
import struct
import sys


def packets(path):
    """(time, frame bytes) of each frame of a libpcap file (micro- or nanosecond stamps)."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            return
        magic = struct.unpack("<I", head[:4])[0]
        if magic in (0xA1B2C3D4, 0xA1B23C4D):
            end = "<"
        else:
            end = ">"
            magic = struct.unpack(">I", head[:4])[0]
        scale = 1e-9 if magic == 0xA1B23C4D else 1e-6
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            sec, frac, incl, _ = struct.unpack(end + "IIII", rec)
            data = f.read(incl)
            if len(data) < incl:
                return
            yield sec + frac * scale, data


def ip_packets(path):
    """(time, version, src, dst, proto, payload) of each IPv4/IPv6 packet on Ethernet."""
    for t, fr in packets(path):
        if len(fr) < 14:
            continue
        etype = struct.unpack(">H", fr[12:14])[0]
        p = fr[14:]
        if etype == 0x0800 and len(p) >= 20:
            ihl = (p[0] & 15) * 4
            total = struct.unpack(">H", p[2:4])[0]
            yield t, 4, p[12:16], p[16:20], p[9], p[ihl:total]
        elif etype == 0x86DD and len(p) >= 40:
            yield t, 6, p[8:24], p[24:40], p[6], p[40:]


def dhcp_type(payload):
    """DHCP message type (option 53) of a BOOTP payload, or None."""
    if len(payload) < 240 or payload[236:240] != b"\x63\x82\x53\x63":
        return None
    i = 240
    while i < len(payload):
        code = payload[i]
        if code == 255:
            return None
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(payload):
            return None
        n = payload[i + 1]
        if code == 53 and n >= 1 and i + 2 < len(payload):
            return payload[i + 2]
        i += 2 + n
    return None


DISCOVER, OFFER, REQUEST, ACK = 1, 2, 3, 5
SOLICIT6, ADVERTISE6, REQUEST6, REPLY6, INFORMATION_REQUEST6 = 1, 2, 3, 7, 11


def dhcp6_step(exchanges, kind, rel):
    """Adds a DHCPv6 client or server message to the exchanges ([start, advertise, request,
    reply]); Releases and their Replies belong to none (the Reply finds the last one done)."""
    last = exchanges[-1] if exchanges else None
    done = last is None or last[3] is not None
    if kind in (SOLICIT6, INFORMATION_REQUEST6) or (kind == REQUEST6 and done):
        exchanges.append([rel, None, rel if kind == REQUEST6 else None, None])
    elif last is None or done:
        return
    elif kind == ADVERTISE6 and last[1] is None:
        last[1] = rel
    elif kind == REQUEST6 and last[2] is None:
        last[2] = rel
    elif kind == REPLY6:
        last[3] = rel


def split(run_dir, label="vm1"):
    start = float(open(os.path.join(run_dir, label + ".start")).read().strip())
    ev = {}
    exchanges = []  # [start, offer, ack]
    exchanges6 = []  # [start, advertise, request, reply]
    tftp = {}  # (client ip, client port) -> transfer
    done = {}  # path -> (start, end, bytes, blksize)
    aborted = 0
    http = {}  # (client ip, port) -> [path, start, end]
    gets = []
    for t, ver, src, dst, proto, pl in ip_packets(os.path.join(run_dir, "bridge.pcap")):
        rel = t - start
        if ver == 6 and proto == 58 and pl:
            key = {133: "rs", 134: "ra"}.get(pl[0])
            if key and key not in ev:
                ev[key] = rel
            continue
        if proto == 17 and len(pl) >= 8:
            sport, dport = struct.unpack(">HH", pl[:4])
            data = pl[8:]
            if {sport, dport} == {67, 68}:
                kind = dhcp_type(data)
                if kind == DISCOVER or (kind == REQUEST and (not exchanges or exchanges[-1][2] is not None)):
                    exchanges.append([rel, None, None])
                elif kind == OFFER and exchanges and exchanges[-1][1] is None:
                    exchanges[-1][1] = rel
                elif kind == ACK and exchanges and exchanges[-1][2] is None:
                    exchanges[-1][2] = rel
                continue
            if {sport, dport} == {546, 547} and data:
                dhcp6_step(exchanges6, data[0], rel)
                continue
            if dport == 69 and len(data) >= 4 and data[:2] == b"\x00\x01":
                path = data[2:].split(b"\x00")[0].decode("latin-1").lstrip("/")
                # 512-byte blocks unless the server's OACK agrees to another size.
                tftp[(src, sport)] = {"path": path, "start": rel, "bytes": 0, "blk": 512, "ws": 1}
                continue
            tr = tftp.get((dst, dport))
            if tr is not None and len(data) >= 4:
                op = struct.unpack(">H", data[:2])[0]
                if op == 3:  # DATA
                    tr["bytes"] += len(data) - 4
                    if len(data) - 4 < tr["blk"] and tr["path"] not in done:
                        done[tr["path"]] = (tr["start"], rel, tr["bytes"], tr["blk"], tr["ws"])
                elif op == 6:  # OACK: the size the server agreed to
                    parts = data[2:].split(b"\x00")
                    opts = dict(zip(parts[0::2], parts[1::2]))
                    if b"blksize" in opts:
                        tr["blk"] = int(opts[b"blksize"] or tr["blk"])
                    if b"windowsize" in opts:
                        tr["ws"] = int(opts[b"windowsize"] or 1)
            tr = tftp.get((src, sport))
            if tr is not None and len(data) >= 2 and struct.unpack(">H", data[:2])[0] == 5:
                aborted += 1  # the client ended a transfer (OVMF's size probes)
        if proto == 6 and len(pl) >= 20:
            sport, dport = struct.unpack(">HH", pl[:4])
            off = (pl[12] >> 4) * 4
            data = pl[off:]
            if dport in (80, 443) and data.startswith(b"GET "):
                path = data.split(b" ")[1].decode("latin-1").split("?")[0]
                conn = [path, rel, rel]
                http[(src, sport)] = conn
                gets.append(conn)
            elif sport in (80, 443) and data and (dst, dport) in http:
                http[(dst, dport)][2] = rel
    out = []
    for i, (s, offer, ack) in enumerate(exchanges, 1):
        if ack is None:
            continue
        out.append(f"dhcp{i}={s:.2f}+{ack - s:.2f}")
        if offer is not None:
            out.append(f"dhcp{i}_offer_wait={offer - s:.2f}")
    for i, (s, adv, req, reply) in enumerate(exchanges6, 1):
        if reply is None:
            continue
        out.append(f"dhcp6_{i}={s:.2f}+{reply - s:.2f}")
        if adv is not None and req is not None:
            out.append(f"dhcp6_{i}_request_wait={req - adv:.2f}")
    for path, (s, e, n, blk, ws) in sorted(done.items(), key=lambda kv: kv[1][0]):
        out.append(f"tftp:{path}={s:.2f}+{e - s:.2f}({n}B/{blk}/w{ws})")
    if aborted:
        out.append(f"tftp_aborted={aborted}")
    for path, s, e in gets:
        out.append(f"http:{path}={s:.2f}+{e - s:.2f}")
    for key in ("rs", "ra"):
        if key in ev:
            out.append(f"{key}={ev[key]:.2f}")
    result = os.path.join(run_dir, label + ".result")
    if os.path.exists(result):
        for word in open(result).read().split():
            if word.split("=")[0] not in ("label", "ok"):
                out.append(word)
    return "split " + " ".join(out)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(split(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "vm1"))
