// The server half of the example: a proxy from the app's
// /api/memvisor/* to the supervisor's API, used by
// app/api/memvisor/[...path]/route.js. It holds the bearer token, so the
// browser never sees it, and it lets through only what the page needs:
//
//   POST /v1/jobs                 start a migration (a narrow spec shape)
//   GET  /v1/jobs/{id}/events     live progress and memory (SSE)
//   POST /v1/jobs/{id}/pause      \
//   POST /v1/jobs/{id}/resume      > the three buttons
//   POST /v1/jobs/{id}/cancel     /
//
// Any other path is 404 and any other method 405. A visitor's cookies,
// Origin, Host, Referer and Authorization never reach the supervisor: the
// proxy builds each upstream request from scratch. It is written against
// the web-standard Request and Response, so node --test runs it outside
// Next.js (test/proxy.test.mjs).

import { readFileSync } from "node:fs";
import { posix } from "node:path";

/** The largest request body the proxy reads; a job spec is far smaller. */
export const MAX_BODY_BYTES = 16 << 10;

const ID = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}";

/** The routes the page uses, by method and path. */
export const ROUTES = [
  { method: "POST", re: /^\/v1\/jobs$/, body: "spec" },
  { method: "GET", re: new RegExp(`^/v1/jobs/${ID}/events$`), stream: true },
  { method: "POST", re: new RegExp(`^/v1/jobs/${ID}/(pause|resume|cancel)$`) },
];

/**
 * Reads the proxy's settings from the environment:
 *   MEMVISOR_URL         the supervisor (default http://127.0.0.1:7411)
 *   MEMVISOR_TOKEN       its bearer token, or
 *   MEMVISOR_TOKEN_FILE  a file that holds it (e.g. <state_dir>/api-token)
 *   MEMVISOR_DATA_ROOT   when set, targets must lie beneath it
 */
export function configFromEnv(env = process.env) {
  let token = env.MEMVISOR_TOKEN || "";
  if (!token && env.MEMVISOR_TOKEN_FILE) {
    token = readFileSync(env.MEMVISOR_TOKEN_FILE, "utf8").trim();
  }
  return {
    url: env.MEMVISOR_URL || "http://127.0.0.1:7411",
    token,
    dataRoot: env.MEMVISOR_DATA_ROOT || "",
  };
}

function fail(status, code, message, fields, headers) {
  return Response.json(
    { error: { code, message, ...(fields ? { fields } : {}) } },
    { status, headers: { "Cache-Control": "no-store", ...headers } },
  );
}

/** Matches a path and method against ROUTES: [route, status]. */
export function match(method, path) {
  const routes = ROUTES.filter((r) => r.re.test(path));
  if (routes.length === 0) return [null, 404];
  const route = routes.find((r) => r.method === method);
  if (!route) return [null, 405, [...new Set(routes.map((r) => r.method))].join(", ")];
  return [route, 200];
}

// readBody reads at most limit bytes, and reports a longer body as null
// without reading the rest.
async function readBody(request, limit) {
  const declared = Number(request.headers.get("content-length") || "0");
  if (declared > limit) return null;
  if (!request.body) return "";
  const reader = request.body.getReader();
  const chunks = [];
  let n = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    n += value.byteLength;
    if (n > limit) {
      await reader.cancel();
      return null;
    }
    chunks.push(value);
  }
  return new TextDecoder("utf-8", { fatal: true }).decode(Buffer.concat(chunks));
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const isInt = (v, lo, hi) => Number.isInteger(v) && v >= lo && v <= hi;

/**
 * Checks that a spec has the shape the page sends: a synthetic source into
 * a jsonl target. The supervisor validates the spec again, and confines
 * the target to its allowed roots; this check keeps a visitor from using
 * the proxy for anything else (another source type, credentials, fault
 * injection beyond a bounded slowdown). It returns field errors.
 */
