#!/usr/bin/env bash
# A 2-node data-parallel run of the tiny recipe on localhost: two `temper train` processes,
# one rank each, joined through node 0's orchestrator (docs/distributed.md). Node 0 writes
# the run to runs/two-nodes. Run from the repository root after `cargo xtask assets`.
set -euo pipefail
cargo build --release -p temper-cli
temper=target/release/temper
port=${PORT:-29500}
common=(train --config configs/tiny-smoke.toml --set train.output_dir=runs/two-nodes
  --world-size 2 --nodes 2 --coordinator "127.0.0.1:$port" "$@")
"$temper" "${common[@]}" --node-rank 1 > /tmp/temper-node1.log 2>&1 &
node1=$!
"$temper" "${common[@]}" --node-rank 0
wait "$node1"
echo "node 1's output: /tmp/temper-node1.log"
