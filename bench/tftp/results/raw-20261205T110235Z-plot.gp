set terminal svg size 1000,500
set output '/work/main/bench/tftp/results/raw-20261205T110235Z.svg'
set title 'TFTP on loopback, MB/s (median), quiet and with a CPU hog'
set style data histograms
set style fill solid border -1
set key top left
set xtics rotate by -30
set ylabel 'MB/s'
plot '/work/main/bench/tftp/results/raw-20261205T110235Z-plot.dat' using 2:xtic(1) title 'chainboot', '' using 3:xtic(1) title 'chainboot-nopoll', '' using 4:xtic(1) title 'tftpd-hpa', '' using 5:xtic(1) title 'atftpd', '' using 6:xtic(1) title 'dnsmasq'
