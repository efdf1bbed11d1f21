// teachcam's page: live view, class cards with hold-to-add, why it thinks so. No build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { classes: [], shown: null, holdRate: 5, skipped: {}, ws: null, wsDelay: 500, why: null };

function toast(text, error = false) {
  const el = $("toast");
  el.textContent = text;
  el.className = "show" + (error ? " error" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.className = ""; }, error ? 5000 : 2500);
}

async function api(path, { method = "GET", body, raw = false } = {}) {
  const options = { method, headers: { "X-Teachcam": "1" }, credentials: "same-origin" };
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) { options.body = JSON.stringify(body); options.headers["Content-Type"] = "application/json"; }
  const response = await fetch(path, options);
  if (response.status === 401) { showLogin(); throw new Error("log in first"); }
  if (raw) return response;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || (data.errors && data.errors[0]) || `${response.status} ${response.statusText}`);
  return data;
}

function showLogin() { $("login").hidden = false; $("app").hidden = true; }
function showApp() { $("login").hidden = true; $("app").hidden = false; }

// -- status -----------------------------------------------------------------------------------------------
function formatUptime(s) {
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function showStatus(s) {
  const engine = s.kernels === "edgetpu" ? "Edge TPU" : `CPU (${s.model || "int8"})`;
  const camera = s.camera_ok === false ? `camera trouble: ${s.camera_error || "no frames"}` : `camera ${s.camera}`;
  $("status").textContent = `${camera} · ${s.fps} fps · ${s.inference_ms} ms · ${engine} · up ${formatUptime(s.uptime_s)}` +
    ` · ${s.examples} examples`;
  $("status").classList.toggle("trouble", s.camera_ok === false);
  setDaemon(true);
}

function setDaemon(up) {
  const el = $("daemon");
  el.textContent = up ? "running" : "daemon not running";
  el.className = "pill " + (up ? "up" : "down");
}

// -- the live label and bars -----------------------------------------------------------------------------
function showPrediction(label, confidences) {
  if (label !== undefined) {
    $("label").textContent = label || "…";
    if (label !== state.shown) { state.shown = label; markShown(); }
  }
  if (!confidences) return;
  const bars = $("bars");
  const names = state.classes.map((c) => c.label);
  for (const name of Object.keys(confidences)) if (!names.includes(name)) names.push(name);
  bars.replaceChildren(...names.map((name) => {
    const value = confidences[name] || 0;
    const row = document.createElement("div");
    row.className = "bar" + (name === label ? " top" : "");
    row.innerHTML = `<span class="name"></span><span class="track"><span class="fill"></span></span><span class="pct"></span>`;
    row.querySelector(".name").textContent = name;
    row.querySelector(".fill").style.width = `${Math.round(value * 100)}%`;
    row.querySelector(".pct").textContent = `${Math.round(value * 100)}%`;
    return row;
  }));
}

function markShown() {
  for (const card of document.querySelectorAll(".card")) card.classList.toggle("shown", card.dataset.label === state.shown);
}

// -- class cards -----------------------------------------------------------------------------------------
let refreshTimer = null;
function refreshSoon() { clearTimeout(refreshTimer); refreshTimer = setTimeout(refreshClasses, 150); }

async function refreshClasses() {
  try {
    const data = await api("/api/classes");
    state.classes = data.classes;
    renderCards();
  } catch (e) { if (e.message !== "log in first") toast(e.message, true); }
}

function thumb(t, caption) {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.src = `/api/thumb/${t}`;
  img.alt = caption || "example";
  img.loading = "lazy";
  fig.append(img);
  if (caption !== undefined) { const c = document.createElement("figcaption"); c.textContent = caption; fig.append(c); }
  return fig;
}

function renderCards() {
  const cards = $("cards");
  const refocus = holding && document.activeElement === holding.button;
  cards.replaceChildren(...state.classes.map((c) => {
    const card = document.createElement("div");
    card.className = "card" + (c.label === state.shown ? " shown" : "");
    card.dataset.label = c.label;
    const variety = c.variety === null || c.variety === undefined ? "—" : `${Math.round(c.variety * 100)}%`;
    const skipped = state.skipped[c.label] || 0;
    card.innerHTML = `<h3><span class="name"></span><span class="count"></span></h3>
      <div class="meta">variety <b class="variety"></b><span class="skipped"></span></div>
      <div class="actions"><button type="button" class="hold">Hold to add</button>
        <button type="button" class="rename">Rename</button><button type="button" class="remove danger">Delete</button></div>
      <div class="thumbs"></div>`;
    card.querySelector(".name").textContent = c.label;
    card.querySelector(".count").textContent = `${c.count} example${c.count === 1 ? "" : "s"}`;
    card.querySelector(".variety").textContent = variety;
    card.querySelector(".skipped").textContent = skipped ? ` · ${skipped} near-copies skipped` : "";
    // The thumbnails go below the buttons: as they arrive, nothing moves under the finger that holds "Hold to add".
    card.querySelector(".thumbs").append(...c.examples.slice(-8).reverse().map((e) => thumb(e.thumb)));
    if (holding && holding.label === c.label) {
      // The button being held stays the same element through every re-render: replacing it lost the key-up (a
      // keyboard hold then never stopped) and the holding look with it.
      card.querySelector(".hold").replaceWith(holding.button);
    } else {
      setupHold(card.querySelector(".hold"), c.label);
    }
    card.querySelector(".rename").onclick = () => renameClass(c.label);
    card.querySelector(".remove").onclick = () => removeClass(c.label, c.count);
    return card;
  }));
  if (refocus && holding.button.isConnected) holding.button.focus({ preventScroll: true });
  $("empty").hidden = state.classes.length > 0;
  const select = $("upload-label");
  const keep = select.value;
  select.replaceChildren(new Option("class for single images…", ""), ...state.classes.map((c) => new Option(c.label, c.label)));
  select.value = keep;
}

// Hold to add: pointer, touch or keyboard; letting go anywhere stops; the server caps the rate and skips near-copies.
let holding = null;
function setupHold(button, label) {
  const start = (event, key = null) => { event.preventDefault(); startHold(button, label, key); };
  button.addEventListener("pointerdown", (e) => start(e));
  button.addEventListener("keydown", (e) => { if ((e.key === " " || e.key === "Enter") && !e.repeat) start(e, e.key); });
  button.addEventListener("contextmenu", (e) => e.preventDefault());
}

async function startHold(button, label, key) {
  if (holding) return;
  holding = { button, label, key, added: 0 };
  const mine = holding;
  button.classList.add("holding");
  button.textContent = "Adding…";
  const interval = 1000 / state.holdRate;
  while (holding === mine) {
    const started = performance.now();
    try {
      const result = await api("/api/enroll", { method: "POST", body: { label, hold: true } });
      if (result.skipped === "similar") state.skipped[label] = (state.skipped[label] || 0) + 1;
      else if (!result.skipped) mine.added += 1;
    } catch (e) { toast(e.message, true); break; }
    const wait = interval - (performance.now() - started);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  if (holding === mine) holding = null;
  button.classList.remove("holding");
  button.textContent = "Hold to add";
  if (mine.added) toast(`added ${mine.added} to ${label}`);
  refreshSoon();
}

function stopHold() { holding = null; }
for (const type of ["pointerup", "pointercancel", "blur"]) window.addEventListener(type, stopHold);
// A keyboard hold ends when its key comes up, wherever focus is by then; any other key, or focus leaving the button
// (Tab), ends it too.
window.addEventListener("keyup", (e) => { if (holding && holding.key && e.key === holding.key) stopHold(); });
window.addEventListener("keydown", (e) => { if (holding && holding.key && e.key !== holding.key) stopHold(); });
document.addEventListener("focusout", (e) => { if (holding && holding.key && e.target === holding.button && e.relatedTarget) stopHold(); });
document.addEventListener("visibilitychange", () => { if (document.hidden) stopHold(); });

async function renameClass(label) {
  const name = prompt(`Rename "${label}" to:`, label);
  if (!name || name === label) return;
  try { await api("/api/classes/rename", { method: "POST", body: { old: label, new: name } }); toast(`renamed to ${name}`); }
  catch (e) { toast(e.message, true); }
  refreshSoon();
}

async function removeClass(label, count) {
  if (!confirm(`Delete "${label}" and its ${count} example${count === 1 ? "" : "s"}?`)) return;
  try { await api("/api/classes/remove", { method: "POST", body: { label } }); toast(`deleted ${label}`); }
  catch (e) { toast(e.message, true); }
  refreshSoon();
}

// -- why it thinks so --------------------------------------------------------------------------------------
async function refreshWhy() {
  if ($("app").hidden || document.hidden) return;
  try {
    const why = await api("/api/explain");
    $("why-nearest").replaceChildren(...why.nearest.map((n) => thumb(n.thumb, `${n.label} ${Math.round(n.similarity * 100)}%`)));
    const rows = why.confused.slice(0, 8).map((c) => {
      const row = document.createElement("div");
      row.className = "confused";
      const text = document.createElement("span");
      text.textContent = `an example of ${c.label} looks like ${c.looks_like} (${Math.round(c.similarity * 100)}%)`;
      const del = document.createElement("button");
      del.type = "button"; del.className = "danger"; del.textContent = "Delete it";
      del.onclick = async () => {
        try { await api("/api/examples/remove", { method: "POST", body: { ids: [c.id] } }); toast("deleted"); }
        catch (e) { toast(e.message, true); }
        refreshSoon(); refreshWhy();
      };
      row.append(thumb(c.thumb, c.label), text, thumb(c.neighbor.thumb, c.neighbor.label), del);
      return row;
    });
    if (!rows.length && why.examples > 2) {
      const ok = document.createElement("p"); ok.className = "hint";
      ok.textContent = "No class's examples are confused with another's (each example's nearest neighbours agree with its label).";
      rows.push(ok);
    }
    $("why-confused").replaceChildren(...rows);
  } catch (e) { /* shown elsewhere */ }
}

// -- the live feed -----------------------------------------------------------------------------------------
function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  state.ws = ws;
  ws.onopen = () => { state.wsDelay = 500; };
  ws.onmessage = (msg) => {
    const m = JSON.parse(msg.data);
    if (m.type === "hello") { state.holdRate = m.hold_rate || 5; setDaemon(m.daemon); if (m.status) showStatus(m.status); }
    else if (m.type === "status") showStatus(m);
    else if (m.type === "preview") showPrediction(m.label, m.confidences);
    else if (m.type === "daemon") { setDaemon(m.up); if (m.up) { refreshClasses(); $("live").src = `/stream.mjpg?${Date.now()}`; } }
    else if (m.type === "event") onEvent(m);
  };
  ws.onclose = () => { setTimeout(connect, state.wsDelay); state.wsDelay = Math.min(state.wsDelay * 2, 8000); };
}

function onEvent(e) {
  switch (e.event) {
    case "prediction": showPrediction(e.label, e.confidences); break;
    case "enrolled":
      if (e.via !== "web") toast(`${e.via === "button" ? "button" : e.via}: added to ${e.label} (${e.count})`);
      refreshSoon(); break;
    case "camera_trouble": toast(`camera trouble: ${e.message}`, true); break;
    case "camera_back": toast("camera back"); break;
    case "paused": toast(e.paused ? "paused" : "resumed"); break;
    case "error": toast(e.message, true); break;
    default: refreshSoon();
  }
}

// -- start -------------------------------------------------------------------------------------------------
async function start() {
  const session = await fetch("/api/session", { credentials: "same-origin" }).then((r) => r.json());
  if (!session.authenticated) { showLogin(); return; }
  showApp();
  $("live").src = "/stream.mjpg";
  await refreshClasses();
  connect();
  refreshWhy();
  setInterval(refreshWhy, 2500);
}

$("login-form").onsubmit = async (e) => {
  e.preventDefault();
  try { await api("/api/login", { method: "POST", body: { token: $("token").value.trim() } }); start(); }
  catch (err) { toast(err.message, true); }
};

$("add-form").onsubmit = async (e) => {
  e.preventDefault();
  const label = $("new-class").value.trim();
  try { await api("/api/classes", { method: "POST", body: { label } }); $("new-class").value = ""; refreshSoon(); }
  catch (err) { toast(err.message, true); }
};

$("undo").onclick = async () => {
  try {
    const r = await api("/api/undo", { method: "POST" });
    toast(r.undone ? `removed the last example of ${r.undone}` : "nothing to undo");
  } catch (e) { toast(e.message, true); }
  refreshSoon();
};

$("clear").onclick = async () => {
  const total = state.classes.reduce((n, c) => n + c.count, 0);
  if (!confirm(`Forget all ${state.classes.length} classes and ${total} examples?`)) return;
  try { await api("/api/clear", { method: "POST" }); toast("cleared"); } catch (e) { toast(e.message, true); }
  refreshSoon();
};

$("upload-form").onsubmit = async (e) => {
  e.preventDefault();
  const form = new FormData();
  const label = $("upload-label").value;
  if (label) form.append("label", label);
  for (const file of $("upload-files").files) form.append("files", file, file.name);
  try {
    const r = await api("/api/upload", { method: "POST", body: form });
    toast(`enrolled ${r.enrolled}` + (r.skipped ? `, ${r.skipped} already there` : "") + (r.errors.length ? ` — ${r.errors[0]}` : ""),
          r.errors.length > 0);
  } catch (err) { toast(err.message, true); }
  $("upload-files").value = "";
  refreshSoon();
};

start();
