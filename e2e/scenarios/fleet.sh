#!/usr/bin/env bash
# Scenario: a fleet. Two chainboot servers on one segment share one PostgreSQL database (a
# throw-away cluster, unix socket only): server A (pxe-a, 198.18.0.1 on br0) and server B
# (pxe-b, 198.18.0.2, a host of its own on the bridge), both serving DHCP from the same pool.
# The fleet shares clients by hash bucket of the MAC, so the VM's MAC is one whose bucket A
# owns: asked of the real code (`chainboot explain` against the fleet's database names the
# server that answers a MAC). One SeaBIOS VM (same MAC, same SMBIOS UUID every power-on), in a
# boot-once group:
#   1. boots through A to the marker (its kernel fetch marks it installed, in the database);
#      B's API shows it installed, last answered by pxe-a, and both live servers;
#   2. powers on again: A answers with the local disk (iPXE `exit`; SeaBIOS has no disk);
#   3. the operator re-arms it through B's CLI; the next power-on, answered by A again, boots
#      to the marker: A followed what was set through B.
# Every DHCP reply on the bridge came from A, none from B; B's API lists every DHCP answer and
# HTTP request of the machine as done by pxe-a, and no DHCP event of B (the REQUESTs that named
# A, a live peer, B counts and leaves alone); A's API lists the re-arm as pxe-b's operator
# event. Without shared state the first check (B knows the machine) and the third boot (A
# would boot the local disk) fail.
# Usage: e2e/scenarios/fleet.sh anchor|chainboot   (chainboot only)
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
side=${1:-}
[ -n "$side" ] || e2e_die "usage: $0 anchor|chainboot"
[ "$side" = chainboot ] || { echo "fleet: chainboot only"; exit 0; }
e2e_init "fleet-$side"
. "$E2E_DIR/servers.sh"
e2e_require runuser:util-linux python3:python3
e2e_topology
e2e_postgres
e2e_peer b 198.18.0.2
B_NS=$E2E_PEER_NS
B_STATE="$E2E_RUN/state-b"

fleet_toml() {
  cat <<EOF

[store]
backend = "postgres"
url = "$E2E_PG_URL"
server_name = "$1"
connect_timeout = "2s"

[[group]]
name = "install-once"
profile = "e2e"
once = true
match = { mac = "52:54:00:e2:e0:*" }
EOF
}
E2E_CHAINBOOT_EXTRA=$(fleet_toml pxe-a) e2e_server_start chainboot boot
# B: no router advertisements (A's suffice; two advertisers would each take the other's for a
# router and one would fall quiet, which changes nothing here but the logs).
E2E_CB_NAME=b E2E_CB_NS=$B_NS E2E_CB_IP=198.18.0.2 E2E_CB_IFACE=eth0 E2E_CHAINBOOT_RA=off \
  E2E_CHAINBOOT_EXTRA=$(fleet_toml pxe-b) e2e_server_start chainboot boot

# Each server sees the other live before a VM powers on (else the first to start answers
# everyone until its next heartbeat).
for log in chainboot chainboot-b; do
  for ((n = 0; n < 200; n++)); do
    grep -aqF 'live=["pxe-a", "pxe-b"]' "$E2E_RUN/$log.log" && break
    sleep 0.1
  done
  grep -aqF 'live=["pxe-a", "pxe-b"]' "$E2E_RUN/$log.log" \
    || { tail -n 20 "$E2E_RUN/$log.log" >&2; e2e_die "$log did not see both servers live within 20 s"; }
done

# A MAC whose DHCP server A is.
mac=""
for ((i = 1; i <= 32; i++)); do
  m=$(e2e_mac "$i")
  out=$("$E2E_RUN/chainboot" explain --config "$E2E_RUN/chainboot.toml" --mac "$m" --arch bios) \
    || e2e_die "chainboot explain failed: $out"
  if grep -q "is answered by pxe-a" <<<"$out"; then mac=$m; break; fi
