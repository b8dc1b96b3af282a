#!/usr/bin/env bash
# Codex CLI against k2proxy, for real (issue 17): k2mock and k2proxy on free loopback ports,
# a throwaway CODEX_HOME whose config.toml is the README's recipe (a model provider with
# wire_api = "responses", model_reasoning_summary = "auto"), then `codex exec` turns with
# Codex's defaults otherwise:
#   1. "say hi" with the default model;
#   2. the default model ("Responses lite", code mode) calling the shell through its
#      namespaced `exec` custom tool: Codex runs the command and the turn finishes;
#   3. `-m gpt-5.5` (classic tools: exec_command, the freeform apply_patch, tool_search and
#      web_search) calling exec_command: Codex runs it and the turn finishes;
#   4. `-m gpt-5.1-codex` (a model Codex has no metadata for: a namespace tool and
#      web_search) answers, its reasoning shown as Codex's thinking.
# The mock answers with a tool call when the prompt carries a `[[mock: tool_call=…]]`
# directive. Exits non-zero on the first failed check. Not part of `cargo test`: it needs
# the real CLI (`npm install -g @openai/codex`).
#
#   scripts/real-clients/codex.sh            # CODEX=/path/to/codex to pick the binary,
#                                            # CODEX_SANDBOX=danger-full-access where
#                                            # Codex's sandbox cannot run
#
# Nothing leaves the machine: Codex's update check and analytics are off, and HTTP(S)_PROXY
# points at a closed loopback port for everything but 127.0.0.1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
CODEX=${CODEX:-codex}
SANDBOX=${CODEX_SANDBOX:-read-only}

