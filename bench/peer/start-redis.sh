#!/usr/bin/env bash
# Starts a throwaway redis-server for the BullMQ peer on 127.0.0.1:<port>, the way the benchmark
# harness does (no RDB snapshots, no AOF), daemonised. Prints its pid and nothing else:
#
#   REDIS_PID=$(bench/peer/start-redis.sh 6390)
#   REDIS_URL=redis://127.0.0.1:6390 REDIS_PID=$REDIS_PID node bench/peer/run.mjs throughput --tasks 2000
#   kill $REDIS_PID
#
# The server's log is /tmp/taskflow-peer-redis-<port>/redis.log.
set -euo pipefail
port="${1:?usage: start-redis.sh <port>}"
[[ "$port" =~ ^[0-9]+$ ]] || { echo "start-redis.sh: port must be a number" >&2; exit 2; }
command -v redis-server >/dev/null || { echo "start-redis.sh: redis-server not found (apt-get install -y redis-server)" >&2; exit 2; }
dir="/tmp/taskflow-peer-redis-$port"
mkdir -p "$dir"
rm -f "$dir/redis.pid"
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
  --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" >/dev/null
for _ in $(seq 1 100); do
  if [[ -s "$dir/redis.pid" ]] && { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
    printf 'PING\r\n' >&3
    if read -r -t 1 reply <&3 && [[ "$reply" == +PONG* ]]; then
      exec 3>&-
      cat "$dir/redis.pid"
      exit 0
    fi
    exec 3>&-
  fi
  sleep 0.05
done
echo "start-redis.sh: redis-server did not answer on 127.0.0.1:$port within 5 s (see $dir/redis.log)" >&2
exit 1
