set terminal svg size 900,500
set output 'bench/dhcp/results-20261205T082633Z.svg'
set title 'DHCP DORA, ACKs/s per offered exchanges/s (dhcp-load, contended, Kea single-threaded)'
set xlabel 'offered exchanges/s'
set ylabel 'ACKs/s'
set key top left
plot x title 'offered' with lines dashtype 2, 'bench/dhcp/results-20261205T082633Z-chainboot.dat' using 1:2 with linespoints title 'chainboot', 'bench/dhcp/results-20261205T082633Z-kea.dat' using 1:2 with linespoints title 'kea'
