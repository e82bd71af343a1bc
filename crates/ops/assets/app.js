// chainboot dashboard: reads /api/v1, follows /api/v1/events/stream (Server-Sent Events).
"use strict";
const $ = (s) => document.querySelector(s);
const STAGES = ["firmware-dhcp", "first-stage", "ipxe-dhcp", "script", "kernel", "initrd", "os-callback"];
let machines = [];
let profiles = [];
const timelines = new Map();
const warnings = [];

function text(s) { return s === null || s === undefined || s === "" ? "-" : String(s); }
function ago(ms) {
  if (!ms) return "-";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m ago";
  if (s < 86400) return Math.floor(s / 3600) + "h ago";
  return Math.floor(s / 86400) + "d ago";
}
function td(content, cls) {
  const el = document.createElement("td");
  if (cls) el.className = cls;
  if (content instanceof Node) el.appendChild(content); else el.textContent = text(content);
  return el;
}
async function getJSON(path) {
  const r = await fetch(path, { headers: authHeaders() });
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}
// Lists come in pages of up to 1000 (machines in MAC order, leases by address); follow the
// `after` cursor, the last item's `key`, for at most 50 pages.
async function allPages(path, key) {
  let all = [], after = "";
  for (let i = 0; i < 50; i++) {
    const page = await getJSON(path + (after ? "?after=" + encodeURIComponent(after) : ""));
    if (!page.length) break;
    all = all.concat(page);
    after = page[page.length - 1][key];
  }
  return all;
}
const allMachines = () => allPages("/api/v1/machines", "mac");
const allLeases = () => allPages("/api/v1/leases", "ip");
function token() { return sessionStorage.getItem("chainboot-token") || ""; }
function authHeaders() { const t = token(); return t ? { Authorization: "Bearer " + t } : {}; }

function bar(boot) {
  const el = document.createElement("div");
  el.className = "bar";
  if (!boot || !boot.stages.length) return el;
  // Stages on a time axis: left = when it began, width = how long it took (at least a sliver
  // so that instant stages stay visible).
  const start = boot.start_ms, total = Math.max(1, boot.end_ms - start);
  for (const st of boot.stages) {
    const span = document.createElement("span");
    span.className = "s-" + st.stage + (st.error ? " err" : "");
    const left = (100 * Math.max(0, st.start_ms - start)) / total;
    span.style.left = Math.min(98, left) + "%";
    span.style.width = Math.max(2, (100 * st.duration_ms) / total) + "%";
    span.title = st.stage + ": " + st.duration_ms + " ms" + (st.error ? " (error)" : "");
    span.dataset.stage = st.stage;
    el.appendChild(span);
  }
  el.title = "boot at " + new Date(start).toLocaleTimeString() + ", reached " + text(boot.reached) +
    ", " + (boot.end_ms - start) + " ms";
  return el;
}

function renderMachines() {
  const body = $("#machines tbody");
  body.replaceChildren();
  for (const m of machines) {
    const tr = document.createElement("tr");
    tr.dataset.mac = m.mac;
    const boots = timelines.get(m.mac) || [];
    const last = boots[boots.length - 1];
    if (last && last.errors > 0) tr.className = "err";
    if (warnings.some((w) => w.mac === m.mac)) tr.className = "warn";
    const f = m.facts || {};
    const fw = m.firmware || {};
    const profile = m.pinned_profile ? m.pinned_profile + " (pinned)" : m.last_profile;
    const state = machineState(m, fw, last);
    if (fw.secure_boot && fw.secure_boot.proven) tr.className = "warn";
    const edit = document.createElement("button");
    edit.textContent = "Edit";
    edit.className = "edit";
    edit.onclick = () => openEdit(m);
    tr.append(td(m.mac, "mono"), td(f.arch || fw.arch), td(f.ip, "mono"), td(f.hostname), td(profile, "profile"),
      td(state, "state"), td(bar(last), "timeline"), td(ago(m.last_seen_ms)), td(m.last_server, "server"), td(edit));
    body.appendChild(tr);
  }
}

// What a machine's row says it is doing: installed, refused by Secure Boot, or how far its
// last boot got (from its timeline, or from its record when it never reached a script).
function machineState(m, fw, last) {
  if (m.installed_ms) return "installed (boots local disk)";
  const sb = fw.secure_boot;
  if (sb && sb.proven && (!fw.stage_ms || fw.stage_ms <= sb.at_ms + 1000)) return "first stage refused by Secure Boot";
  const reached = last ? last.reached : fw.stage;
  const note = sb && !sb.proven ? " (a Secure Boot refusal seen from another address: unproven)" : "";
  return (reached ? "reached " + reached : "seen") + note;
}

