#!/usr/bin/env bash
# Fuzzes the whole API from its OpenAPI document with schemathesis, against a
# local stack started here on ports of its own. Fails on any 5xx and on any
# response that breaks the document. MAX_EXAMPLES bounds the run.
# CHECKS=all runs every schemathesis check in positive and negative mode: requests
# the document allows must be accepted, requests it refuses must get a 4xx. The few
# refusals no schema keyword can state are let through by fuzz_hooks.py, which says why.
set -euo pipefail
cd "$(dirname "$0")/../.."

max_examples="${MAX_EXAMPLES:-10}"
default_checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance
case "${CHECKS:-}" in
  "") check_args=(--checks "$default_checks") ;;
  all) check_args=(--checks all --mode all) ;;
  *) check_args=(--checks "$CHECKS") ;;
esac
# PHASES (comma-separated: examples, coverage, fuzzing, stateful) narrows the run; unset, all.
phase_args=()
if [ -n "${PHASES:-}" ]; then phase_args=(--phases "$PHASES"); fi
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
api_port="$(free_port)"
emulator_port="$(free_port)"
log=".local/fuzz-stack.log"
mkdir -p .local

cargo build --quiet -p local-stack -p api -p worker -p sweeper -p batch-trigger -p event-publisher
./target/debug/local-stack dev --port "$api_port" --emulator-port "$emulator_port" --stack taskflow-fuzz >"$log" 2>&1 &
stack_pid=$!
trap 'kill -INT "$stack_pid" 2>/dev/null || true; wait "$stack_pid" 2>/dev/null || true' EXIT

echo "==> waiting for the local stack (log: $log)"
for _ in $(seq 1 120); do
  if curl -sf -o /dev/null "http://127.0.0.1:$api_port/api/openapi.json"; then break; fi
  if ! kill -0 "$stack_pid" 2>/dev/null; then echo "the local stack exited:"; tail -20 "$log"; exit 1; fi
  sleep 0.5
done

token="$(./target/debug/local-stack token --agency fuzz-agency --user fuzz-manager --role manager)"
echo "==> schemathesis: $max_examples examples per operation, checks: ${CHECKS:-default}, phases: ${PHASES:-all}"
PYTHONPATH=infra/local SCHEMATHESIS_HOOKS=fuzz_hooks \
  .venv-fuzz/bin/schemathesis --no-color run "http://127.0.0.1:$api_port/api/openapi.json" \
  --header "Authorization: Bearer $token" \
  "${check_args[@]}" \
  "${phase_args[@]}" \
  --max-examples "$max_examples" \
  --workers 1 \
  --generation-deterministic

