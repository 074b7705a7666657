// Runs the client against a live `supervisor serve`, whose URL and token
// come from MEMVISOR_URL and MEMVISOR_TOKEN (pkg/service/e2e starts one,
// with fault injection allowed). MEMVISOR_DATA_ROOT is the directory the
// supervisor lets jobs write under (its allowed_roots; by default
// <state_dir>/data); without it, targets go to the temporary directory.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { createClient, isFinished, MemvisorError, readEvents } from "../memvisor.mjs";
import { makeProxy } from "../lib/proxy.mjs";

const url = process.env.MEMVISOR_URL;
const token = process.env.MEMVISOR_TOKEN;
if (!url || !token) throw new Error("set MEMVISOR_URL and MEMVISOR_TOKEN to a running supervisor serve");

const mv = createClient({ baseUrl: url, token });
const dataRoot = process.env.MEMVISOR_DATA_ROOT || "";
const dir = mkdtempSync(join(dataRoot || tmpdir(), "memvisor-node-"));
let n = 0;
const spec = (count, extra = {}) => ({
  id: `node-${process.pid}-${++n}`,
  source: { type: "synthetic", count, seed: 3 },
  target: { type: "jsonl", path: join(dir, `target-${n}.jsonl`) },
  match: { source_field: "email", target_field: "email" },
  batch_size: 50,
  // Slow enough that a pause finds the job running, and sampled often
  // enough that a short job has memory events.
  inject: { slow_batch: "5ms" },
  memory: { sample_interval: "50ms" },
  ...extra,
});

async function until(fn, what, ms = 20000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 25));
  }
}

test("createJob, subscribe and getJob follow a job to completion", async () => {
  const s = spec(2000);
  const created = await mv.createJob(s);
  assert.equal(created.id, s.id);
  assert.ok(["queued", "running"].includes(created.status));

  const kinds = [];
  let last = null;
  await new Promise((resolve, reject) => {
    const stop = mv.subscribe(s.id, (kind, ev) => {
      kinds.push(kind);
      if (kind === "progress") last = ev.progress;
      if (kind === "done") { stop(); resolve(); }
    }, { onError: reject });
  });
  assert.equal(kinds[0], "snapshot");
  assert.equal(kinds.at(-1), "done");
  assert.ok(kinds.includes("progress") && kinds.includes("memory"), kinds.join(","));
  assert.equal(last.processed, 2000);

  const job = await mv.getJob(s.id);
  assert.equal(job.status, "completed");
  assert.equal(job.progress.percent, 100);
  assert.ok(isFinished(job.status));

  const list = await mv.listJobs({ status: ["completed"], limit: 500 });
  assert.ok(list.jobs.some((j) => j.id === s.id));
});

test("pause, resume, cancel and retryFailed are state transitions", async () => {
  const s = spec(100000);
  await mv.createJob(s);
  await until(async () => { const j = await mv.getJob(s.id); return j.status === "running" && j.progress.processed > 0; }, "running with progress");
  const paused = await mv.pause(s.id);
  assert.equal(paused.status, "paused");
  assert.ok(paused.job.progress.processed > 0);
  const resumed = await mv.resume(s.id);
  assert.ok(["queued", "running"].includes(resumed.status));
  const cancelled = await mv.cancel(s.id);
  assert.equal(cancelled.status, "cancelled");

  await assert.rejects(mv.resume(s.id), (e) => e instanceof MemvisorError && e.status === 409 && e.code === "conflict");
  await assert.rejects(mv.retryFailed(s.id), (e) => e.status === 409);
  await mv.deleteJob(s.id);
  await assert.rejects(mv.getJob(s.id), (e) => e.status === 404);
});

test("bad input comes back as per-field errors", async () => {
  await assert.rejects(mv.createJob({ ...spec(10), batch_size: 0, bogus: true }), (e) => {
    assert.equal(e.status, 400);
    assert.ok(e.fields.length > 0);
    return true;
  });
  await assert.rejects(mv.createJob({ ...spec(10), batch_size: 0 }), (e) => e.status === 400 && e.fields.some((f) => f.field === "batch_size"));
  const s = spec(100000);
  await mv.createJob(s);
  await assert.rejects(mv.createJob({ ...s, id: s.id + "-again" }), (e) => e.status === 409 && e.code === "active_pair");
  await mv.cancel(s.id);
});

