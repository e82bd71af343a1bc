set terminal svg size 900,500
set output 'bench/dhcp/results-v6-20261205T043121Z.svg'
set title 'DHCPv6 Solicit-Advertise-Request-Reply, Replies/s per offered exchanges/s (dhcp-load, quiet, kea-dhcp6 single-threaded)'
set xlabel 'offered exchanges/s'
set ylabel 'Replies/s'
set key top left
plot x title 'offered' with lines dashtype 2, 'bench/dhcp/results-v6-20261205T043121Z-chainboot.dat' using 1:2 with linespoints title 'chainboot', 'bench/dhcp/results-v6-20261205T043121Z-kea.dat' using 1:2 with linespoints title 'kea'
