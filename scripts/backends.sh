#!/usr/bin/env bash
# Real backends for modeltap's telemetry, on loopback ports: an OpenTelemetry Collector and
# Jaeger built from their released Go modules, and Debian's Prometheus.
#
#   scripts/backends.sh build              compile the Collector and Jaeger into .backends/bin
#                                          (cached: rebuilt only when their sources change)
#   scripts/backends.sh up [--rules FILE]  start Collector, Jaeger and Prometheus; print
#                                          OTLP_ENDPOINT=, PROMETHEUS_URL=, JAEGER_URL=
#   scripts/backends.sh down               stop what `up` started
#
# Variables: MODELTAP_BACKENDS_DIR (default .backends), MODELTAP_BACKENDS_RUN (where `up` keeps
# configuration, data, logs and pids; default .backends/run), MODELTAP_BACKENDS_PORT_BASE (default
# 14000: OTLP gRPC base+317, OTLP/HTTP base+318, the Collector's Prometheus exporter base+889,
# Jaeger base+686, Prometheus base+90), MODELTAP_BACKENDS_INTERVAL (scrape and rule evaluation
# interval, default 1s: these backends are for tests and for looking; production uses its own).
set -eu
root=$(cd -P "$(dirname "$0")/.." && pwd)
dir=${MODELTAP_BACKENDS_DIR:-$root/.backends}
bin=$dir/bin
run=${MODELTAP_BACKENDS_RUN:-$dir/run}
base=${MODELTAP_BACKENDS_PORT_BASE:-14000}
interval=${MODELTAP_BACKENDS_INTERVAL:-1s}
sources=$root/scripts/backends
export GOFLAGS="${GOFLAGS:-} -mod=readonly -trimpath"

die() { echo "backends: $*" >&2; exit 1; }

stamp_of() { # the inputs of one build: its module files and this script's Go version
  (cat "$sources/$1"/go.mod "$sources/$1"/go.sum "$sources/$1"/*.go 2>/dev/null; go version) | sha256sum | cut -c1-64
}

build_one() { # name, package
  local name=$1 package=$2 stamp
  stamp=$(stamp_of "$name")
  if [ -x "$bin/$name" ] && [ "$(cat "$bin/$name.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "backends: $name is up to date ($bin/$name)"
    return
  fi
  echo "backends: building $name ..."
  local start=$SECONDS
  (cd "$sources/$name" && go build -ldflags="-s -w" -o "$bin/$name.new" "$package")
  mv "$bin/$name.new" "$bin/$name"
  echo "$stamp" >"$bin/$name.stamp"
  echo "backends: built $name in $((SECONDS - start)) s"
}

build() {
  command -v go >/dev/null 2>&1 || die "Go is needed to build the Collector and Jaeger (go.dev/dl); none on PATH"
  mkdir -p "$bin"
  build_one collector .
  build_one jaeger github.com/jaegertracing/jaeger/cmd/jaeger
}

wait_http() { # url, name, log
  local i
  for i in $(seq 1 300); do
    if python3 - "$1" <<'EOF' 2>/dev/null; then return 0; fi
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=1).read()
EOF
    sleep 0.1
  done
  echo "backends: $2 did not answer $1 within 30 s; its log:" >&2
  tail -n 30 "$3" >&2 || true
  down >/dev/null 2>&1 || true
  exit 1
}

start() { # name, command...
  local name=$1
  shift
  nohup "$@" >"$run/$name.log" 2>&1 &
  echo $! >"$run/$name.pid"
}

up() {
  local rules=""
  while [ $# -gt 0 ]; do
    case $1 in
      --rules) [ $# -ge 2 ] || die "--rules needs a file"; rules=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2 ;;
      *) die "unknown argument to up: $1" ;;
    esac
  done
  [ -z "$rules" ] || [ -f "$rules" ] || die "no rule file at $rules"
  [ -x "$bin/collector" ] && [ -x "$bin/jaeger" ] || die "run scripts/backends.sh build first"
  command -v prometheus >/dev/null 2>&1 || die "Prometheus is needed: apt-get install --no-install-recommends prometheus"
  [ ! -e "$run/collector.pid" ] || down >/dev/null 2>&1 || true
  mkdir -p "$run"
  rm -rf "$run/prometheus-data"
  export MODELTAP_COLLECTOR_GRPC=127.0.0.1:$((base + 317))
  export MODELTAP_COLLECTOR_HTTP=127.0.0.1:$((base + 318))
  export MODELTAP_COLLECTOR_PROMETHEUS=127.0.0.1:$((base + 889))
  export MODELTAP_JAEGER_OTLP_GRPC=127.0.0.1:$((base + 417))
  export MODELTAP_JAEGER_OTLP_HTTP=127.0.0.1:$((base + 418))
  export MODELTAP_JAEGER_OTLP=http://$MODELTAP_JAEGER_OTLP_HTTP
  export MODELTAP_JAEGER_QUERY=127.0.0.1:$((base + 686))
  export MODELTAP_JAEGER_QUERY_GRPC=127.0.0.1:$((base + 685))
  local prom=127.0.0.1:$((base + 90))
  {
    echo "# Written by scripts/backends.sh up."
    echo "global:"
    echo "  scrape_interval: $interval"
    echo "  evaluation_interval: $interval"
    if [ -n "$rules" ]; then
      echo "rule_files:"
      echo "  - $rules"
    fi
    echo "scrape_configs:"
    echo "  - job_name: otelcol"
    echo "    honor_labels: true  # keep the job and instance of each replica, not the Collector's"
    echo "    static_configs:"
    echo "      - targets: ['$MODELTAP_COLLECTOR_PROMETHEUS']"
  } >"$run/prometheus.yml"
  start jaeger "$bin/jaeger" --config "$root/examples/backends/jaeger.yaml"
  start collector "$bin/collector" --config "$root/examples/backends/otelcol.yaml"
  start prometheus prometheus --config.file "$run/prometheus.yml" --web.listen-address "$prom" \
    --storage.tsdb.path "$run/prometheus-data" --web.enable-lifecycle
  wait_http "http://$MODELTAP_JAEGER_QUERY/api/services" jaeger "$run/jaeger.log"
  wait_http "http://$MODELTAP_COLLECTOR_PROMETHEUS/metrics" collector "$run/collector.log"
  wait_http "http://$prom/-/ready" prometheus "$run/prometheus.log"
  {
    echo "OTLP_ENDPOINT=http://$MODELTAP_COLLECTOR_HTTP"
    echo "PROMETHEUS_URL=http://$prom"
    echo "JAEGER_URL=http://$MODELTAP_JAEGER_QUERY"
    echo "COLLECTOR_METRICS_URL=http://$MODELTAP_COLLECTOR_PROMETHEUS/metrics"
  } | tee "$run/endpoints.env"
}

down() {
  local name pid
  for name in prometheus collector jaeger; do
    if [ -f "$run/$name.pid" ]; then
      pid=$(cat "$run/$name.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$run/$name.pid"
      echo "backends: stopped $name"
    fi
  done
}

case ${1:-} in
  build) build ;;
  up) shift; up "$@" ;;
  down) down ;;
  *) echo "usage: scripts/backends.sh build | up [--rules FILE] | down" >&2; exit 2 ;;
esac