done
[ -n "$mac" ] || e2e_die "no MAC among 32 whose hash bucket pxe-a owns: $(grep '^  fleet:' <<<"$out")"
e2e_log "$(grep '^  fleet:' <<<"$out") (MAC $mac)"
uuid="e2e0e2e0-0000-4000-8000-${mac//:/}"
E2E_MACS=("$mac")

b_api() { e2e_api_of "$B_NS" "$B_STATE" "$1"; }

# Everything B sends from the DHCP port, captured on its own interface (the bridge's capture
# does not see frames the bridge forwards from one port to another, such as a unicast reply).
e2e_spawn_in "$B_NS" tcpdump-b tcpdump -i eth0 -U -n -s 0 -w "$E2E_RUN/b.pcap" 'udp src port 67'
for ((n = 0; n < 100; n++)); do [ "$(stat -c %s "$E2E_RUN/b.pcap" 2>/dev/null || echo 0)" -ge 24 ] && break; sleep 0.1; done

# 1. Through A to the marker.
e2e_vm_start boot1 bios "$mac" "$uuid"
e2e_vm_wait "boot1:$mac" || exit 1
wait "$E2E_VMPID_boot1" 2>/dev/null || true
e2e_assert_timeline "$mac" script kernel initrd
machine=$(b_api "/api/v1/machines/$mac") || e2e_die "B's API did not answer"
servers=$(b_api "/api/v1/servers") || e2e_die "B's API did not list the servers"
python3 -c '
import json, sys
m, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
if not m.get("installed_ms"):
    sys.exit("B does not see the machine installed: %s" % m)
if m.get("last_server") != "pxe-a":
    sys.exit("B says the machine was last answered by %s, not pxe-a" % m.get("last_server"))
names = [x["name"] for x in s["servers"]]
if s.get("this") != "pxe-b" or names != ["pxe-a", "pxe-b"]:
    sys.exit("B lists the servers %s (this: %s)" % (names, s.get("this")))
' "$machine" "$servers" || e2e_die "after the first boot, B's API: $machine $servers"
e2e_log "B's API: $mac installed, last answered by pxe-a; live servers pxe-a and pxe-b"

# 2. Installed: A answers with the local disk.
e2e_vm_start boot2 bios "$mac" "$uuid"
deadline=$(($(date +%s) + E2E_VM_TIMEOUT))
until grep -aq 'No bootable device' "$E2E_RUN/boot2.serial"; do
  grep -aq 'CHAINBOOT-MARKER' "$E2E_RUN/boot2.serial" && e2e_die "an installed boot-once machine booted the profile again"
  [ "$(date +%s)" -lt "$deadline" ] || { e2e_diagnose boot2 "$mac"; e2e_die "the second power-on never reached the local disk"; }
  kill -0 "$E2E_VMPID_boot2" 2>/dev/null || { e2e_diagnose boot2 "$mac"; e2e_die "QEMU exited"; }
  sleep 0.2
done
grep -aq 'chainboot: booting from local disk' "$E2E_RUN/boot2.serial" \
  || { e2e_diagnose boot2 "$mac"; e2e_die "the second power-on did not get the local-disk script"; }
kill -TERM "$E2E_VMPID_boot2" 2>/dev/null || true
wait "$E2E_VMPID_boot2" 2>/dev/null || true
e2e_log "boot2: the local-disk script, then SeaBIOS's 'No bootable device'"

# 3. The operator re-arms it through B's CLI (B's API, B's token); A boots it again.
ip netns exec "$B_NS" "$E2E_RUN/chainboot" machines rearm "$mac" --config "$E2E_RUN/chainboot-b.toml" \
  >"$E2E_RUN/rearm.out" 2>&1 || { cat "$E2E_RUN/rearm.out" >&2; e2e_die "rearm through B failed"; }
e2e_vm_start boot3 bios "$mac" "$uuid"
e2e_vm_wait "boot3:$mac" || exit 1
wait "$E2E_VMPID_boot3" 2>/dev/null || true
e2e_assert_timeline "$mac" script kernel initrd

