// teachcam's page: live view, class cards with hold-to-add, why it thinks so. No build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { classes: [], undo: null, shown: null, holdRate: 5, skipped: {}, ws: null, wsDelay: 500, scene: null,
                region: null };
const HOLD_LIMIT_MS = 30000; // a hold ends by itself after this long: let go and hold again

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

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Visible words plus, for a screen reader, what they act on ("Delete" → "Delete cat").
function named(button, visible, hidden) {
  button.replaceChildren(el("span", "text", visible), el("span", "sr", hidden ? ` ${hidden}` : ""));
  return button;
}

// -- status: one line, the camera's rate and the model's time as what they are -------------------------------
function formatUptime(s) {
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function showStatus(s) {
  const engine = s.kernels === "edgetpu" ? "Edge TPU" : "CPU";
  const text = s.camera_ok === false
    ? `camera trouble: ${s.camera_error || "no frames"}`
    : `camera ${Math.round(s.camera_fps ?? s.fps)} frames/s · model ${s.inference_ms} ms (${engine}) · ` +
      `${s.examples} examples · up ${formatUptime(s.uptime_s)}`;
  $("status").textContent = text;
  $("status").title = `${text} — camera: ${s.camera}; the model could run ${s.fps} frames/s`;
  $("status").classList.toggle("trouble", s.camera_ok === false);
  showScene(s.scene);
  showRegion(s.region);
  setDaemon(true);
}

// -- the focus region: drawn on the live view with a finger, a mouse or the arrow keys ----------------------
// Fractions of the whole picture; the <img> letterboxes it (object-fit: contain), so map through its picture box.
const editor = { on: false, draft: null, start: null };
function pictureBox() {
  const img = $("live");
  const w = img.clientWidth, h = img.clientHeight;
  const nw = img.naturalWidth || 4, nh = img.naturalHeight || 3;
  const scale = Math.min(w / nw, h / nh);
  return { x: img.offsetLeft + (w - nw * scale) / 2, y: img.offsetTop + (h - nh * scale) / 2, w: nw * scale, h: nh * scale };
}
function place(el, r) {
  const b = pictureBox();
  Object.assign(el.style, { left: `${b.x + r[0] * b.w}px`, top: `${b.y + r[1] * b.h}px`,
                            width: `${(r[2] - r[0]) * b.w}px`, height: `${(r[3] - r[1]) * b.h}px` });
}
function showRegion(region) {
  state.region = region || null;
  const el = $("region");
  el.hidden = !state.region;
  if (state.region) place(el, state.region);
  $("region-edit").textContent = state.region ? "Focus region: on…" : "Focus region…";
}
function setDraft(r) {
  const clamp = (v) => Math.min(1, Math.max(0, v));
  let [x0, y0, x1, y1] = r.map(clamp);
  if (x1 - x0 < 0.05) x1 = Math.min(1, x0 + 0.05), x0 = x1 - 0.05;
  if (y1 - y0 < 0.05) y1 = Math.min(1, y0 + 0.05), y0 = y1 - 0.05;
  editor.draft = [x0, y0, x1, y1].map((v) => Math.round(v * 1000) / 1000);
  $("draft").hidden = false;
  place($("draft"), editor.draft);
}
function editRegion(on) {
  editor.on = on;
  $("live").parentElement.classList.toggle("editing", on);
  $("region-tools").hidden = !on;
  $("region-hint").hidden = !on;
  $("region-edit").hidden = on;
  $("draft").hidden = true;
  if (on) { setDraft(state.region || [0.25, 0.25, 0.75, 0.75]); $("draft").focus(); }
}
function pointAt(e) {
  const b = pictureBox();
  const frame = $("live").parentElement.getBoundingClientRect();
  return [(e.clientX - frame.left - b.x) / b.w, (e.clientY - frame.top - b.y) / b.h];
}
async function sendRegion(body) {
  try {
    const r = await api("/api/region", { method: "POST", body });
    showRegion(r.region);
    toast(r.region ? "the model now looks at the focus region" : "the model now looks at the whole picture");
    editRegion(false);
    if (r.other_region) {
      const n = r.other_region, some = `${n} example${n === 1 ? " was" : "s were"}`;
      if (confirm(`${some} taken with another region. Delete ${n === 1 ? "it" : "them"} to re-take with this one? ` +
                  "(Cancel keeps them; Undo brings deleted ones back.)")) {
        await api("/api/examples/remove", { method: "POST", body: { ids: r.other_ids } });
        toast(`deleted ${n}: teach ${n === 1 ? "it" : "them"} again with the new region`);
        refreshSoon();
      } else toast(`kept ${n} example${n === 1 ? "" : "s"} taken with another region`);
    }
  } catch (e) { toast(e.message, true); }
}
(() => {
  const frame = $("live").parentElement;
  frame.addEventListener("pointerdown", (e) => {
    if (!editor.on || e.button !== 0) return;
    e.preventDefault();
    try { frame.setPointerCapture(e.pointerId); } catch (_) { /* synthetic */ }
    editor.start = pointAt(e);
    setDraft([...editor.start, editor.start[0] + 0.05, editor.start[1] + 0.05]);
  });
  frame.addEventListener("pointermove", (e) => {
    if (!editor.on || !editor.start) return;
    const [x, y] = pointAt(e), [sx, sy] = editor.start;
    setDraft([Math.min(x, sx), Math.min(y, sy), Math.max(x, sx), Math.max(y, sy)]);
  });
  const end = () => { if (editor.start) { editor.start = null; $("draft").focus(); } };
  frame.addEventListener("pointerup", end);
  frame.addEventListener("pointercancel", end);
  $("draft").addEventListener("keydown", (e) => {
    const step = 0.02, d = editor.draft;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    if (e.key === "Enter") { e.preventDefault(); sendRegion({ region: editor.draft }); return; }
    if (e.key === "Escape") { e.preventDefault(); editRegion(false); return; }
    const m = moves[e.key];
    if (!m || !d) return;
    e.preventDefault();
    if (e.shiftKey) setDraft([d[0], d[1], d[2] + m[0], d[3] + m[1]]);
    else {
      const dx = Math.min(Math.max(m[0], -d[0]), 1 - d[2]), dy = Math.min(Math.max(m[1], -d[1]), 1 - d[3]);
      setDraft([d[0] + dx, d[1] + dy, d[2] + dx, d[3] + dy]);
    }
  });
  $("region-edit").onclick = () => editRegion(true);
  $("region-cancel").onclick = () => editRegion(false);
  $("region-use").onclick = () => sendRegion({ region: editor.draft });
  $("region-whole").onclick = () => sendRegion({ region: null });
  window.addEventListener("resize", () => { showRegion(state.region); if (editor.on && editor.draft) place($("draft"), editor.draft); });
  $("live").addEventListener("load", () => { if (state.region) place($("region"), state.region); }, { once: true });
})();

// The demo camera changes scene every few seconds: say what is on and what comes next, so a hold does not straddle.
function showScene(scene) {
  state.scene = scene ? { ...scene, at: performance.now() } : null;
  renderScene();
}
function renderScene() {
  const p = $("scene");
  const s = state.scene;
  p.hidden = !s;
  if (!s) return;
  const left = Math.max(0, s.in_s - (performance.now() - s.at) / 1000);
  p.textContent = `demo camera: ${s.now} now · next: ${s.next} in ${Math.ceil(left)} s`;
}
setInterval(renderScene, 500);

function setDaemon(up) {
  const pill = $("daemon");
  pill.textContent = up ? "running" : "daemon not running";
  pill.className = "pill " + (up ? "up" : "down");
}

// -- the live label and bars (rows kept, values changed: a screen reader's meters stay put) -----------------
function showPrediction(label, confidences) {
  if (label !== undefined) {
    $("label").textContent = label || "…";
    if (label !== state.shown) { state.shown = label; markShown(); }
  }
  if (!confidences) return;
  const bars = $("bars");
  const names = state.classes.map((c) => c.label);
  for (const name of Object.keys(confidences)) if (!names.includes(name)) names.push(name);
  const rows = new Map([...bars.children].map((row) => [row.dataset.name, row]));
  names.forEach((name, i) => {
    let row = rows.get(name);
    if (!row) {
      row = el("div", "bar");
      row.dataset.name = name;
      row.setAttribute("role", "meter");
      row.setAttribute("aria-valuemin", "0");
      row.setAttribute("aria-valuemax", "100");
      row.setAttribute("aria-label", `confidence: ${name}`);
      const track = el("span", "track");
      track.append(el("span", "fill"));
      row.append(el("span", "name", name), track, el("span", "pct"));
    }
    const value = Math.round((confidences[name] || 0) * 100);
    row.classList.toggle("top", name === label);
    row.setAttribute("aria-valuenow", String(value));
    row.querySelector(".fill").style.width = `${value}%`;
    row.querySelector(".pct").textContent = `${value}%`;
    if (bars.children[i] !== row) bars.insertBefore(row, bars.children[i] || null);
    rows.delete(name);
  });
  for (const row of rows.values()) row.remove();
}

function markShown() {
  for (const card of document.querySelectorAll(".card")) card.classList.toggle("shown", card.dataset.label === state.shown);
}

// -- class cards: one element per class, updated in place (the held button is never replaced) ---------------
let refreshTimer = null;
let fleetCount = 0, fleetTimer = null;
function fleetToast() {
  fleetCount += 1;
  if (fleetTimer) return;
  fleetTimer = setTimeout(() => {
    toast(`fleet: ${fleetCount} example${fleetCount === 1 ? "" : "s"} from other Pis`);
    fleetCount = 0; fleetTimer = null;
  }, 2000);
}

function refreshSoon() { clearTimeout(refreshTimer); refreshTimer = setTimeout(refreshClasses, 150); }

async function refreshClasses() {
  try {
    const data = await api("/api/classes");
    state.classes = data.classes;
    state.undo = data.undo || null;
    renderCards();
    renderUndo();
  } catch (e) { if (e.message !== "log in first") toast(e.message, true); }
}

function renderUndo() {
  const button = $("undo");
  button.disabled = !state.undo;
  button.textContent = state.undo ? `Undo: ${state.undo.text}` : "Undo";
  button.title = state.undo ? `take back: ${state.undo.text} (${state.undo.via || "?"})` : "nothing to undo";
}

function thumb(t, alt, caption) {
  const fig = el("figure");
  const img = el("img");
  img.src = `/api/thumb/${t}`;
  img.alt = alt;
  img.loading = "lazy";
  fig.append(img);
  if (caption !== undefined) fig.append(el("figcaption", "", caption));
  return fig;
}

function when(seconds) { return new Date(seconds * 1000).toLocaleTimeString(); }

function exampleAlt(label, e, i, n) { return `${label}: example ${i + 1} of ${n}, added ${when(e.added)}${e.source ? ` from ${e.source}` : ""}`; }

function makeCard(label) {
  const card = el("article", "card");
  card.dataset.label = label;
  const title = el("h3");
  title.append(el("span", "name"), el("span", "count"));
  const hold = el("button", "hold");
  hold.type = "button";
  hold.setAttribute("aria-pressed", "false");
  const upload = el("label", "button upload");
  const input = el("input", "file");
  input.type = "file"; input.multiple = true; input.accept = "image/*";
  upload.append(el("span", "text", "Upload"), el("span", "sr"), input);
  const rename = el("button", "rename"); rename.type = "button";
  const remove = el("button", "remove danger"); remove.type = "button";
  const actions = el("div", "actions");
  actions.append(upload, rename, remove);
  const all = el("details", "all");
  all.append(el("summary"), el("div", "grid"));
  card.append(title, hold, el("div", "meta"), actions, el("div", "thumbs"), all);
  setupHold(hold, card);
  rename.onclick = () => renameClass(card.dataset.label);
  remove.onclick = () => removeClass(card.dataset.label, Number(card.dataset.count));
  input.onchange = () => { uploadFiles([...input.files], card.dataset.label); input.value = ""; };
  all.addEventListener("toggle", () => { if (all.open) fillAll(card); });
  for (const type of ["dragenter", "dragover"]) card.addEventListener(type, (e) => { e.preventDefault(); card.classList.add("drop"); });
  card.addEventListener("dragleave", (e) => { if (!card.contains(e.relatedTarget)) card.classList.remove("drop"); });
  card.addEventListener("drop", (e) => {
    e.preventDefault(); card.classList.remove("drop");
    uploadFiles([...e.dataTransfer.files], card.dataset.label);
  });
  return card;
}

function setCount(card, n) {
  card.dataset.count = String(n);
  card.querySelector(".count").textContent = `${n} example${n === 1 ? "" : "s"}`;
}

function updateCard(card, c) {
  const label = c.label;
  card.dataset.label = label;
  card.classList.toggle("shown", label === state.shown);
  card.querySelector(".name").textContent = label;
  setCount(card, c.count);
  const variety = c.variety === null || c.variety === undefined ? "—" : `${Math.round(c.variety * 100)}%`;
  const skipped = state.skipped[label] || 0;
  card.querySelector(".meta").textContent = `variety ${variety}` +
    (skipped ? ` · ${skipped} near-cop${skipped === 1 ? "y" : "ies"} skipped` : "");
  const hold = card.querySelector(".hold");
  if (!(holding && holding.button === hold)) named(hold, "Hold to add", `examples of ${label}`);
  else hold.querySelector(".sr").textContent = ` examples of ${label}`;
  card.querySelector(".upload .sr").textContent = ` pictures to ${label}`;
  named(card.querySelector(".rename"), "Rename", label);
  named(card.querySelector(".remove"), "Delete", label);
  // The newest eight, below the buttons (as they arrive nothing moves under the finger); kept when unchanged.
  const recent = c.examples.slice(-8).reverse();
  const thumbs = card.querySelector(".thumbs");
  const key = recent.map((e) => e.id).join(",");
  if (thumbs.dataset.key !== key) {
    thumbs.dataset.key = key;
    thumbs.replaceChildren(...recent.map((e, i) => thumb(e.thumb, exampleAlt(label, e, c.count - 1 - i, c.count))));
  }
  card.examples = c.examples;
  card.querySelector(".all summary").textContent = `All ${c.count} example${c.count === 1 ? "" : "s"}`;
  card.querySelector(".all").hidden = c.count === 0;
  if (card.querySelector(".all").open) fillAll(card);
}

// Every example of a class, each with its own Delete: kept in place by id, built only while open.
function fillAll(card) {
  const grid = card.querySelector(".all .grid");
  const label = card.dataset.label;
  const examples = card.examples || [];
  const have = new Map([...grid.children].map((fig) => [fig.dataset.id, fig]));
  examples.forEach((e, i) => {
    let fig = have.get(e.id);
    if (!fig) {
      fig = thumb(e.thumb, "", undefined);
      fig.dataset.id = e.id;
      const del = el("button", "danger small");
      del.type = "button";
      del.onclick = () => removeExample(e.id, label);
      fig.append(del);
    }
    fig.querySelector("img").alt = exampleAlt(label, e, i, examples.length);
    named(fig.querySelector("button"), "Delete", `${label} example ${i + 1}`);
    if (grid.children[i] !== fig) grid.insertBefore(fig, grid.children[i] || null);
    have.delete(e.id);
  });
  for (const fig of have.values()) fig.remove();
}

function renderCards() {
  const cards = $("cards");
  const existing = new Map([...cards.children].map((card) => [card.dataset.label, card]));
  if (holding && existing.get(holding.label) !== holding.card && holding.card.isConnected) {
    existing.set(holding.label, holding.card); // renamed while held: it is still the same card
  }
  state.classes.forEach((c, i) => {
    let card = existing.get(c.label);
    if (!card) card = makeCard(c.label);
    existing.delete(c.label);
    updateCard(card, c);
    // Only a card out of place moves (moving the held one would take its focus and its key-up with it).
    if (cards.children[i] !== card) cards.insertBefore(card, cards.children[i] || null);
  });
  for (const card of existing.values()) {
    if (holding && holding.card === card) endHold("its class went");
    card.remove();
  }
  $("empty").hidden = state.classes.length > 0;
  showHoldInfo();
}

// -- hold to add: pointer, touch or keyboard; letting go anywhere ends it, so do blur, hiding and other keys --
let holding = null;
function setupHold(button, card) {
  button.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    e.preventDefault();
    try { button.setPointerCapture(e.pointerId); } catch (_) { /* synthetic events have no capture */ }
    startHold(button, card, { pointer: e.pointerId });
  });
  button.addEventListener("lostpointercapture", (e) => { if (holding && holding.pointer === e.pointerId) endHold("let go"); });
  button.addEventListener("keydown", (e) => {
    if (e.key !== " " && e.key !== "Enter") return;
    e.preventDefault();
    if (!e.repeat && !holding) startHold(button, card, { key: e.key });
  });
  button.addEventListener("click", (e) => e.preventDefault()); // the key-up's click adds nothing more
  button.addEventListener("contextmenu", (e) => e.preventDefault());
}

