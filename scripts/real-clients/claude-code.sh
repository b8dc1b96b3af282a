#!/usr/bin/env bash
# claude-code.sh: the real Claude Code CLI against k2proxy in front of the k2mock upstream,
# all on loopback. Not part of `cargo test`: it needs `claude` (and node) installed.
#
#   scripts/real-clients/claude-code.sh [--capture DIR]
#
# It starts target/release/k2mock and target/release/k2proxy (building them when missing;
# CARGO_TARGET_DIR is honoured) on free loopback ports, then runs with Claude Code's
# defaults (no model variables, its own model names reach the proxy's alias patterns):
#   1. `claude -p "say hi"`: the answer is the mock's echo of the prompt;
#   2. a tool turn: the mock calls Claude Code's `Bash` tool with `ls`, Claude Code runs it
#      (`--allowedTools Bash`, in a temp dir holding one marker file) and sends the result
#      back; the mock's plain answer echoes it, so the marker's name must come back;
#   3. a streamed turn on the small model (`--model haiku`, stream-json output with
#      partial messages): the Anthropic events must arrive and the turn end in success.
# Exits non-zero at the first failure. Claude Code gets a fresh HOME and an HTTPS proxy
# that goes nowhere, so nothing leaves the machine and no user settings are read.
#
# --capture DIR: route Claude Code through scripts/real-clients/capture.mjs and write the
# requests it sent, paths and ids neutralised, as DIR/say-hi.json, DIR/bash-tool-call.json,
# DIR/bash-tool-result.json and DIR/haiku-stream.json (the fixtures of
# tests/fixtures/clients/claude-code/).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
CAPTURE=""
if [[ "${1:-}" == "--capture" ]]; then
    CAPTURE=$(mkdir -p "${2:?--capture needs a directory}" && cd "$2" && pwd)
fi

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

command -v claude >/dev/null || fail "claude is not installed (npm install -g @anthropic-ai/claude-code)"
command -v curl >/dev/null || fail "curl is needed"
if [[ ! -x "$BIN/k2proxy" || ! -x "$BIN/k2mock" ]]; then
    echo "building k2proxy and k2mock…"
    (cd "$ROOT" && cargo build --release --features mock --bin k2proxy --bin k2mock)
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/k2-claude-code.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    else
        node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
    fi
}

wait_for() { # URL WHAT
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.1
    done
    fail "$2 did not come up (logs in $TMP)"
}

MOCK_PORT=$(free_port)
PROXY_PORT=$(free_port)
cat >"$TMP/k2proxy.yaml" <<EOF
server:
  listen: ["127.0.0.1:$PROXY_PORT"]
upstream:
  base_url: "http://127.0.0.1:$MOCK_PORT"
auth:
  api_keys: ["sk-local"]
EOF
"$BIN/k2mock" --listen "127.0.0.1:$MOCK_PORT" >"$TMP/k2mock.log" 2>&1 &
PIDS+=($!)
"$BIN/k2proxy" -c "$TMP/k2proxy.yaml" >"$TMP/k2proxy.log" 2>&1 &
PIDS+=($!)
wait_for "http://127.0.0.1:$MOCK_PORT/__mock/requests" k2mock
wait_for "http://127.0.0.1:$PROXY_PORT/" k2proxy
BASE="http://127.0.0.1:$PROXY_PORT"

mkdir -p "$TMP/home" "$TMP/work"
WORK="$TMP/work"
MARKER="k2proxy-marker-$RANDOM.txt"
touch "$WORK/$MARKER"

# One capture proxy per step (STEP names its output directory).
capture_start() { # STEP
    local port
    port=$(free_port)
    node "$HERE/capture.mjs" "$port" "$BASE" "$TMP/cap-$1" "$WORK" "$TMP/home" >"$TMP/capture-$1.log" 2>&1 &
    CAPTURE_PID=$!
    PIDS+=("$CAPTURE_PID")
    wait_for "http://127.0.0.1:$port/" "capture proxy"
    CLIENT_BASE="http://127.0.0.1:$port"
}
capture_stop() {
    kill "$CAPTURE_PID" 2>/dev/null || true
    CLIENT_BASE="$BASE"
}
CLIENT_BASE="$BASE"