test("the supervisor confines targets to its data root", { skip: !dataRoot && "MEMVISOR_DATA_ROOT is not set" }, async () => {
  const outside = mkdtempSync(join(tmpdir(), "memvisor-outside-"));
  for (const path of [join(outside, "out.jsonl"), join(dataRoot, "..", "registry.db"), join(dataRoot, "..", "escape.jsonl")]) {
    await assert.rejects(
      mv.createJob(spec(10, { target: { type: "jsonl", path } })),
      (e) => e.status === 400 && e.fields.some((f) => f.field === "target.path"),
      path,
    );
  }
  assert.ok(!existsSync(join(outside, "out.jsonl")), "nothing is written outside the data root");
  assert.ok(!existsSync(join(dataRoot, "..", "escape.jsonl")), "nothing is written in the state directory");
});

test("the supervisor refuses what a cross-site page could send", async () => {
  const post = (headers, body = JSON.stringify(spec(10))) =>
    fetch(url + "/v1/jobs", { method: "POST", headers: { Authorization: "Bearer " + token, ...headers }, body });
  let res = await post({ "Content-Type": "text/plain" });
  assert.equal(res.status, 415);
  assert.equal((await res.json()).error.code, "unsupported_media_type");
  res = await post({ "Content-Type": "application/json", Origin: "https://evil.example", "Sec-Fetch-Site": "cross-site" });
  assert.equal(res.status, 403);
  assert.equal((await res.json()).error.code, "cross_origin");
  // Exact-case keys only: "Source" is not "source".
  const { source, ...rest } = spec(10);
  await assert.rejects(mv.createJob({ ...rest, Source: source }), (e) => e.status === 400 && e.fields.some((f) => f.field === "Source"));
});

test("a wrong token is refused", async () => {
  const bad = createClient({ baseUrl: url, token: token + "x" });
  await assert.rejects(bad.listJobs(), (e) => e.status === 401 && e.code === "unauthorized");
});

test("the route handler proxies the page's routes with the token kept server side", async () => {
  const seen = [];
  const proxy = makeProxy({
    config: { url, token, dataRoot: dir },
    fetchImpl: (u, init) => { seen.push(init.headers.get("authorization")); return fetch(u, init); },
  });
  const call = (method, path, body) => proxy(
    new Request("http://app.local/api/memvisor/" + path, {
      method, body: body && JSON.stringify(body), headers: body ? { "content-type": "application/json" } : {},
    }),
    { params: Promise.resolve({ path: path.split("?")[0].split("/") }) },
  );
  // The shape the page sends.
  const s = {
    source: { type: "synthetic", count: 300, seed: 3 },
    target: { type: "jsonl", path: join(dir, "proxied.jsonl") },
    match: { source_field: "email", target_field: "email" },
    batch_size: 50,
    inject: { slow_batch: "5ms" },
  };
  let res = await call("POST", "v1/jobs", s);
  assert.equal(res.status, 201);
  const { id } = await res.json();
  assert.equal(seen.at(-1), "Bearer " + token);

  // The browser side: EventSource through the proxy, no token.
  class FetchEventSource {
    constructor(u) {
      this.listeners = {};
      this.ctl = new AbortController();
      const path = new URL(u).pathname.replace(/^\/api\/memvisor\//, "");
      call("GET", path).then(async (r) => {
        for await (const [kind, data] of readEvents(r.body)) {
          for (const fn of this.listeners[kind] || []) fn({ data: JSON.stringify(data) });
        }
      }).catch(() => {});
    }
    addEventListener(k, fn) { (this.listeners[k] ||= []).push(fn); }
    close() { this.ctl.abort(); }
  }
  const browser = createClient({ baseUrl: "http://app.local/api/memvisor", EventSource: FetchEventSource });
  const done = await new Promise((resolve) => browser.subscribe(id, (kind, ev) => { if (kind === "done") resolve(ev); }));
  assert.equal(done.view.status, "completed");
  assert.equal(done.view.progress.percent, 100);

  // A finished job cannot be paused: the API's own 409 passes through.
  res = await call("POST", `v1/jobs/${id}/pause`);
  assert.equal(res.status, 409);
  assert.equal((await res.json()).error.code, "conflict");

  // Routes the page does not use do not pass.
  for (const [method, path, want] of [["GET", "metrics", 404], ["GET", "v1/jobs/" + id, 404], ["GET", "v1/jobs", 405], ["GET", `v1/jobs/${id}/failed`, 404]]) {
    res = await call(method, path);
    assert.equal(res.status, want, `${method} ${path}`);
    assert.ok(!(await res.text()).includes(token), "no token in what the browser gets");
  }
});
