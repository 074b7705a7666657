// memvisor.mjs: a dependency-free client for the memvisor supervisor's
// HTTP API v1 (see pkg/service/openapi.json). It runs in Node.js 18+ and in
// browsers. On the server, give it the supervisor's URL and token; in the
// browser, point it at a same-origin proxy (app/api/memvisor/[...path]) so
// the token never leaves the server.

/** An error response of the API. */
export class MemvisorError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `memvisor: HTTP ${status}`);
    this.name = "MemvisorError";
    this.status = status;
    this.code = e.code || "http_" + status;
    this.fields = e.fields || [];
  }
}

const FINISHED = new Set(["completed", "failed", "cancelled"]);

/** Reports whether a job status is an end state. */
export function isFinished(status) {
  return FINISHED.has(status);
}

/**
 * Creates a client.
 * @param {{baseUrl?: string, token?: string, fetch?: typeof fetch, EventSource?: any}} [opts]
 */
export function createClient(opts = {}) {
  const baseUrl = (opts.baseUrl || "").replace(/\/+$/, "");
  const token = opts.token || "";
  const doFetch = opts.fetch || globalThis.fetch.bind(globalThis);
  const ES = opts.EventSource === undefined ? globalThis.EventSource : opts.EventSource;

  const headers = (extra) => {
    const h = { Accept: "application/json", ...extra };
    if (token) h.Authorization = "Bearer " + token;
    return h;
  };

  async function call(method, path, body, signal) {
    const res = await doFetch(baseUrl + path, {
      method,
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
      signal,
    });
    if (res.status === 204) return null;
    const text = await res.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = { error: { code: "bad_response", message: text.slice(0, 200) } };
      }
    }
    if (!res.ok) throw new MemvisorError(res.status, data);
    return data;
  }

  const jobPath = (id, suffix = "") => `/v1/jobs/${encodeURIComponent(id)}${suffix}`;

  return {
    /** POST /v1/jobs: returns {id, status}. */
    createJob: (spec, { signal } = {}) => call("POST", "/v1/jobs", spec, signal),
    /** GET /v1/jobs/{id}. */
    getJob: (id, { signal } = {}) => call("GET", jobPath(id), undefined, signal),
    /** GET /v1/jobs: {jobs, next_cursor}. */
    listJobs: ({ status, cursor, limit, signal } = {}) => {
      const q = new URLSearchParams();
      if (status) q.set("status", Array.isArray(status) ? status.join(",") : status);
      if (cursor) q.set("cursor", cursor);
      if (limit) q.set("limit", String(limit));
      const qs = q.toString();
      return call("GET", "/v1/jobs" + (qs ? "?" + qs : ""), undefined, signal);
    },
    pause: (id, { signal } = {}) => call("POST", jobPath(id, "/pause"), undefined, signal),
    resume: (id, { signal } = {}) => call("POST", jobPath(id, "/resume"), undefined, signal),
    cancel: (id, { signal } = {}) => call("POST", jobPath(id, "/cancel"), undefined, signal),
    retryFailed: (id, { signal } = {}) => call("POST", jobPath(id, "/retry-failed"), undefined, signal),
    deleteJob: (id, { signal } = {}) => call("DELETE", jobPath(id), undefined, signal),
    /** GET /v1/jobs/{id}/failed: {items, next_cursor, end_offset}. */
    failedItems: (id, { cursor, limit, signal } = {}) => {
      const q = new URLSearchParams();
      if (cursor) q.set("cursor", cursor);
      if (limit) q.set("limit", String(limit));
      const qs = q.toString();
      return call("GET", jobPath(id, "/failed") + (qs ? "?" + qs : ""), undefined, signal);
    },
    dryRun: (id, { signal } = {}) => call("GET", jobPath(id, "/dry-run"), undefined, signal),

    /**
     * Subscribes to a job's events. onEvent(kind, data) gets "snapshot"
     * first, then progress, memory, level, gc, restart and status events,
     * and "done" last. Returns a function that unsubscribes.
     *
     * It uses EventSource where there is one and no token is needed (a
     * browser talking to the proxy), and otherwise reads the stream with
     * fetch, which can send the bearer token.
     */
    subscribe(id, onEvent, { onError, reconnect = true } = {}) {
      const url = baseUrl + jobPath(id, "/events");
      const kinds = ["snapshot", "progress", "memory", "level", "gc", "restart", "status", "done"];
      if (ES && !token) {
        const es = new ES(url);
        for (const k of kinds) {
          es.addEventListener(k, (ev) => {
            onEvent(k, JSON.parse(ev.data));
            if (k === "done") es.close();
          });
        }
        if (onError) es.onerror = onError;
        return () => es.close();
      }
      const ctl = new AbortController();
      let closed = false;
      const run = async () => {
        while (!closed) {
          let sawDone = false;
          try {
            const res = await doFetch(url, { headers: headers({ Accept: "text/event-stream" }), signal: ctl.signal });
            if (!res.ok) {
              const text = await res.text();
              let body = null;
              try { body = JSON.parse(text); } catch { /* not JSON */ }
              throw new MemvisorError(res.status, body);
            }
            for await (const [kind, data] of readEvents(res.body)) {
              onEvent(kind, data);
              if (kind === "done") sawDone = true;
            }
          } catch (err) {
            if (closed || (err && err.name === "AbortError")) return;
            if (onError) onError(err);
            if (err instanceof MemvisorError && err.status < 500) return;
          }
          if (sawDone || !reconnect) return;
          await new Promise((r) => setTimeout(r, 1000));
        }
      };
      run();
      return () => {
        closed = true;
        ctl.abort();
      };
    },
  };
}

/** Parses a text/event-stream body into [kind, data] pairs. */
export async function* readEvents(body) {
  const decoder = new TextDecoder();
  let buf = "";
  const reader = body.getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let kind = "message";
        const data = [];
        for (const line of frame.split("\n")) {
          if (line.startsWith(":")) continue;
          const c = line.indexOf(":");
          const field = c < 0 ? line : line.slice(0, c);
          let value = c < 0 ? "" : line.slice(c + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "event") kind = value;
          else if (field === "data") data.push(value);
        }
        if (data.length) yield [kind, JSON.parse(data.join("\n"))];
      }
    }
  } finally {
    reader.releaseLock();
  }
}
