"use client";
// The migration panel: a form that starts a job, a live view fed by the
// job's Server-Sent Events, and the pause, resume and cancel buttons. Every
// call goes to this app's /api/memvisor/*, never to the supervisor.

import { useEffect, useRef, useState } from "react";
import { createClient, isFinished } from "../memvisor.mjs";

const HISTORY = 240; // memory samples kept for the chart

let mv;
// The client is made in the browser only (it uses EventSource there).
const client = () => (mv ||= createClient({ baseUrl: "/api/memvisor" }));

function bytes(n) {
  if (!n) return "0 B";
  const u = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function Chart({ points, budget }) {
  const w = 800;
  const h = 120;
  if (points.length < 2) {
    return (
      <svg viewBox={`0 0 ${w} ${h}`} data-testid="chart" data-points={points.length}>
        <text x={w / 2} y={h / 2} textAnchor="middle" fill="#5d6875" fontSize="13">
          waiting for memory samples
        </text>
      </svg>
    );
  }
  // Scaled to the samples: a budget far above them (the host's RAM when
  // the job sets no limit) would flatten the lines, so its line is drawn
  // only when it is in range.
  const top = Math.max(...points.map((p) => Math.max(p.rss, p.heap))) * 1.25 || 1;
  const t0 = points[0].t;
  const span = Math.max(1, points[points.length - 1].t - t0);
  const x = (t) => ((t - t0) / span) * w;
  const y = (v) => h - (v / top) * h;
  const line = (k) => points.map((p) => `${x(p.t).toFixed(1)},${y(p[k]).toFixed(1)}`).join(" ");
  return (
    <svg viewBox={`0 0 ${w} ${h}`} preserveAspectRatio="none" data-testid="chart" data-points={points.length}>
      {budget && budget <= top ? <line x1="0" x2={w} y1={y(budget)} y2={y(budget)} stroke="#c0392b" strokeDasharray="6 4" /> : null}
      <polyline points={line("heap")} fill="none" stroke="#8fb3e8" strokeWidth="1.5" />
      <polyline points={line("rss")} fill="none" stroke="#2364c9" strokeWidth="2" />
    </svg>
  );
}

export default function Migration({ dataRoot }) {
  const [form, setForm] = useState({ count: 20000, target: `${dataRoot}/nextjs-demo.jsonl`, throttle: 0 });
  const [jobId, setJobId] = useState("");
  const [view, setView] = useState(null);
  const [progress, setProgress] = useState(null);
  const [memory, setMemory] = useState(null);
  const [points, setPoints] = useState([]);
  const [progressEvents, setProgressEvents] = useState(0);
  const [stream, setStream] = useState("idle");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const [ready, setReady] = useState(false);
  const stopRef = useRef(null);

  // Reattach to the job named in the address after a reload.
  useEffect(() => {
    setReady(true);
    const id = new URLSearchParams(window.location.search).get("job");
    if (id) setJobId(id);
  }, []);

  // Follow the job's events while there is one.
  useEffect(() => {
    if (!jobId) return undefined;
    setStream("connecting");
    const stop = client().subscribe(
      jobId,
      (kind, ev) => {
        setStream(kind === "done" ? "closed" : "open");
        switch (kind) {
          case "snapshot":
            setView(ev.view);
            setProgress(ev.view.progress);
            setMemory(ev.view.memory);
            setPoints((ev.history || []).slice(-HISTORY));
            break;
          case "progress":
            setProgress(ev.progress);
            setProgressEvents((n) => n + 1);
            break;
          case "memory":
            setMemory((m) => ({ ...m, ...ev.memory }));
            setPoints((ps) => [...ps, { t: Date.parse(ev.time), rss: ev.memory.rss, heap: ev.memory.heap, budget: ev.memory.budget }].slice(-HISTORY));
            break;
          case "status":
          case "done":
            setView(ev.view);
            setProgress(ev.view.progress);
            break;
          default:
        }
      },
      { onError: () => setStream((s) => (s === "closed" ? s : "reconnecting")) },
    );
    stopRef.current = stop;
    return () => stop();
  }, [jobId]);

  async function start(e) {
    e.preventDefault();
    setError(null);
    setBusy(true);
    const spec = {
      source: { type: "synthetic", count: Number(form.count), seed: 1 },
      target: { type: "jsonl", path: form.target },
      match: { source_field: "email", target_field: "email" },
      batch_size: 50,
    };
    if (Number(form.throttle) > 0) spec.inject = { slow_batch: `${Number(form.throttle)}ms` };
    try {
      const created = await client().createJob(spec);
      if (stopRef.current) stopRef.current();
      setView({ id: created.id, status: created.status });
      setProgress(null);
      setMemory(null);
      setPoints([]);
      setProgressEvents(0);
      setJobId(created.id);
      window.history.replaceState(null, "", `?job=${encodeURIComponent(created.id)}`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  async function act(action) {
    setError(null);
    setBusy(true);
    try {
      const res = await client()[action](jobId);
      setView(res.job);
      setProgress(res.job.progress);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  const status = (view && view.status) || "";
  const running = status === "running" || status === "queued";
  const finished = isFinished(status);
  const pct = progress ? progress.percent : 0;
  const set = (k) => (e) => setForm({ ...form, [k]: e.target.value });

  return (
    <>
      <section>
        <h2>New migration</h2>
        <form onSubmit={start} id="start-form" data-ready={ready}>
          <label htmlFor="count">Synthetic items</label>
          <input id="count" type="number" min="1" max="10000000" value={form.count} onChange={set("count")} required />
          <label htmlFor="target">Target (JSON Lines)</label>
          <input id="target" className="mono" value={form.target} onChange={set("target")} required />
          <span className="hint">A file beneath {dataRoot}, the supervisor&apos;s data root.</span>
          <label htmlFor="throttle">Delay per batch (ms)</label>
          <input id="throttle" type="number" min="0" max="1000" value={form.throttle} onChange={set("throttle")} />
          <span className="hint">Slows the job down to watch it; needs a supervisor that allows fault injection.</span>
          <span />
          <div className="row">
            <button id="start" type="submit" disabled={busy || running}>
              Start migration
            </button>
          </div>
        </form>
      </section>

      {error ? (
        <section className="error" id="error" role="alert">
          {error.message}
          {(error.fields || []).map((f) => `\n${f.field}: ${f.message}`).join("")}
          {(error.fields || []).some((f) => f.field === "inject")
            ? "\nSet the delay per batch to 0: this supervisor does not allow fault injection."
            : ""}
        </section>
      ) : null}

      {jobId ? (
        <section id="job" data-job={jobId} data-status={status} data-progress-events={progressEvents} data-stream={stream}>
          <h2>
            Job <span className="mono" id="job-id">{jobId}</span>{" "}
            <span id="status" className={`status ${status}`}>
              {status || "…"}
            </span>
          </h2>
          <div className={`bar ${status}`}>
            <div id="bar" data-percent={pct} style={{ width: `${pct}%` }} />
          </div>
          <dl>
            <dt>Progress</dt>
            <dt>Processed</dt>
            <dt>Created</dt>
            <dt>Failed</dt>
            <dd id="percent">{pct.toFixed(1)}%</dd>
            <dd id="processed">
              {progress ? progress.processed.toLocaleString("en") : 0}
              {progress && progress.total_known ? ` / ${progress.total.toLocaleString("en")}` : ""}
            </dd>
            <dd id="created">{progress ? progress.created.toLocaleString("en") : 0}</dd>
            <dd id="failed">{progress ? progress.failed.toLocaleString("en") : 0}</dd>
            <dt>Runner RSS</dt>
            <dt>Go heap</dt>
            <dt>Budget</dt>
            <dt>Level</dt>
            <dd id="rss">{bytes(memory && memory.rss)}</dd>
            <dd id="heap">{bytes(memory && memory.heap)}</dd>
            <dd id="budget">{bytes(memory && memory.budget)}</dd>
            <dd id="level">{(memory && memory.level) || "–"}</dd>
          </dl>
          <h2 style={{ marginTop: 16 }}>Runner memory (RSS dark, Go heap light)</h2>
          <Chart points={points} budget={memory && memory.budget} />
          <div className="row" style={{ marginTop: 12 }}>
            <button id="pause" className="secondary" disabled={busy || !running} onClick={() => act("pause")}>
              Pause
            </button>
            <button id="resume" className="secondary" disabled={busy || status !== "paused"} onClick={() => act("resume")}>
              Resume
            </button>
            <button id="cancel" className="danger" disabled={busy || finished || !status} onClick={() => act("cancel")}>
              Cancel
            </button>
            <span className="mono" style={{ color: "#5d6875" }}>
              events: {stream}
            </span>
          </div>
          {view && view.reason ? <p id="reason">{view.reason}</p> : null}
        </section>
      ) : null}
    </>
  );
}
