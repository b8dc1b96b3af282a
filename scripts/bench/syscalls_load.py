"""Closed-loop load for scripts/bench/syscalls.sh: N chat completions over C keep-alive
connections (Python's http.client, so that the client's own syscalls are not the proxy's).
Usage: syscalls_load.py PORT N C [stream|json]"""
import http.client
import json
import sys
import threading

port, n, conns = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
stream = (sys.argv[4] if len(sys.argv) > 4 else "stream") == "stream"
body = json.dumps({
    "model": "MBZUAI-IFM/K2-Think-v2",
    "stream": stream,
    "messages": [{"role": "user", "content": "hi [[mock: chunk=16]]"}],
})
bad = []


def worker(k):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(k):
        c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        r = c.getresponse()
        d = r.read()
        if r.status != 200 or (stream and b"[DONE]" not in d):
            bad.append(r.status)


threads = [threading.Thread(target=worker, args=(n // conns,)) for _ in range(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if bad:
    sys.exit(f"{len(bad)} failed requests: {bad[:5]}")