run_claude() { # ARGS…: claude in the work dir with the proxy's address and nothing else
    (cd "$WORK" && env -i PATH="$PATH" HOME="$TMP/home" TERM=dumb \
        ANTHROPIC_BASE_URL="$CLIENT_BASE" ANTHROPIC_API_KEY=sk-local \
        DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1 DISABLE_AUTOUPDATER=1 \
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
        HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost \
        timeout 180 claude "$@")
}

VERSION=$(claude --version)
echo "claude: $VERSION"
echo "k2proxy: $BASE (mock upstream on $MOCK_PORT)"

# 1. A plain prompt.
[[ -n "$CAPTURE" ]] && capture_start say-hi
OUT=$(run_claude -p "say hi") || fail "claude -p \"say hi\" exited $?: $OUT"
[[ -n "$CAPTURE" ]] && capture_stop
grep -q "Echo:" <<<"$OUT" && grep -q "say hi" <<<"$OUT" ||
    fail "say hi: not the mock's echo of the prompt: $OUT"
echo "ok: say hi"

# 2. A tool turn: the mock calls Bash, Claude Code runs it and finishes the turn.
ARGS=$(printf '%s' '{"command":"ls","description":"list files"}' | base64 | tr -d '\n=' | tr '+/' '-_')
[[ -n "$CAPTURE" ]] && capture_start tool
OUT=$(run_claude -p "run ls [[mock: tool_call=Bash; tool_args=$ARGS]]" \
    --allowedTools Bash --output-format json) || fail "tool turn exited $?: $OUT"
[[ -n "$CAPTURE" ]] && capture_stop
node -e '
const out = require("fs").readFileSync(0, "utf8"), marker = process.argv[1];
const r = JSON.parse(out);
const bad = (m) => { console.error(m + ": " + out); process.exit(1); };
if (r.type !== "result" || r.subtype !== "success" || r.is_error) bad("not a success");
if (r.num_turns !== 2) bad("expected 2 turns (the call, then the answer)");
if (!String(r.result).includes(marker)) bad("the ls output did not come back");
if ((r.permission_denials || []).length) bad("Bash was denied");
' "$MARKER" <<<"$OUT" || fail "tool turn"
echo "ok: tool turn (Bash ran ls, its output came back)"

# 3. A streamed turn on the small model.
[[ -n "$CAPTURE" ]] && capture_start haiku
OUT=$(run_claude -p "count to three" --model haiku --output-format stream-json \
    --verbose --include-partial-messages) || fail "streamed turn exited $?: $OUT"
[[ -n "$CAPTURE" ]] && capture_stop
node -e '
const out = require("fs").readFileSync(0, "utf8");
const lines = out.split("\n").filter(Boolean).map((l) => JSON.parse(l));
const bad = (m) => { console.error(m + ": " + out.slice(-2000)); process.exit(1); };
const kinds = lines.filter((l) => l.type === "stream_event").map((l) => l.event.type);
for (const k of ["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"])
  if (!kinds.includes(k)) bad("no " + k + " event");
const start = lines.find((l) => l.type === "stream_event" && l.event.type === "message_start").event;
const delta = lines.find((l) => l.type === "stream_event" && l.event.type === "message_delta").event;
if (start.message.usage.input_tokens !== delta.usage.input_tokens) bad("input_tokens differ");
const result = lines.find((l) => l.type === "result");
if (!result || result.subtype !== "success" || !String(result.result).includes("count to three")) bad("no successful result");
' <<<"$OUT" || fail "streamed turn"
echo "ok: streamed turn (haiku)"

if [[ -n "$CAPTURE" ]]; then
    take() { # STEP N NAME
        [[ -f "$TMP/cap-$1/$2.json" ]] || fail "capture: $1 has no request $2"
        cp "$TMP/cap-$1/$2.json" "$CAPTURE/$3.json"
    }
    take say-hi 001 say-hi
    take tool 001 bash-tool-call
    take tool 002 bash-tool-result
    take haiku 001 haiku-stream
    echo "captured: $CAPTURE"
fi
echo "PASS: $VERSION"