function holdId() { return `web-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`; }

async function startHold(button, card, how) {
  if (holding) return;
  const label = card.dataset.label;
  holding = { button, card, label, added: 0, group: holdId(), started: performance.now(), ...how };
  const mine = holding;
  button.classList.add("holding");
  button.setAttribute("aria-pressed", "true");
  button.querySelector(".text").textContent = "Adding…";
  showHoldInfo();
  const interval = 1000 / state.holdRate;
  while (holding === mine) {
    if (performance.now() - mine.started > HOLD_LIMIT_MS) { endHold("30 s"); toast("a hold ends after 30 s: let go and hold again"); break; }
    const started = performance.now();
    try {
      const result = await api("/api/enroll", { method: "POST", body: { label: mine.card.dataset.label, hold: true, group: mine.group } });
      if (result.skipped === "similar") state.skipped[result.label] = (state.skipped[result.label] || 0) + 1;
      else if (!result.skipped) { mine.added += 1; mine.count = result.count; setCount(mine.card, result.count); }
      if (holding === mine) showHoldInfo();
    } catch (e) { toast(e.message, true); break; }
    const wait = interval - (performance.now() - started);
    if (wait > 0 && holding === mine) await new Promise((r) => { mine.wake = r; setTimeout(r, wait); });
  }
  if (holding === mine) holding = null;
  button.classList.remove("holding");
  button.setAttribute("aria-pressed", "false");
  button.querySelector(".text").textContent = "Hold to add";
  showHoldInfo();
  if (mine.added) toast(`added ${mine.added} to ${mine.card.dataset.label}`);
  refreshSoon();
}

