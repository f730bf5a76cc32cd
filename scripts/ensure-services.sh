#!/usr/bin/env bash
# Start the local PostgreSQL and Redis the integration tests use, if they are not running.
# The commands are this machine's own (see the tool library's env notes); elsewhere, point
# SENDFLOWR_TEST_POSTGRES_URL / SENDFLOWR_TEST_REDIS_URL at servers you run.
set -u
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! up 5432; then
  echo "starting PostgreSQL..."
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi
if ! up 6379; then
  echo "starting Redis..."
  if command -v redis-server >/dev/null 2>&1; then
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  fi
fi
for port in 5432 6379; do
  for _ in $(seq 1 30); do up "$port" && break; sleep 0.5; done
  up "$port" || echo "warning: nothing listens on 127.0.0.1:$port; tests that need it will fail" >&2
done
exit 0