command -v "$CODEX" >/dev/null || { echo "codex not found; install it: npm install -g @openai/codex" >&2; exit 2; }
if [ ! -x "$BIN/k2proxy" ] || [ ! -x "$BIN/k2mock" ]; then
    (cd "$ROOT" && cargo build --release --features mock --bin k2proxy --bin k2mock)
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/k2-codex.XXXXXX")
PIDS=()
ok=0
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "$ok" = 1 ]; then rm -rf "$WORK"; else echo "logs kept in $WORK" >&2; fi
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    for f in "$WORK"/*.jsonl "$WORK"/*.err "$WORK"/proxy.log; do
        [ -s "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }
    done
    exit 1
}

# A loopback port nothing listens on.
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
    done
    return 1
}

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    fail "nothing listens on 127.0.0.1:$1"
}

# base64url without padding, as the mock's tool_args directive takes it.
b64url() { printf '%s' "$1" | base64 | tr -d '\n' | tr '+/' '-_' | tr -d '='; }

MOCK_PORT=$(free_port)
PROXY_PORT=$(free_port)
while [ "$PROXY_PORT" = "$MOCK_PORT" ]; do PROXY_PORT=$(free_port); done

cat > "$WORK/k2proxy.yaml" <<YAML
server:
  listen: ["127.0.0.1:$PROXY_PORT"]
  grace_period: 1s
  graceful_shutdown_timeout: 1s
upstream:
  base_url: "http://127.0.0.1:$MOCK_PORT"
auth:
  api_keys: ["sk-local"]
metrics:
  listen: null
YAML
"$BIN/k2mock" --listen "127.0.0.1:$MOCK_PORT" > "$WORK/mock.log" 2>&1 &
PIDS+=($!)
"$BIN/k2proxy" -c "$WORK/k2proxy.yaml" > "$WORK/proxy.log" 2>&1 &
PIDS+=($!)
wait_port "$MOCK_PORT"
wait_port "$PROXY_PORT"

mkdir -p "$WORK/codex-home" "$WORK/home" "$WORK/project"
# The README's recipe, plus the update check and analytics off.
cat > "$WORK/codex-home/config.toml" <<TOML
model_provider = "k2proxy"
model_reasoning_summary = "auto"
check_for_update_on_startup = false

[model_providers.k2proxy]
name = "k2proxy"
base_url = "http://127.0.0.1:$PROXY_PORT/v1"
wire_api = "responses"
env_key = "K2_API_KEY"

[analytics]
enabled = false
TOML

VERSION=$("$CODEX" --version 2>/dev/null || true)
echo "$VERSION against k2proxy on 127.0.0.1:$PROXY_PORT (mock on :$MOCK_PORT), sandbox $SANDBOX"

# codex exec NAME ARGS…: its JSONL events in NAME.jsonl, its last message in NAME.last.
run() {
    local name=$1
    shift
    (cd "$WORK/project" && env -i PATH="$PATH" HOME="$WORK/home" TERM=dumb \
        CODEX_HOME="$WORK/codex-home" K2_API_KEY=sk-local \
        HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 ALL_PROXY=http://127.0.0.1:9 \
        NO_PROXY=127.0.0.1,localhost \
        timeout 180 "$CODEX" exec --skip-git-repo-check --json --sandbox "$SANDBOX" \
        --output-last-message "$WORK/$name.last" "$@" < /dev/null \
        > "$WORK/$name.jsonl" 2> "$WORK/$name.err") || fail "$name: codex exited with $?"
    grep -q '"type":"turn.completed"' "$WORK/$name.jsonl" || fail "$name: the turn did not complete"
    ! grep -q '^{"type":"\(turn.failed\|error\)"' "$WORK/$name.jsonl" || fail "$name: an error event"
}

# Codex ran a command whose output holds $2, and the turn ended on an answer holding it.
ran() {
    grep '"type":"item.completed"' "$WORK/$1.jsonl" | grep '"type":"command_execution"' \
        | grep '"exit_code":0' | grep -q "$2" || fail "$1: no completed command printed $2"
    grep -q "$2" "$WORK/$1.last" || fail "$1: the last message does not carry the command's output"
}

# 1. A plain prompt.
run plain "say hi"
[ "$(cat "$WORK/plain.last")" = "Echo: say hi" ] || fail "plain: last message: $(cat "$WORK/plain.last")"
echo "ok   say hi"

# 2. The default model calls the shell through code mode: functions.exec (a custom tool in
#    the `functions` namespace) running tools.exec_command.
NONCE=k2-codex-$RANDOM$RANDOM
JS="const r = await tools.exec_command({cmd: \"echo $NONCE\"}); text(r.output);"
ARGS=$(b64url "{\"input\":\"${JS//\"/\\\"}\"}")
run code_mode "run the check [[mock: tool_call=functions__exec; tool_args=$ARGS]]"
ran code_mode "$NONCE"
grep '"type":"item.completed"' "$WORK/code_mode.jsonl" | grep -q '"type":"reasoning"' \
    || fail "code_mode: no reasoning summary shown (model_reasoning_summary = auto)"
echo "ok   default model: code-mode exec ran \`echo $NONCE\`, reasoning shown"

# 3. gpt-5.5 calls exec_command, a plain function tool.
NONCE=k2-codex-$RANDOM$RANDOM
ARGS=$(b64url "{\"cmd\":\"echo $NONCE\"}")
run classic -m gpt-5.5 "run the check [[mock: tool_call=exec_command; tool_args=$ARGS]]"
ran classic "$NONCE"
echo "ok   gpt-5.5: exec_command ran \`echo $NONCE\`"

# 4. A model Codex has no metadata for: classic tools with a namespace and web_search.
run fallback -m gpt-5.1-codex "say hi"
grep '"type":"item.completed"' "$WORK/fallback.jsonl" | grep -q '"type":"reasoning"' \
    || fail "fallback: no reasoning summary shown"
echo "ok   gpt-5.1-codex: namespace and web_search tools taken, reasoning summary shown"

grep -q 'dropped tools the emulation cannot run: .*web_search' "$WORK/proxy.log" \
    || fail "the proxy did not log the dropped web_search tool"
ok=1
echo "PASS: $VERSION"