function endHold() {
  const mine = holding;
  holding = null;
  if (mine && mine.wake) mine.wake();
}

// On the live view while holding (a phone shows the view and the cards one above the other): the class and its count.
function showHoldInfo() {
  const info = $("holdinfo");
  if (!holding) { info.hidden = true; return; }
  const c = state.classes.find((x) => x.label === holding.card.dataset.label);
  const count = holding.count ?? (c ? c.count : 0);
  info.hidden = false;
  info.textContent = `adding to ${holding.card.dataset.label}: ${count} example${count === 1 ? "" : "s"}`;
}

window.addEventListener("pointerup", (e) => { if (holding && holding.pointer === e.pointerId) endHold("let go"); });
window.addEventListener("pointercancel", (e) => { if (holding && holding.pointer === e.pointerId) endHold("cancelled"); });
// A mouse that moves with no button down: the release was missed (another window had it) — the hold is over.
window.addEventListener("pointermove", (e) => { if (holding && holding.pointer === e.pointerId && e.pointerType === "mouse" && e.buttons === 0) endHold("no button down"); });
window.addEventListener("keyup", (e) => { if (holding && holding.key && e.key === holding.key) endHold("key up"); });
window.addEventListener("keydown", (e) => { if (holding && holding.key && e.key !== holding.key) endHold("another key"); });
window.addEventListener("blur", () => endHold("window blur"));
document.addEventListener("visibilitychange", () => { if (document.hidden) endHold("hidden"); });
document.addEventListener("focusout", (e) => { if (holding && holding.key && e.target === holding.button) endHold("focus left"); });

