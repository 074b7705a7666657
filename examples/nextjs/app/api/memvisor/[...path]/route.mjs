// A Next.js (App Router) Route Handler that proxies /api/memvisor/* to the
// supervisor, adding the bearer token on the server: the browser never sees
// it. Copy it to app/api/memvisor/[...path]/route.js (or .ts) in your app.
// It is written against the web-standard Request/Response only, so it is
// also tested outside Next.js (test/proxy.test.mjs).
//
// Server environment:
//   MEMVISOR_URL    the supervisor, e.g. http://127.0.0.1:7411
//   MEMVISOR_TOKEN  its bearer token (unset on a loopback-only supervisor)
//
// In the browser: createClient({ baseUrl: "/api/memvisor" }).

export const dynamic = "force-dynamic"; // never cache API answers
export const runtime = "nodejs";

// Only the API's own routes pass; anything else is a 404 here.
const ALLOWED = /^v1\/jobs(\/[A-Za-z0-9._-]+(\/(pause|resume|cancel|retry-failed|failed|dry-run|events|heap-profile))?)?$/;

/** Builds the handlers; the exports below use the process environment. */
export function makeProxy({ url = process.env.MEMVISOR_URL || "http://127.0.0.1:7411", token = process.env.MEMVISOR_TOKEN || "", fetchImpl = fetch } = {}) {
  const base = url.replace(/\/+$/, "");
  return async function proxy(request, { params }) {
    const { path = [] } = await params;
    const sub = path.map(encodeURIComponent).join("/");
    if (!ALLOWED.test(sub)) {
      return Response.json({ error: { code: "not_found", message: "not a memvisor API route" } }, { status: 404 });
    }
    const incoming = new URL(request.url);
    const headers = new Headers({ Accept: request.headers.get("accept") || "application/json" });
    const ct = request.headers.get("content-type");
    if (ct) headers.set("Content-Type", ct);
    if (token) headers.set("Authorization", "Bearer " + token);
    const init = { method: request.method, headers, signal: request.signal };
    if (request.method !== "GET" && request.method !== "HEAD") {
      init.body = await request.arrayBuffer();
    }
    let upstream;
    try {
      upstream = await fetchImpl(`${base}/${sub}${incoming.search}`, init);
    } catch {
      return Response.json({ error: { code: "unavailable", message: "the memvisor supervisor does not answer" } }, { status: 502 });
    }
    // Stream the body through (Server-Sent Events included); pass only
    // the headers the client needs.
    const out = new Headers();
    for (const h of ["content-type", "cache-control", "location", "content-disposition"]) {
      const v = upstream.headers.get(h);
      if (v) out.set(h, v);
    }
    return new Response(upstream.body, { status: upstream.status, headers: out });
  };
}

const handler = makeProxy();
export const GET = handler;
export const POST = handler;
export const DELETE = handler;