# Who did what, by the capture and by B's API.
kill -INT "$E2E_PID_tcpdump" 2>/dev/null || true
wait "$E2E_PID_tcpdump" 2>/dev/null || true
kill -INT "$E2E_PID_tcpdump_b" 2>/dev/null || true
wait "$E2E_PID_tcpdump_b" 2>/dev/null || true
from_a=$(tcpdump -r "$E2E_RUN/bridge.pcap" -n 'udp src port 67 and src host 198.18.0.1' 2>/dev/null | grep -c . || true)
from_b=$(tcpdump -r "$E2E_RUN/b.pcap" -n 'udp src port 67' 2>/dev/null | grep -c . || true)
[ "$from_a" -gt 0 ] && [ "$from_b" = 0 ] || e2e_die "DHCP replies: $from_a from A, $from_b from B (expected only A)"
dhcp=$(b_api "/api/v1/events?mac=$mac&kind=dhcp&limit=1000") || e2e_die "B's API did not list the events"
http=$(b_api "/api/v1/events?mac=$mac&kind=http&limit=1000") || e2e_die "B's API did not list the events"
machine=$(b_api "/api/v1/machines/$mac") || e2e_die "B's API did not answer"
operator=$(e2e_api "/api/v1/events?mac=$mac&kind=operator") || e2e_die "A's API did not list the events"
metrics=$(b_api "/metrics") || e2e_die "B's metrics did not answer"
python3 -c '
import json, sys
dhcp, http, m = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
ops, metrics = json.loads(sys.argv[4]), sys.argv[5]
# A answered every DHCP message and HTTP request; B only saw the machine choose A (a REQUEST
# naming A, broadcast, which B counts and leaves to A: no event of B).
answered = sorted({e.get("server") for e in dhcp if (e.get("detail") or {}).get("outcome") in ("offer", "ack", "nak")})
if answered != ["pxe-a"]:
    sys.exit("DHCP answers to the machine by %s (expected pxe-a only)" % answered)
at_b = [e["detail"] for e in dhcp if e.get("server") != "pxe-a"]
if at_b:
    sys.exit("DHCP events of another server than pxe-a: %s" % at_b)
peer = [l for l in metrics.splitlines() if l.startswith("chainboot_dhcp_ignored_peer_server_total ")]
if not peer or int(peer[0].split()[1]) == 0:
    sys.exit("B counted no REQUEST naming its peer A: %s" % peer)
# The re-arm through B is an operator event of pxe-b, listed by A.
rearms = [e for e in ops if e.get("server") == "pxe-b" and (e.get("detail") or {}).get("action") == "rearm"]
if len(rearms) != 1:
    sys.exit("operator events of the machine on A: %s (expected one re-arm by pxe-b)" % ops)
if sorted({e.get("server") for e in http}) != ["pxe-a"]:
    sys.exit("HTTP events of the machine by %s (expected pxe-a only)" % sorted({e.get("server") for e in http}))
scripts = [e for e in http if (e.get("detail") or {}).get("what") == "script"
           and (e["detail"].get("path") or "").startswith("/ipxe")]
if len(scripts) != 3:
    sys.exit("%d script requests of the machine (expected 3 power-ons): %s" % (len(scripts), scripts))
if not m.get("installed_ms") or m.get("last_server") != "pxe-a":
    sys.exit("after the third boot B says: %s" % m)
print("%d DHCP events (%d answers), all by pxe-a; B counted %s REQUESTs for pxe-a; %d HTTP events, all by pxe-a; 3 script requests; the re-arm an operator event of pxe-b"
      % (len(dhcp), len([e for e in dhcp if e["detail"].get("outcome") != "ignored"]), peer[0].split()[1], len(http)))
' "$dhcp" "$http" "$machine" "$operator" "$metrics" || e2e_die "B's API on who did what"
e2e_log "DHCP replies: $from_a from A, none from B; B's API: every answer to $mac by pxe-a, 3 power-ons"