async function renameClass(label) {
  const name = prompt(`Rename "${label}" to:`, label);
  if (!name || name === label) return;
  try { await api("/api/classes/rename", { method: "POST", body: { old: label, new: name } }); toast(`renamed to ${name}`); }
  catch (e) { toast(e.message, true); }
  refreshSoon();
}

async function removeClass(label, count) {
  if (!confirm(`Delete "${label}" and its ${count} example${count === 1 ? "" : "s"}? (Undo brings it back.)`)) return;
  try { await api("/api/classes/remove", { method: "POST", body: { label } }); toast(`deleted ${label}`); }
  catch (e) { toast(e.message, true); }
  refreshSoon();
}

async function removeExample(id, label) {
  try { await api("/api/examples/remove", { method: "POST", body: { ids: [id] } }); toast(`deleted an example of ${label}`); }
  catch (e) { toast(e.message, true); }
  refreshSoon(); refreshWhy();
}

async function uploadFiles(files, label) {
  if (!files.length) return;
  const form = new FormData();
  if (label) form.append("label", label);
  for (const file of files) form.append("files", file, file.name);
  try {
    const r = await api("/api/upload", { method: "POST", body: form });
    toast(`added ${r.enrolled}` + (label ? ` to ${label}` : "") + (r.skipped ? `, ${r.skipped} already there` : "") +
          (r.errors.length ? ` — ${r.errors[0]}` : ""), r.errors.length > 0);
  } catch (err) { toast(err.message, true); }
  refreshSoon();
}