export function checkSpec(spec, { dataRoot = "" } = {}) {
  const errs = [];
  const bad = (field, message) => errs.push({ field, message });
  const only = (obj, prefix, keys) => {
    for (const k of Object.keys(obj)) if (!keys.includes(k)) bad(prefix + k, "is not accepted by this app");
  };
  if (!isObject(spec)) return [{ field: "", message: "must be a JSON object" }];
  only(spec, "", ["id", "source", "target", "match", "batch_size", "inject"]);
  if (spec.id !== undefined && (typeof spec.id !== "string" || !new RegExp(`^${ID}$`).test(spec.id))) {
    bad("id", "must be 1-128 letters, digits, '.', '_' or '-'");
  }
  if (!isObject(spec.source) || spec.source.type !== "synthetic") {
    bad("source.type", "must be synthetic");
  } else {
    only(spec.source, "source.", ["type", "count", "seed"]);
    if (!isInt(spec.source.count, 1, 10_000_000)) bad("source.count", "must be an integer from 1 to 10000000");
    if (spec.source.seed !== undefined && !isInt(spec.source.seed, 0, 2 ** 31)) bad("source.seed", "must be a non-negative integer");
  }
  if (!isObject(spec.target) || spec.target.type !== "jsonl") {
    bad("target.type", "must be jsonl");
  } else {
    only(spec.target, "target.", ["type", "path"]);
    const p = spec.target.path;
    if (typeof p !== "string" || !p.startsWith("/") || posix.normalize(p) !== p || p.endsWith("/") || p.length > 1024) {
      bad("target.path", "must be an absolute, normalized file path");
    } else if (dataRoot && !p.startsWith(posix.normalize(dataRoot).replace(/\/?$/, "/"))) {
      bad("target.path", `must be beneath ${dataRoot}`);
    }
  }
  if (spec.match !== undefined) {
    if (!isObject(spec.match)) bad("match", "must be an object");
    else {
      only(spec.match, "match.", ["source_field", "target_field"]);
      for (const k of ["source_field", "target_field"]) {
        if (spec.match[k] !== undefined && (typeof spec.match[k] !== "string" || !/^[A-Za-z0-9_.-]{1,64}$/.test(spec.match[k]))) {
          bad("match." + k, "must be a field name");
        }
      }
    }
  }
  if (spec.batch_size !== undefined && !isInt(spec.batch_size, 1, 10_000)) bad("batch_size", "must be an integer from 1 to 10000");
  if (spec.inject !== undefined) {
    if (!isObject(spec.inject)) bad("inject", "must be an object");
    else {
      only(spec.inject, "inject.", ["slow_batch"]);
      const m = typeof spec.inject.slow_batch === "string" && /^(\d{1,4})ms$/.exec(spec.inject.slow_batch);
      if (!m || Number(m[1]) > 1000) bad("inject.slow_batch", "must be a duration from 0ms to 1000ms");
    }
  }
  return errs;
}

/**
 * Builds the route handler. Settings default to configFromEnv(), read on
 * the first request (so that `next build` needs none of them).
 */
export function makeProxy({ config, fetchImpl = (...a) => fetch(...a) } = {}) {
  let cfg = config;
  return async function proxy(request, ctx) {
    if (!cfg) {
      try {
        cfg = configFromEnv();
      } catch (err) {
        return fail(500, "config", "the memvisor token file cannot be read: " + err.code);
      }
    }
    const params = ctx && ctx.params ? await ctx.params : {};
    const segs = params.path || [];
    // The segments arrive decoded; anything that could change the path
    // once encoded again (a slash, a dot segment) fails the route match.
    const path = "/" + segs.map((s) => (s === "." || s === ".." ? "\0" : s)).join("/");
    const [route, status, allow] = match(request.method, path);
    if (status === 404) return fail(404, "not_found", "not a route of this app");
    if (status === 405) return fail(405, "method_not_allowed", `use ${allow}`, null, { Allow: allow });
    if (new URL(request.url).search) return fail(400, "bad_request", "no query parameters are accepted");

    const headers = new Headers({ Accept: route.stream ? "text/event-stream" : "application/json" });
    if (cfg.token) headers.set("Authorization", "Bearer " + cfg.token);
    const init = { method: route.method, headers, signal: request.signal, redirect: "manual" };
    if (route.method === "POST") {
      const ct = (request.headers.get("content-type") || "").split(";")[0].trim().toLowerCase();
      let text;
      try {
        text = await readBody(request, MAX_BODY_BYTES);
      } catch {
        return fail(400, "bad_request", "the body is not UTF-8");
      }
      if (text === null) return fail(413, "too_large", `the body is larger than ${MAX_BODY_BYTES} bytes`);
      if (route.body === "spec") {
        if (ct !== "application/json") return fail(415, "unsupported_media_type", "send Content-Type: application/json");
        let spec;
        try {
          spec = JSON.parse(text);
        } catch {
          return fail(400, "bad_json", "the body is not JSON");
        }
        const errs = checkSpec(spec, cfg);
        if (errs.length) return fail(400, "invalid_spec", "the job is not one this app starts", errs);
        init.body = JSON.stringify(spec);
      } else if (text.trim() !== "" && text.trim() !== "{}") {
        return fail(400, "bad_request", "this route takes no body");
      } else {
        init.body = "{}";
      }
      headers.set("Content-Type", "application/json");
    }
    let upstream;
    try {
      upstream = await fetchImpl(cfg.url.replace(/\/+$/, "") + path, init);
    } catch (err) {
      if (request.signal && request.signal.aborted) return new Response(null, { status: 499 });
      return fail(502, "unavailable", "the memvisor supervisor does not answer");
    }
    // Pass through only the answer's type; an event stream must not be
    // buffered or transformed on its way.
    const out = new Headers({ "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff" });
    const type = upstream.headers.get("content-type") || "";
    if (route.stream && upstream.ok) {
      if (!type.startsWith("text/event-stream")) {
        await upstream.body?.cancel();
        return fail(502, "bad_upstream", "the supervisor did not answer with an event stream");
      }
      out.set("Content-Type", "text/event-stream");
      out.set("Cache-Control", "no-cache, no-transform");
      out.set("X-Accel-Buffering", "no");
    } else if (type.startsWith("application/json")) {
      out.set("Content-Type", "application/json");
    } else {
      await upstream.body?.cancel();
      return fail(502, "bad_upstream", `the supervisor answered ${upstream.status} without JSON`);
    }
    return new Response(upstream.body, { status: upstream.status, headers: out });
  };
}
