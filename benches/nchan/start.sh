#!/usr/bin/env bash
# Starts Nchan (nginx + libnginx-mod-nchan from Debian) on 127.0.0.1:<port> with 2
# workers in a directory of its own; prints its master pid. Installs the packages when
# missing. Stop it with: kill -QUIT <pid>
#   benches/nchan/start.sh <port> <dir>
set -euo pipefail
PORT=${1:?port}; DIR=${2:?dir}
HERE="$(cd "$(dirname "$0")" && pwd)"
if [ ! -f /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-nchan >/dev/null
  # Debian starts a default nginx on port 80: not ours.
  as_root service nginx stop >/dev/null 2>&1 || true
fi
mkdir -p "$DIR"
sed -e "s#__DIR__#$DIR#g" -e "s#__PORT__#$PORT#g" "$HERE/nginx.conf.template" > "$DIR/nginx.conf"
ulimit -n 20000 || true
nginx -c "$DIR/nginx.conf" -p "$DIR" > "$DIR/stdout.log" 2>&1 &
echo $!