// -- why it thinks so --------------------------------------------------------------------------------------
async function refreshWhy() {
  if ($("app").hidden || document.hidden) return;
  try {
    const why = await api("/api/explain");
    $("why-nearest").replaceChildren(...why.nearest.map((n) => {
      const text = `${n.label} ${Math.round(n.similarity * 100)}%`;
      return thumb(n.thumb, `nearest example: ${n.label}, ${Math.round(n.similarity * 100)}% similar`, text);
    }));
    const rows = why.confused.slice(0, 8).map((c) => {
      const row = el("div", "confused");
      const text = el("span", "", `an example of ${c.label} looks like ${c.looks_like} (${Math.round(c.similarity * 100)}%)`);
      const del = named(el("button", "danger"), "Delete it", `(the ${c.label} example that looks like ${c.looks_like})`);
      del.type = "button";
      del.onclick = () => removeExample(c.id, c.label);
      row.append(thumb(c.thumb, `the ${c.label} example`, c.label), text,
                 thumb(c.neighbor.thumb, `its nearest neighbour, a ${c.neighbor.label} example`, c.neighbor.label), del);
      return row;
    });
    if (!rows.length && why.examples > 2) {
      rows.push(el("p", "hint", "No class's examples are confused with another's (each example's nearest neighbours agree with its label)."));
    }
    $("why-confused").replaceChildren(...rows);
  } catch (e) { /* shown elsewhere */ }
}

