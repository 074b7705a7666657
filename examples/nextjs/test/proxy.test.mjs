// The route handler's checks, against a stand-in for the supervisor: what
// it forwards, what it sends upstream, and what it refuses.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { checkSpec, configFromEnv, makeProxy, MAX_BODY_BYTES } from "../lib/proxy.mjs";

const TOKEN = "proxy-test-token-0123456789";
const ROOT = "/srv/memvisor/data";

// stub records upstream requests and answers like the supervisor would.
function stub(answer = () => Response.json({ id: "j1", status: "running" }, { status: 201 })) {
  const calls = [];
  const fetchImpl = async (url, init) => {
    calls.push({ url, method: init.method, headers: Object.fromEntries(init.headers), body: init.body });
    return answer(url, init);
  };
  const proxy = makeProxy({ config: { url: "http://127.0.0.1:7411/", token: TOKEN, dataRoot: ROOT }, fetchImpl });
  const call = (method, path, { body, headers = {}, duplex } = {}) =>
    proxy(new Request("http://app.example/api/memvisor/" + path, { method, body, headers, duplex }), {
      params: Promise.resolve({ path: new URL("http://x/" + path).pathname.slice(1).split("/").map(decodeURIComponent) }),
    });
  return { calls, call };
}

const goodSpec = () => ({
  source: { type: "synthetic", count: 1000, seed: 1 },
  target: { type: "jsonl", path: ROOT + "/out.jsonl" },
  match: { source_field: "email", target_field: "email" },
  batch_size: 50,
  inject: { slow_batch: "20ms" },
});
const json = { "content-type": "application/json" };

test("a start is forwarded with the token, and none of the visitor's headers", async () => {
  const { calls, call } = stub();
  const res = await call("POST", "v1/jobs", {
    body: JSON.stringify(goodSpec()),
    headers: {
      ...json,
      cookie: "session=secret",
      origin: "https://evil.example",
      referer: "https://evil.example/x",
      authorization: "Bearer visitor",
      "x-forwarded-for": "1.2.3.4",
    },
  });
  assert.equal(res.status, 201);
  assert.deepEqual(await res.json(), { id: "j1", status: "running" });
  assert.equal(calls.length, 1);
  const c = calls[0];
  assert.equal(c.url, "http://127.0.0.1:7411/v1/jobs");
  assert.equal(c.method, "POST");
  assert.deepEqual(Object.keys(c.headers).sort(), ["accept", "authorization", "content-type"]);
  assert.equal(c.headers.authorization, "Bearer " + TOKEN);
  assert.equal(c.headers["content-type"], "application/json");
  assert.deepEqual(JSON.parse(c.body), goodSpec());
});

test("the buttons are forwarded as JSON POSTs", async () => {
  const { calls, call } = stub(() => Response.json({ id: "j1", status: "paused", job: {} }));
  for (const action of ["pause", "resume", "cancel"]) {
    const res = await call("POST", `v1/jobs/j1/${action}`);
    assert.equal(res.status, 200, action);
    assert.equal(calls.at(-1).url, `http://127.0.0.1:7411/v1/jobs/j1/${action}`);
    assert.equal(calls.at(-1).headers["content-type"], "application/json");
  }
  assert.equal((await call("POST", "v1/jobs/j1/pause", { body: '{"x":1}', headers: json })).status, 400);
});

test("an event stream passes through unbuffered", async () => {
  const frames = "retry: 2000\nid: 1\nevent: snapshot\ndata: {}\n\n";
  const { calls, call } = stub(() => new Response(frames, { headers: { "content-type": "text/event-stream" } }));
  const res = await call("GET", "v1/jobs/j1/events");
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-type"), "text/event-stream");
  assert.equal(res.headers.get("x-accel-buffering"), "no");
  assert.equal(await res.text(), frames);
  assert.equal(calls[0].headers.accept, "text/event-stream");
});

test("routes the page does not use are refused before any upstream call", async () => {
  const { calls, call } = stub();
  const cases = [
    ["GET", "metrics", 404],
    ["GET", "healthz", 404],
    ["GET", "v1/openapi.json", 404],
    ["GET", "v1/jobs/j1", 404],
    ["GET", "v1/jobs/j1/failed", 404],
    ["GET", "v1/jobs/j1/heap-profile", 404],
    ["POST", "v1/jobs/j1/retry-failed", 404],
    ["GET", "v1/jobs", 405],
    ["DELETE", "v1/jobs/j1/events", 405],
    ["GET", "v1/jobs/j1/pause", 405],
    ["POST", "v1/jobs/..%2Fmetrics/pause", 404],
    ["POST", "v1/jobs/j1%2Fx/pause", 404],
    ["GET", "v1/jobs/-j1/events", 404],
    ["GET", "v1/jobs/j1/events?cursor=1", 400],
  ];
  for (const [method, path, want] of cases) {
    const res = await call(method, path);
    assert.equal(res.status, want, `${method} ${path}`);
    assert.match(res.headers.get("content-type"), /^application\/json/);
    if (want === 405) assert.ok(res.headers.get("allow"), "405 names the allowed method");
  }
  assert.equal(calls.length, 0);
});

