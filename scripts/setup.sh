#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: system packages the tests need
# (Chromium for the browser tests, Redis for the backplane tests, Node.js for the
# benchmark load client), a virtualenv in .venv with coda_ws and its development
# extras, the load client's npm packages, and a running Redis.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "setup: installing ${need_apt[*]} with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Redis on 127.0.0.1:6379, keeping nothing on disk (the project's convention).
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "setup: starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'

# The benchmark suite's load client (Node.js and the `ws` package; benchmarks/README.md),
# which tests/test_benchmarks.py runs.
if [ ! -d benchmarks/node_modules/ws ]; then
  echo "setup: installing the benchmark load client (npm ci --prefix benchmarks)"
  npm ci --prefix benchmarks --no-audit --no-fund >/dev/null
fi
echo "setup: ready (.venv/bin/coda-ws, .venv/bin/python -m pytest)"