// -- to label: the review inbox ----------------------------------------------------------------------------
const REASONS = { unsure: "barely recognised", tie: "two classes nearly tied", flicker: "its answer flickered",
                  new: "something new stayed" };
let inboxTimer = null;
function refreshInboxSoon() { clearTimeout(inboxTimer); inboxTimer = setTimeout(refreshInbox, 300); }

async function refreshInbox() {
  let data;
  try { data = await api("/api/inbox"); } catch (e) { data = { items: [], count: 0, off: e.message }; }
  $("inbox-count").textContent = String(data.count);
  $("inbox-badge").textContent = String(data.count);
  $("inbox-link").hidden = !data.count;
  $("inbox-count").setAttribute("aria-label", `${data.count} to label`);
  $("inbox-empty").textContent = data.off && data.off !== "log in first" ? data.off : "Nothing to label.";
  $("inbox-empty").hidden = data.items.length > 0;
  $("inbox").replaceChildren(...data.items.map(inboxItem));
}

function inboxItem(item) {
  const card = el("article");
  const why = `${REASONS[item.reason] || item.reason}, ${when(item.last)}${item.seen > 1 ? `, seen ${item.seen} times` : ""}`;
  const img = el("img");
  img.src = `/api/inbox/${item.id}.jpg`;
  img.alt = `to label: ${why}`;
  img.loading = "lazy";
  const body = el("div");
  const choices = el("div", "choices");
  for (const [label, p] of item.guesses.slice(0, 2)) {
    const b = named(el("button"), label, `(label it ${label}, ${Math.round(p * 100)}% its guess)`);
    b.type = "button";
    b.onclick = () => labelItem(item.id, label);
    choices.append(b);
  }
  const other = el("select");
  other.setAttribute("aria-label", "label it as another class");
  other.append(new Option("other class…", ""), ...state.classes.map((c) => new Option(c.label, c.label)));
  other.onchange = () => { if (other.value) labelItem(item.id, other.value); };
  const form = el("form", "inline");
  const name = el("input");
  name.placeholder = "new class";
  name.maxLength = 64;
  name.setAttribute("aria-label", "label it as a new class");
  const add = named(el("button"), "Add", "(as a new class)");
  add.type = "submit";
  form.append(name, add);
  form.onsubmit = (e) => { e.preventDefault(); if (name.value.trim()) labelItem(item.id, name.value.trim()); };
  const drop = named(el("button", "danger"), "Discard", `(the moment at ${when(item.last)})`);
  drop.type = "button";
  drop.onclick = () => discardItem(item.id);
  choices.append(other, form, drop);
  body.append(el("p", "hint", why), choices);
  card.append(img, body);
  return card;
}

