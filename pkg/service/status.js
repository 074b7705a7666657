"use strict";
const $ = (s, el = document) => el.querySelector(s);
// The token comes from the address (…/#token=<token>, which the browser
// never sends to the server), else from this tab's session storage, else
// from a prompt.
let token = sessionStorage.getItem("memvisor-token") || "";
{
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    token = decodeURIComponent(m[1]);
    sessionStorage.setItem("memvisor-token", token);
    history.replaceState(null, "", location.pathname + location.search);
  }
}
const jobs = new Map(); // id -> {el, view, hist, markers, stream}

function headers(extra = {}) {
  const h = { ...extra };
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function api(method, path, body) {
  const opt = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) opt.body = body;
  const res = await fetch(path, opt);
  if (res.status === 401) {
    const t = prompt("This memvisor needs its API token:");
    if (t) { token = t.trim(); sessionStorage.setItem("memvisor-token", token); return api(method, path, body); }
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: { message: text } }; }
  if (!res.ok) {
    const e = data && data.error ? data.error : { message: res.statusText };
    const fields = (e.fields || []).map(f => (f.field ? f.field + ": " : "") + f.message).join("\n");
    throw new Error(e.message + (fields ? "\n" + fields : ""));
  }
  return data;
}

function fmtBytes(n) {
  if (!n) return "0";
  const u = ["B", "KiB", "MiB", "GiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + u[i];
}
function fmtETA(s) {
  if (s == null) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), sec = s % 60;
  return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(sec).padStart(2, "0")}s` : `${sec}s`;
}
const finished = s => s === "completed" || s === "failed" || s === "cancelled";

function card(id) {
  let j = jobs.get(id);
  if (j) return j;
  const el = document.createElement("div");
  el.className = "job"; el.dataset.job = id;
  el.innerHTML = `
    <div class="head"><span class="id"></span><span class="status"></span><span class="meta route"></span>
      <span class="buttons">
        <button data-act="pause">Pause</button><button data-act="resume">Resume</button>
        <button data-act="cancel">Cancel</button><button data-act="retry-failed">Retry failed</button>
      </span></div>
    <div class="barwrap"><div class="bar" data-percent="0"></div></div>
    <div class="figures">
      <span><b class="pct">0%</b> <span class="counts"></span></span>
      <span>rate <b class="rate">–</b>/s</span><span>ETA <b class="eta">–</b></span>
      <span class="mem">RSS <b class="rss">–</b> / budget <b class="budget">–</b> · level <b class="level">ok</b></span>
      <span>restarts <b class="restarts">0</b> · GC <b class="gcs">0</b></span>
    </div>
    <div class="reason"></div>
    <canvas width="1000" height="160"></canvas>
    <div class="legend"><span><i class="sw rss"></i>RSS</span><span><i class="sw heap"></i>heap</span>
      <span><i class="sw budget"></i>budget</span><span><i class="sw warning"></i>warning</span>
      <span><i class="sw critical"></i>critical</span><span class="mark-gc">▼</span><span>GC request</span><span class="mark-restart">■</span><span>restart</span></div>`;
  $(".id", el).textContent = id;
  el.addEventListener("click", async ev => {
    const act = ev.target.dataset && ev.target.dataset.act;
    if (!act) return;
    ev.target.disabled = true;
    try { const r = await api("POST", `/v1/jobs/${encodeURIComponent(id)}/${act}`); render(id, r.job); watch(id); }
    catch (e) { $(".reason", el).textContent = e.message; }
    finally { refresh(); }
  });
  const list = $("#jobs");
  const empty = $(".empty", list); if (empty) empty.remove();
  list.prepend(el);
  j = { el, view: null, hist: [], markers: [], stream: null };
  jobs.set(id, j);
  return j;
}

function render(id, v) {
  if (!v) return;
  const j = card(id); j.view = v;
  const el = j.el;
  el.className = "job " + v.status;
  const st = $(".status", el); st.textContent = v.status; st.className = "status " + v.status;
  $(".route", el).textContent = `${v.source.type}${v.source.path ? " " + v.source.path : ""} → ${v.target.type}${v.target.path ? " " + v.target.path : v.target.app_id ? " app " + v.target.app_id : ""}${v.dry_run ? " (dry run)" : ""}`;
  const p = v.progress, pct = Math.round(p.percent * 10) / 10;
  const bar = $(".bar", el); bar.style.width = pct + "%"; bar.dataset.percent = String(pct);
  $(".pct", el).textContent = pct + "%";
  $(".counts", el).textContent = `${p.processed}${p.total_known ? " / " + p.total : ""} · created ${p.created} · updated ${p.updated} · skipped ${p.skipped} · failed ${p.failed}`;
  $(".rate", el).textContent = v.throughput.items_per_s ? Math.round(v.throughput.items_per_s) : "–";
  $(".eta", el).textContent = v.status === "running" ? fmtETA(v.throughput.eta) : "–";
  renderMemory(j, v.memory);
  const r = v.restarts; $(".restarts", el).textContent = r.graceful + r.crash + r.hang + r.kill;
  $(".gcs", el).textContent = v.gc_requests;
  $(".reason", el).textContent = v.status === "failed" || v.last_error ? (v.reason || v.last_error || "") : "";
  const can = { pause: ["running", "queued"], resume: ["paused", "failed"], cancel: ["running", "queued", "paused"], "retry-failed": ["completed", "failed"] };
  el.querySelectorAll("button[data-act]").forEach(b => {
    b.disabled = !can[b.dataset.act].includes(v.status) || (b.dataset.act === "retry-failed" && !p.failed);
  });
  $("canvas", el).style.display = j.hist.length || v.status === "running" ? "block" : "none";
}

function renderMemory(j, m) {
  if (!m) return;
  const el = j.el;
  if (m.rss) $(".rss", el).textContent = fmtBytes(m.rss);
  if (m.budget) $(".budget", el).textContent = fmtBytes(m.budget);
  const lv = $(".level", el); lv.textContent = m.level || "ok"; lv.className = "level level-" + (m.level || "ok");
  if (m.budget) j.budget = m.budget;
  if (m.warning) j.warning = m.warning;
  if (m.critical) j.critical = m.critical;
  j.dirty = true;
}

function draw(j) {
  const c = $("canvas", j.el), g = c.getContext("2d");
  const W = c.width, H = c.height;
  g.clearRect(0, 0, W, H);
  const hist = j.hist;
  if (!hist.length) return;
  const budget = j.budget || hist[hist.length - 1].budget || 1;
  const top = Math.max(budget * 1.05, ...hist.map(p => p.rss));
  const t1 = hist[hist.length - 1].t, t0 = Math.min(hist[0].t, t1 - 1000);
  const x = t => (t - t0) / (t1 - t0) * (W - 10) + 5;
  const y = v => H - 4 - v / top * (H - 14);
  const hline = (v, color, dash) => {
    if (!v) return;
    g.strokeStyle = color; g.setLineDash(dash); g.lineWidth = 1;
    g.beginPath(); g.moveTo(0, y(v)); g.lineTo(W, y(v)); g.stroke(); g.setLineDash([]);
  };
  hline(budget, "#000", []);
  hline(j.warning, getComputedStyle(document.body).getPropertyValue("--warn"), [6, 4]);
  hline(j.critical, getComputedStyle(document.body).getPropertyValue("--crit"), [6, 4]);
  const line = (key, color) => {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    hist.forEach((p, i) => i ? g.lineTo(x(p.t), y(p[key])) : g.moveTo(x(p.t), y(p[key])));
    g.stroke();
  };
  line("heap", "#8e24aa");
  line("rss", "#1976d2");
  for (const mk of j.markers) {
    if (mk.t < t0) continue;
    const X = x(mk.t);
    if (mk.kind === "gc") { g.fillStyle = "#ef6c00"; g.beginPath(); g.moveTo(X, H - 2); g.lineTo(X - 5, H - 11); g.lineTo(X + 5, H - 11); g.fill(); }
    if (mk.kind === "restart") {
      g.strokeStyle = "#c62828"; g.setLineDash([2, 2]); g.beginPath(); g.moveTo(X, 0); g.lineTo(X, H); g.stroke(); g.setLineDash([]);
      g.fillStyle = "#c62828"; g.fillRect(X - 4, 2, 8, 8);
    }
  }
}

function onEvent(id, kind, d) {
  const j = card(id);
  switch (kind) {
    case "snapshot":
      j.hist = d.history || []; j.markers = d.markers || [];
      render(id, d.view); break;
    case "status": case "done":
      render(id, d.view); break;
    case "progress":
      if (j.view) { j.view.progress = d.progress; j.view.throughput = d.throughput; render(id, j.view); }
      break;
    case "memory":
      j.hist.push({ t: Date.parse(d.time), rss: d.memory.rss, heap: d.memory.heap, budget: d.memory.budget });
      if (j.hist.length > 600) j.hist.shift();
      renderMemory(j, d.memory); break;
    case "level": case "gc": case "restart":
      j.markers.push({ t: Date.parse(d.time), kind, label: d.level || d.restart_kind, reason: d.reason });
      if (d.memory) renderMemory(j, d.memory);
      if (kind === "restart" && j.view) { j.view.restarts[d.restart_kind] = (j.view.restarts[d.restart_kind] || 0) + 1; render(id, j.view); }
      if (kind === "gc" && j.view) { j.view.gc_requests++; render(id, j.view); }
      break;
  }
  j.dirty = true;
}

// Server-Sent Events over fetch, so that the stream can carry the bearer
// token (EventSource cannot send headers).
async function watch(id) {
  const j = card(id);
  if (j.stream) return;
  const ctl = new AbortController(); j.stream = ctl;
  try {
    const res = await fetch(`/v1/jobs/${encodeURIComponent(id)}/events`, { headers: headers(), signal: ctl.signal });
    if (!res.ok) throw new Error("events: " + res.status);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, i); buf = buf.slice(i + 2);
        let kind = "message", data = "";
        for (const line of frame.split("\n")) {
          if (line.startsWith("event: ")) kind = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (data) onEvent(id, kind, JSON.parse(data));
      }
    }
  } catch (e) {
    if (e.name === "AbortError") return;
  } finally {
    j.stream = null;
  }
  if (j.view && !finished(j.view.status)) setTimeout(() => watch(id), 1000);
}

async function refresh() {
  try {
    let cursor = null, all = [];
    do {
      const page = await api("GET", "/v1/jobs?limit=200" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
      all = all.concat(page.jobs); cursor = page.next_cursor;
    } while (cursor);
    for (const v of all) {
      render(v.id, v);
      if (!finished(v.status)) watch(v.id);
    }
    for (const id of [...jobs.keys()]) if (!all.find(v => v.id === id)) { jobs.get(id).el.remove(); jobs.delete(id); }
    $("#conn").textContent = "connected · " + all.filter(v => v.status === "running").length + " running";
  } catch (e) {
    $("#conn").textContent = "disconnected: " + e.message;
  }
}

$("#start").addEventListener("click", async () => {
  $("#msg").textContent = "";
  try {
    const r = await api("POST", "/v1/jobs", $("#spec").value);
    await refresh(); watch(r.id);
  } catch (e) { $("#msg").textContent = e.message; }
});

function frame() {
  for (const j of jobs.values()) if (j.dirty) { j.dirty = false; draw(j); }
  requestAnimationFrame(frame);
}
requestAnimationFrame(frame);
refresh();
setInterval(refresh, 3000);