function renderWarnings() {
  const ul = $("#warnings");
  ul.replaceChildren();
  if (!warnings.length) { const li = document.createElement("li"); li.className = "muted"; li.textContent = "none"; ul.appendChild(li); return; }
  for (const w of warnings.slice(-20).reverse()) {
    const li = document.createElement("li");
    li.className = w.kind === "chainload-loop" || w.kind === "secure-boot-refused" ? "loop" : "";
    li.textContent = new Date(w.at_ms).toLocaleTimeString() + " " + text(w.mac) + ": " + w.text;
    ul.appendChild(li);
  }
}

// Event outcomes that are failures (the same words as Outcome::is_error, docs/api.md); events
// stored before outcomes were words fall back to their error and status.
const FAILURES = ["refused", "dropped", "not-found", "timed-out", "error"];
function failed(d) {
  if (typeof d.outcome === "string" && /^[a-z-]+$/.test(d.outcome)) return FAILURES.includes(d.outcome);
  return Boolean(d.error) || (d.status && d.status >= 400);
}

function describe(e) {
  const d = e.detail || {};
  switch (e.kind) {
    case "dhcp": return d.msg + " from " + d.client + " → " + (d.decision && d.decision.file ? d.decision.file : d.outcome);
    case "tftp": return (failed(d) ? "FAILED " : "") + d.path + " " + text(d.bytes) + " B in " + text(d.duration_ms) + " ms";
    case "http": return d.status + " " + d.method + " " + d.path + " (" + d.what + ", " + d.bytes + " B)";
    case "chainload-loop": return "chainload loop: " + d.probable_cause;
    case "secure-boot-refused": return refusalText(d);
    // An operator's change through the API of the server in the Server column.
    case "operator": return "operator " + d.action +
      (d.action === "forget" ? "" : ": " + JSON.stringify(d.old) + " → " + JSON.stringify(d.new)) +
      (d.client ? " (client " + d.client + ")" : "");
    default: return JSON.stringify(d);
  }
}

function refusalText(d) {
  return (d.proven ? "first stage refused by the firmware (" : "unproven Secure Boot refusal (") +
    d.evidence + "): " + (d.proven ? d.probable_cause : d.note);
}

function addEvent(e, prepend) {
  const body = $("#events tbody");
  const tr = document.createElement("tr");
  const d = e.detail || {};
  if (e.kind === "chainload-loop" || (e.kind === "secure-boot-refused" && d.proven)) tr.className = "err";
  else if (failed(d)) tr.className = "warn";
  tr.append(td(new Date(e.at_ms).toLocaleTimeString()), td(e.mac, "mono"), td(e.kind), td(describe(e)), td(e.server, "server"));
  if (prepend) body.prepend(tr); else body.appendChild(tr);
  while (body.children.length > 200) body.lastChild.remove();
  if (e.kind === "chainload-loop" || e.kind === "secure-boot-refused" || failed(d)) {
    const text = e.kind === "chainload-loop" ? d.probable_cause
      : e.kind === "secure-boot-refused" ? refusalText(d)
      : (d.error || d.outcome + " " + (d.path || ""));
    warnings.push({ mac: e.mac, at_ms: e.at_ms, kind: e.kind, text });
  }
}

// The servers sharing this server's store (a fleet on PostgreSQL: every server's dashboard
// shows them all): live or not by their heartbeat, and how many of the machines listed each
// answered last. Shown once there is more than one server, or one that is not live.
function renderServers(list) {
  const body = $("#servers tbody");
  body.replaceChildren();
  const answered = new Map();
  for (const m of machines) if (m.last_server) answered.set(m.last_server, (answered.get(m.last_server) || 0) + 1);
  for (const s of list.servers) {
    const tr = document.createElement("tr");
    tr.dataset.name = s.name;
    if (!s.live) tr.className = "warn";
    const state = (s.live ? "live" : "not live") + (s.name === list.this ? " (this server)" : "");
    tr.append(td(s.name, "mono"), td(state, "state"), td(ago(Date.now() - s.age_ms)),
      td(new Date(s.started_ms).toLocaleString()), td(s.version), td(answered.get(s.name) || 0, "answered"));
    body.appendChild(tr);
  }
  $("#fleet").hidden = !(list.servers.length > 1 || list.servers.some((s) => !s.live));
}

