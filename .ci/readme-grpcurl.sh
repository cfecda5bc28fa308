#!/usr/bin/env bash
# Runs the grpcurl commands of docs/grpc.md's "## Operating it with grpcurl" (the control plane's
# reference by example, linked from the README) exactly as written,
# against a live `wss serve` (admin token on, private redis-server, a receiver on loopback), so
# the operators' docs cannot drift from the server.
#
# The section's first ```sh block only sets variables (A, H, URL): this script gives each a value
# for the live server instead, and fails if the block sets any other. Every further ```sh block is
# run as written with `bash -euo pipefail -v` (-v echoes each line unexpanded, so the token in $H is
# never shown). Before every command block but the first, it waits (with a deadline) until every
# delivery so far has finished, because those blocks read deliveries back. Webhook secrets in
# responses are redacted from the output.
#
# Needs grpcurl, jq, python3, redis-server and the wss binary ($WSS_BIN, default target/debug/wss).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
wss_bin=${WSS_BIN:-$root/target/debug/wss}
doc=$root/docs/grpc.md
section="Operating it with grpcurl"
wait_secs=30

for tool in grpcurl jq python3 redis-server; do
  command -v "$tool" >/dev/null 2>&1 || { echo "readme-grpcurl: $tool is missing" >&2; exit 1; }
done
[ -x "$wss_bin" ] || { echo "readme-grpcurl: $wss_bin is missing: cargo build first, or set WSS_BIN" >&2; exit 1; }

. .ci/redis.sh
work=$(mktemp -d)
wss_pid='' receiver_pid=''
cleanup() {
  [ -n "$receiver_pid" ] && kill "$receiver_pid" 2>/dev/null
  if [ -n "$wss_pid" ]; then kill "$wss_pid" 2>/dev/null; wait "$wss_pid" 2>/dev/null; fi
  stop_private_redis
  rm -rf "$work"
}
trap cleanup EXIT

# --- the section's ```sh blocks, in order: block-0.sh (variables), block-1.sh, ... -------------
python3 - "$doc" "$section" "$work" <<'PY'
import pathlib, re, sys
doc, section, work = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
text = pathlib.Path(doc).read_text(encoding="utf-8")
m = re.search(r"^## " + re.escape(section) + r"\n(.*?)(?=^## |\Z)", text, re.S | re.M)
if not m:
    sys.exit(f"{doc} has no section '## {section}'")
blocks = re.findall(r"^```sh\n(.*?)^```[ \t]*$", m.group(1), re.S | re.M)
if len(blocks) < 2:
    sys.exit(f"'## {section}' should hold a ```sh block of variables and at least one of commands; found {len(blocks)} blocks")
for i, block in enumerate(blocks):
    (work / f"block-{i}.sh").write_text(block, encoding="utf-8")
print(f"readme-grpcurl: {len(blocks) - 1} command block(s), {sum(b.count(chr(10)) for b in blocks[1:])} lines, from '## {section}'")
PY

# The variables block: plain assignments of the variables given values below, nothing else.
provided="A H URL"
assigned=$(grep -vE '^[[:space:]]*(#|$)' "$work/block-0.sh" | sed -E 's/^([A-Za-z_][A-Za-z0-9_]*)=.*/\1/' | sort -u | tr '\n' ' ')
if [ "$(echo "$assigned" | tr ' ' '\n' | grep -v '^$' | sort -u | tr '\n' ' ')" != "$(echo "$provided" | tr ' ' '\n' | sort -u | tr '\n' ' ')" ]; then
  echo "readme-grpcurl: the section's first sh block should set exactly: $provided; it sets: $assigned" >&2
  echo "(give any new variable a CI value in .ci/readme-grpcurl.sh)" >&2
  exit 1
fi

# --- a private Redis, a receiver on loopback, wss serve with an admin token -------------------
start_private_redis "$work/redis"

python3 - "$work/receiver" <<'PY' &
import http.server, sys
base = sys.argv[1]
class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()
        with open(base + ".requests", "a") as f:
            f.write(self.headers.get("X-WSS-Event-Id", "?") + "\n")
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
with open(base + ".port.tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os; os.rename(base + ".port.tmp", base + ".port")
server.serve_forever()
PY
receiver_pid=$!

touch "$work/wss.log"
token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
env $(env | grep -oE '^(WSS_[A-Z_]*|RUST_LOG)=' | tr -d = | sed 's/^/-u /') \
  WSS_REDIS_URL="$REDIS_URL" WSS_GRPC_ADDR=127.0.0.1:0 WSS_METRICS_ADDR=127.0.0.1:0 \
  WSS_ADMIN_TOKEN="$token" WSS_ALLOW_PRIVATE_TARGETS=true WSS_ALLOW_HTTP=true \
  WSS_SENDER_THREADS=4 WSS_READ_BLOCK=200ms \
  "$wss_bin" serve >/dev/null 2>"$work/wss.log" &
wss_pid=$!

deadline=$((SECONDS + wait_secs))
addr=''
until [ -n "$addr" ] && [ -f "$work/receiver.port" ]; do
  addr=$(sed -nE 's/.*control plane listening on ([^ ]+).*/\1/p' "$work/wss.log" | head -1)
  if [ $SECONDS -gt $deadline ] || ! kill -0 "$wss_pid" 2>/dev/null; then
    echo "readme-grpcurl: wss did not start (or the receiver did not); its log:" >&2; cat "$work/wss.log" >&2; exit 1
  fi
  sleep 0.1
done
A=$addr
H="authorization: Bearer $token"
URL="http://127.0.0.1:$(cat "$work/receiver.port")/hook"
export A H URL
echo "readme-grpcurl: wss at $A (admin token set), receiver at $URL, $REDIS_URL"

# --- run the blocks -----------------------------------------------------------------------------
deliveries_finished() {
  grpcurl -plaintext -H "$H" -d '{}' "$A" wss.v1.DeliveryService/ListDeliveries |
    jq -e '(.deliveries // []) as $d | ($d | length) > 0 and ($d | all(.status == "DELIVERY_STATUS_DELIVERED" or .status == "DELIVERY_STATUS_DEAD_LETTERED"))' >/dev/null
}

redact() { sed -u -E 's/("(secret|token)": *")[^"]*"/\1<redacted>"/g'; }

blocks=$(ls "$work"/block-*.sh | wc -l)
for ((i = 1; i < blocks; i++)); do
  if [ $i -ge 2 ]; then
    deadline=$((SECONDS + wait_secs))
    until deliveries_finished; do
      [ $SECONDS -le $deadline ] || { echo "readme-grpcurl: no finished delivery within ${wait_secs} s; wss log:" >&2; tail -30 "$work/wss.log" >&2; exit 1; }
      sleep 0.1
    done
  fi
  echo "::: docs/grpc.md block $i"
  if ! (cd "$work" && bash -euo pipefail -v "block-$i.sh") 2>&1 | redact; then
    echo "readme-grpcurl: docs/grpc.md block $i failed (above: the line that failed, then its error); wss log tail:" >&2
    tail -20 "$work/wss.log" >&2
    exit 1
  fi
done

requests=$(wc -l < "$work/receiver.requests" 2>/dev/null || echo 0)
[ "$requests" -ge 1 ] || { echo "readme-grpcurl: the receiver got no request" >&2; exit 1; }
if grep -qE 'panicked|ERROR' "$work/wss.log"; then
  echo "readme-grpcurl: wss logged errors:" >&2; grep -E 'panicked|ERROR' "$work/wss.log" >&2; exit 1
fi
echo "readme-grpcurl: every command of '## $section' ran against a live server; the receiver got $requests request(s)"