async function labelItem(id, label) {
  try {
    const r = await api("/api/inbox/label", { method: "POST", body: { item: id, label } });
    toast(`added to ${r.label} (${r.count})`);
  } catch (e) { toast(e.message, true); }
  refreshInbox();
  refreshSoon();
}

async function discardItem(id) {
  try { await api("/api/inbox/discard", { method: "POST", body: { item: id } }); } catch (e) { toast(e.message, true); }
  refreshInbox();
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
      if (e.via === "fleet") fleetToast();  // a fleet's catch-up brings thousands: one toast for them
      else if (e.via !== "web") toast(`${e.via === "button" ? "button" : e.via}: added to ${e.label} (${e.count})`);
      refreshSoon(); break;
    case "region": showRegion(e.region); break;
    case "undone":
      if (e.via !== "web") toast(`${e.via}: undid ${e.text}`);
      refreshSoon(); break;
    case "camera_trouble": toast(`camera trouble: ${e.message}`, true); break;
    case "camera_back": toast("camera back"); break;
    case "paused": toast(e.paused ? "paused" : "resumed"); break;
    case "error": toast(e.message, true); break;
    case "inbox": refreshInboxSoon(); break;
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
  refreshInbox();
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

// Undo takes back exactly what the button says (its action id), even if something happened on the Pi meanwhile.
$("undo").onclick = async () => {
  if (!state.undo) return;
  try {
    const r = await api("/api/undo", { method: "POST", body: { action: state.undo.id } });
    toast(r.undone ? `undid: ${r.undone}` : "nothing to undo");
  } catch (e) { toast(e.message, true); }
  refreshSoon();
};

$("clear").onclick = async () => {
  const total = state.classes.reduce((n, c) => n + c.count, 0);
  if (!confirm(`Forget all ${state.classes.length} classes and ${total} examples? (Undo brings them back.)`)) return;
  try { await api("/api/clear", { method: "POST" }); toast("cleared"); } catch (e) { toast(e.message, true); }
  refreshSoon();
};

$("upload-form").onsubmit = async (e) => {
  e.preventDefault();
  await uploadFiles([...$("upload-files").files], "");
  $("upload-files").value = "";
};

start();
