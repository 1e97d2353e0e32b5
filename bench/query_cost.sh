#!/bin/sh
# Instructions per queryAXB (and per floor request) by callgrind: two runs of
# bench/query_cost.py that differ only in how many requests they send; start-up cancels out.
#   bench/query_cost.sh [pns|floor] [SMALL] [LARGE]
# PYTHONPATH=/other/src bench/query_cost.sh measures another tree with this bench.
set -eu
only=${1:-pns}
small=${2:-640}
large=${3:-3200}
here=$(dirname "$0")
python=${PYTHON:-$here/../.venv/bin/python}
total() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$python" "$here/query_cost.py" \
        --only "$only" --rounds 1 --requests "$1" --cache-seconds 3600 --bindings 2000 ${STUB:+--stub $STUB} 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
a=$(total "$small")
b=$(total "$large")
echo "$only: $(( (b - a) / (large - small) )) instructions per request ($a at $small, $b at $large)"
