set terminal svg size 900,500
set output '/work/main/bench/storm/results/storm-20261205-131933.svg'
set title 'Boot storm, 1000 machines (quiet): share of machines that reached the kernel'
set xlabel 'seconds since power-on'
set ylabel 'share of machines'
set key bottom right
plot '/work/main/bench/storm/results/storm-20261205-131933-chainboot.cdf' using 1:2 with lines title 'chainboot', '/work/main/bench/storm/results/storm-20261205-131933-anchor.cdf' using 1:2 with lines title 'anchor'
