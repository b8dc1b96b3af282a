// capture.mjs: a forwarding HTTP proxy that records the API requests a real client sends,
// with the machine's paths and ids replaced, as fixture files for tests/fixtures/clients/.
//
//   node capture.mjs LISTEN_PORT TARGET_URL OUT_DIR [CLIENT_WORKDIR [CLIENT_HOME]]
//
// Every POST is forwarded to TARGET_URL unchanged; its method, path, headers and JSON body
// are written to OUT_DIR/NNN.json (001, 002, … in arrival order) once the answer has been
// relayed. In what is written: CLIENT_WORKDIR becomes /home/user/project, CLIENT_HOME
// /home/user, the kernel version, device id and session ids fixed values, the API key
// `sk-local`. Nothing is printed but the listening line. Loopback only.
import fs from 'node:fs';
import http from 'node:http';

const [port, target, outDir, workdir, home] = process.argv.slice(2);
if (!port || !target || !outDir) {
  console.error('usage: node capture.mjs LISTEN_PORT TARGET_URL OUT_DIR [CLIENT_WORKDIR [CLIENT_HOME]]');
  process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });
const up = new URL(target);
const SESSION = '00000000-0000-4000-8000-000000000000';
const DROP = new Set(['host', 'content-length', 'connection', 'accept-encoding']);

function scrub(text) {
  let t = text;
  const pairs = [];
  if (workdir) {
    pairs.push([workdir, '/home/user/project']);
    pairs.push([workdir.replace(/[^A-Za-z0-9]/g, '-'), '-home-user-project']);
  }
  if (home) pairs.push([home, '/home/user']);
  for (const [from, to] of pairs) t = t.split(from).join(to);
  t = t.replace(/OS Version: [^"\\]*/g, 'OS Version: Linux 6.0.0');
  t = t.replace(/(device_id\\*":\\*")[0-9a-f]+/g, '$1' + '0'.repeat(64));
  t = t.replace(/(session_id\\*":\\*")[0-9a-f-]{36}/g, '$1' + SESSION);
  return t;
}

let n = 0;
http
  .createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const id = req.method === 'POST' ? String(++n).padStart(3, '0') : null;
      const fwd = http.request(
        { host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers },
        (ur) => {
          res.writeHead(ur.statusCode, ur.headers);
          ur.pipe(res);
          ur.on('end', () => {
            if (!id) return;
            let parsed;
            try {
              parsed = JSON.parse(body.toString('utf8'));
            } catch {
              return;
            }
            const headers = {};
            for (const [k, v] of Object.entries(req.headers)) {
              if (DROP.has(k)) continue;
              if (k === 'x-api-key') headers[k] = 'sk-local';
              else if (k === 'authorization') headers[k] = 'Bearer sk-local';
              else if (k === 'x-claude-code-session-id') headers[k] = SESSION;
              else headers[k] = v;
            }
            const record = { method: req.method, path: req.url, headers, body: parsed };
            fs.writeFileSync(`${outDir}/${id}.json`, scrub(JSON.stringify(record, null, 2)) + '\n');
          });
        },
      );
      fwd.on('error', (e) => {
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end(`capture: upstream error: ${e.message}`);
      });
      fwd.end(body);
    });
  })
  .listen(Number(port), '127.0.0.1', () => console.log(`capture: listening on 127.0.0.1:${port}`));