test("a start must be a bounded JSON body of the page's shape", async () => {
  const { calls, call } = stub();
  const post = (body, headers = json) => call("POST", "v1/jobs", { body, headers });
  assert.equal((await post(JSON.stringify(goodSpec()), { "content-type": "text/plain" })).status, 415);
  assert.equal((await post(JSON.stringify(goodSpec()), {})).status, 415);
  assert.equal((await post("{not json")).status, 400);
  assert.equal((await post(JSON.stringify({ ...goodSpec(), id: "x".repeat(MAX_BODY_BYTES) }))).status, 413);
  // A body that lies about its length is cut off while it streams.
  const big = new ReadableStream({
    start(c) {
      for (let i = 0; i < 64; i++) c.enqueue(new TextEncoder().encode(" ".repeat(1024)));
      c.close();
    },
  });
  const res = await call("POST", "v1/jobs", { body: big, headers: json, duplex: "half" });
  assert.equal(res.status, 413);
  assert.equal(calls.length, 0);

  const bad = await post(JSON.stringify({ ...goodSpec(), source: { type: "jsonl", path: "/etc/passwd" } }));
  assert.equal(bad.status, 400);
  assert.deepEqual((await bad.json()).error.fields.map((f) => f.field), ["source.type"]);
  assert.equal(calls.length, 0);
});

test("checkSpec names each field it refuses", () => {
  const fields = (patch) => checkSpec({ ...goodSpec(), ...patch }, { dataRoot: ROOT }).map((e) => e.field);
  assert.deepEqual(fields({}), []);
  assert.deepEqual(fields({ Source: {} }), ["Source"]);
  assert.deepEqual(fields({ state_dir: "/tmp" }), ["state_dir"]);
  assert.deepEqual(fields({ "\u017ftate_dir": "/tmp" }), ["\u017ftate_dir"]);
  assert.deepEqual(fields({ inject: { crash_on_start: true, slow_batch: "1ms" } }), ["inject.crash_on_start"]);
  assert.deepEqual(fields({ inject: { slow_batch: "10s" } }), ["inject.slow_batch"]);
  assert.deepEqual(fields({ target: { type: "jsonl", path: "/etc/passwd" } }), ["target.path"]);
  assert.deepEqual(fields({ target: { type: "jsonl", path: ROOT + "/../state/registry.db" } }), ["target.path"]);
  assert.deepEqual(fields({ target: { type: "jsonl", path: ROOT + "x/out.jsonl" } }), ["target.path"]);
  assert.deepEqual(fields({ target: { type: "jsonl", path: "rel.jsonl" } }), ["target.path"]);
  assert.deepEqual(fields({ source: { type: "synthetic", count: 0 } }), ["source.count"]);
  assert.deepEqual(fields({ source: { type: "synthetic", count: 5, payload_bytes: 1e9 } }), ["source.payload_bytes"]);
  assert.deepEqual(fields({ id: "../x" }), ["id"]);
  assert.deepEqual(checkSpec([1], {}).length, 1);
});

test("the token comes from MEMVISOR_TOKEN or MEMVISOR_TOKEN_FILE", () => {
  const dir = mkdtempSync(join(tmpdir(), "memvisor-proxy-"));
  const file = join(dir, "api-token");
  writeFileSync(file, TOKEN + "\n", { mode: 0o600 });
  assert.equal(configFromEnv({ MEMVISOR_TOKEN_FILE: file }).token, TOKEN);
  assert.equal(configFromEnv({ MEMVISOR_TOKEN: "direct", MEMVISOR_TOKEN_FILE: file }).token, "direct");
  assert.equal(configFromEnv({}).url, "http://127.0.0.1:7411");
  assert.throws(() => configFromEnv({ MEMVISOR_TOKEN_FILE: join(dir, "missing") }));
});

test("an upstream that does not answer JSON is a 502", async () => {
  const { call } = stub(() => new Response("<html>", { status: 200, headers: { "content-type": "text/html" } }));
  assert.equal((await call("POST", "v1/jobs/j1/pause")).status, 502);
  const down = stub(() => Promise.reject(new TypeError("fetch failed")));
  assert.equal((await down.call("POST", "v1/jobs/j1/pause")).status, 502);
});
