// The Route Handler that forwards the page's calls to the supervisor. The
// allow-list, the token and the checks are in lib/proxy.mjs.
import { makeProxy } from "../../../../lib/proxy.mjs";

export const dynamic = "force-dynamic"; // never cache an API answer
export const runtime = "nodejs"; // the token file is read with node:fs

const proxy = makeProxy();

// Only the methods the page uses; Next.js answers 405 to the others.
export const GET = proxy;
export const POST = proxy;
