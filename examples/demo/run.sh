#!/bin/sh
# The whole live demo in one go: builds palisaded and the demo programs, starts
# palisaded on examples/mesh, starts the backends the mesh names (reviews v1 and v2,
# and one instance of productpage, details and ratings), then runs the proxyless
# client in the foreground. Edit examples/mesh/reviews-routing.yaml in another
# terminal and watch the answers change. Ctrl-C stops everything.
#
#   examples/demo/run.sh                        # the 80/20 split
#   examples/demo/run.sh --header end-user=jason # always v2
#
# Arguments are passed to the client. XDS_ADDRESS and MONITORING_ADDRESS override
# palisaded's addresses (defaults 127.0.0.1:15010 and 127.0.0.1:15014).
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
xds_address=${XDS_ADDRESS:-127.0.0.1:15010}
monitoring_address=${MONITORING_ADDRESS:-127.0.0.1:15014}
bin=$(mktemp -d "${TMPDIR:-/tmp}/palisade-demo.XXXXXX")
pids=""

cleanup() {
  for pid in $pids; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$bin"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building palisaded and the demo into $bin ..."
go build -o "$bin/palisaded" ./cmd/palisaded
go build -o "$bin/backend" ./examples/demo/backend
go build -o "$bin/client" ./examples/demo/client

"$bin/palisaded" --config-dir examples/mesh --xds-address "$xds_address" \
  --monitoring-address "$monitoring_address" >"$bin/palisaded.log" 2>&1 &
pids="$pids $!"
echo "palisaded started (log: $bin/palisaded.log); waiting for http://$monitoring_address/healthz/ready ..."
i=0
until curl -fsS "http://$monitoring_address/healthz/ready" >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -gt 100 ]; then
    echo "palisaded did not become ready; its log:" >&2
    cat "$bin/palisaded.log" >&2
    exit 1
  fi
  sleep 0.2
done

# The addresses and versions the WorkloadEntries in examples/mesh name.
for b in 127.0.0.1:9081=v1 127.0.0.1:9082=v1 127.0.0.1:9083=v1 127.0.0.1:9084=v2 127.0.0.1:9085=v1; do
  "$bin/backend" --address "${b%=*}" --version "${b#*=}" >>"$bin/backends.log" 2>&1 &
  pids="$pids $!"
done

echo "calling reviews; edit examples/mesh/reviews-routing.yaml to change the split (Ctrl-C to stop)"
"$bin/client" --xds-address "$xds_address" "$@"
