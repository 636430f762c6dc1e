#!/usr/bin/env bash
# A/B of two `cellar` binaries on this machine: `bench api` against a local
# node and `bench fleet`, alternated ROUNDS times (the machine is noisy:
# compare ratios within one run, never figures across days).
# Usage: scripts/bench-ab.sh BASE_BIN NEW_BIN [ROUNDS] > results.txt
set -euo pipefail
base=$1 new=$2 rounds=${3:-2}
port=7391
for round in $(seq 1 "$rounds"); do
    for name in base new; do
        bin=$base; [ "$name" = new ] && bin=$new
        dir=$(mktemp -d)
        trap 'rm -rf "$dir"' EXIT
        export HOME=$dir/home; mkdir -p "$HOME"
        "$bin" start --data-dir "$dir/node" --listen 127.0.0.1:$port > "$dir/start.log" 2>&1 &
        pid=$!
        for _ in $(seq 1 100); do
            curl -sf http://127.0.0.1:$port/api/v1/status > /dev/null && break
            sleep 0.3
        done
        echo "== $name api round $round"
        "$bin" bench api --url http://127.0.0.1:$port --clients 4,16 --seconds 3
        kill -INT $pid; wait $pid || true
        echo "== $name fleet round $round"
        "$bin" bench fleet --clients 256 --seconds 5 --delays-ms 0
        rm -rf "$dir"
    done
done