async function loadTimeline(mac) {
  try {
    const t = await getJSON("/api/v1/machines/" + encodeURIComponent(mac) + "/timeline");
    timelines.set(mac, t.boots || []);
  } catch (err) { /* shown as an empty bar */ }
}

async function refresh() {
  try {
    const [info, ms, ls, ps, srv] = await Promise.all([
      getJSON("/api/v1/info"), allMachines(), allLeases(), getJSON("/api/v1/profiles"),
      getJSON("/api/v1/servers").catch(() => null),
    ]);
    $("#info").textContent = (srv ? "server " + srv.this + " · " : "") + "v" + info.version + " · DHCP " + text(info.dhcp_mode) + " · up " + info.uptime_s + "s";
    machines = ms.sort((a, b) => b.last_seen_ms - a.last_seen_ms);
    profiles = ps.map((p) => p.name || p);
    await Promise.all(machines.slice(0, 100).map((m) => loadTimeline(m.mac)));
    renderMachines();
    if (srv) renderServers(srv);
    renderWarnings();
    const lb = $("#leases tbody");
    lb.replaceChildren();
    for (const l of ls) {
      const tr = document.createElement("tr");
      tr.append(td(l.ip, "mono"), td(l.mac, "mono"), td(l.hostname), td(l.state), td(new Date(l.expires * 1000).toLocaleString()));
      lb.appendChild(tr);
    }
  } catch (err) {
    $("#info").textContent = "cannot reach the API: " + err.message;
  }
}

let pending = null;
function scheduleRefresh() { if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 300); }

function openEdit(m) {
  $("#edit-mac").textContent = m.mac;
  const sel = $("#edit-profile");
  sel.replaceChildren();
  const none = document.createElement("option"); none.value = ""; none.textContent = "(unpinned: groups decide)"; sel.appendChild(none);
  for (const p of profiles) { const o = document.createElement("option"); o.value = p; o.textContent = p; sel.appendChild(o); }
  sel.value = m.pinned_profile || "";
  $("#edit-token").value = token();
  $("#edit-error").textContent = "";
  $("#edit").dataset.mac = m.mac;
  $("#edit").showModal();
}

async function write(method, path, body) {
  const t = $("#edit-token").value.trim();
  if (t) sessionStorage.setItem("chainboot-token", t);
  const r = await fetch(path, {
    method, headers: Object.assign({ "Content-Type": "application/json" }, authHeaders()),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!r.ok) {
    let msg = r.status + "";
    try { msg += ": " + (await r.json()).error; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
}

$("#edit-save").onclick = async () => {
  const mac = $("#edit").dataset.mac;
  const p = $("#edit-profile").value;
  try {
    await write("PUT", "/api/v1/machines/" + encodeURIComponent(mac) + "/profile", { profile: p || null });
    $("#edit").close();
    refresh();
  } catch (err) { $("#edit-error").textContent = err.message; }
};
$("#edit-rearm").onclick = async () => {
  const mac = $("#edit").dataset.mac;
  try {
    await write("POST", "/api/v1/machines/" + encodeURIComponent(mac) + "/rearm");
    $("#edit").close();
    refresh();
  } catch (err) { $("#edit-error").textContent = err.message; }
};

async function start() {
  try {
    const recent = await getJSON("/api/v1/events?limit=100");
    for (const e of recent.reverse()) addEvent(e, true);
  } catch (err) { /* the stream still works */ }
  await refresh();
  const es = new EventSource("/api/v1/events/stream");
  es.addEventListener("open", () => { $("#live").textContent = "live"; $("#live").className = "pill ok"; });
  es.addEventListener("error", () => { $("#live").textContent = "reconnecting…"; $("#live").className = "pill bad"; });
  es.addEventListener("event", (msg) => {
    const e = JSON.parse(msg.data);
    addEvent(e, true);
    if (e.mac) scheduleRefresh(); else renderWarnings();
  });
  // Every 30 s, and every 5 s while other servers are listed (their heartbeats and machines
  // change without an event of this server's).
  setInterval(refresh, 30000);
  setInterval(() => { if (!$("#fleet").hidden) refresh(); }, 5000);
}
start();
