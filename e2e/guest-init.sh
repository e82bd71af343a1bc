#!/bin/sh
# /init of the e2e initramfs (built by e2e/assets.sh). Proves the netboot reached Linux userspace:
# prints ONE marker line on the serial console and powers the VM off (QEMU runs with -no-reboot).
#   CHAINBOOT-MARKER token=<e2e.token from the cmdline> mac=<NIC MAC> ip=<address from DHCP>
# The token is per run, so a marker from a stale image or an earlier boot cannot pass a test.
# The IP comes from udhcpc (the Debian kernel has no ip= autoconfiguration), so the marker also
# proves the DHCP server hands the booted OS an address. e2e.ip=skip avoids that DHCP round;
# e2e.ip=ADDR reports ADDR (IPv6 boots: the address iPXE leased, see e2e/servers.sh); an empty
# e2e.ip= (iPXE had no such lease) means DHCP.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
out=/dev/ttyS0
[ -c "$out" ] || out=/dev/console

token=none iparg=dhcp
for word in $(cat /proc/cmdline); do
  case "$word" in
    e2e.token=*) token=${word#e2e.token=} ;;
    e2e.ip=*) iparg=${word#e2e.ip=} ;;
  esac
done
[ -n "$iparg" ] || iparg=dhcp

while read -r m; do insmod "/lib/modules/$m.ko" 2>/dev/null; done < /lib/modules/load-order

# First non-loopback interface; drivers probe asynchronously, so wait (bounded: 10 s).
iface=
i=0
while [ $i -lt 100 ] && [ -z "$iface" ]; do
  for d in /sys/class/net/*; do
    n=${d##*/}
    [ "$n" = lo ] || { iface=$n; break; }
  done
  [ -n "$iface" ] || { sleep 0.1; i=$((i + 1)); }
done

mac=none ip=none
if [ -n "$iface" ]; then
  mac=$(cat "/sys/class/net/$iface/address")
  ip link set "$iface" up
  if [ "$iparg" = dhcp ]; then
    cat > /tmp/udhcpc.sh <<'S'
#!/bin/sh
[ "$1" = bound ] && echo "$ip" > /tmp/ip
exit 0
S
    chmod 755 /tmp/udhcpc.sh
    udhcpc -i "$iface" -q -n -t 8 -T 1 -s /tmp/udhcpc.sh >/dev/null 2>&1
    [ -s /tmp/ip ] && ip=$(cat /tmp/ip)
  else
    ip=$iparg
  fi
fi

echo "CHAINBOOT-MARKER token=$token mac=$mac ip=$ip" > "$out"
sync
poweroff -f
