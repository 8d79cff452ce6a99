// The gallery of `cdc serve` (jobs/serve.py): a paged grid of preview thumbnails that load
// as they scroll into view, a key filter and a capture-date filter, and a viewer that refines one image in place,
// tier by tier. No build step and no dependencies; every URL is relative to <base>, the
// route the page is served under.

const PAGE = 120; // keys per listing request: an archive of 100 000 opens like one of 10
const THUMB_WIDTH = 256; // px, resized on the server after decoding
const RETRIES = 5; // while the server says it is busy (429, 503)

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children);
  return e;
}

const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

const state = {
  info: null, // GET info: name, model, counts, tiers (cheapest first)
  items: [], // listing items loaded so far, for the current filter
  total: 0,
  done: false,
  q: "",
  taken: "", // "2021-07" or "2021-06..2021-08": the capture dates shown (server-side filter)
  gen: 0, // bumped when the filter changes: answers for an older filter are dropped
  loading: false,
  view: { index: -1, gen: 0, shots: [], comparing: false },
};

export function imageURL(key, tier, extra = {}) {
  const path = key.split("/").map(encodeURIComponent).join("/");
  return `images/${path}?${new URLSearchParams({ tier, ...extra })}`;
}

async function detail(r) {
  try {
    const body = await r.json();
    if (typeof body.detail === "string") return body.detail;
  } catch {
    // not JSON
  }
  return `HTTP ${r.status}`;
}

async function fetchBusy(url) {
  for (let attempt = 0; ; attempt++) {
    const r = await fetch(url);
    if ((r.status !== 429 && r.status !== 503) || attempt >= RETRIES) return r;
    await sleep(1000 * (Number(r.headers.get("Retry-After")) || 1) * (attempt + 1));
  }
}

async function getJSON(url) {
  const r = await fetchBusy(url);
  if (!r.ok) throw new Error(await detail(r));
  return r.json();
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

const plural = (n, word) => `${n} ${word}${Number(n) === 1 ? "" : "s"}`;

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  return n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KB` : `${(n / 1048576).toFixed(2)} MB`;
}

const fmtMs = (ms) => (ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`);

// -- header -------------------------------------------------------------------------------
function tierText(name, t) {
  const budget = t.bpp == null ? "" : `, ≤ ${t.bpp} bpp`;
  return `${name} (${plural(t.steps, "step")}, γ ${t.gamma}${budget})`;
}

async function loadInfo() {
  const info = await getJSON("info");
  state.info = info;
  document.title = `${info.name} · cdc gallery`;
  $("name").textContent = info.name;
  const failed = info.failed ? ` · ${info.failed} failed` : "";
  $("meta").textContent =
    `${info.model} (${info.codec}) · ${plural(info.records, "record")}${failed} · ` +
    `tiers: ${info.order.map((n) => tierText(n, info.tiers[n])).join(", ")}`;
}

// -- grid ---------------------------------------------------------------------------------
const thumbs = new IntersectionObserver((entries) => {
  for (const e of entries) {
    if (!e.isIntersecting) continue;
    thumbs.unobserve(e.target);
    loadThumb(e.target);
  }
}, { rootMargin: "300px" });

const nearEnd = new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) loadPage();
}, { rootMargin: "600px" });

function tile(item, index) {
  const li = el("li", { className: "tile" });
  li.dataset.key = item.key;
  li.dataset.index = String(index);
  const button = el("button", { type: "button",
    title: item.taken ? `${item.key} · taken ${item.taken.replace("T", " ")}` : item.key });
  button.addEventListener("click", () => openViewer(index));
  const caption = el("span", { className: "cap", textContent: item.key });
  if (item.ok) {
    const img = el("img", { alt: item.key, decoding: "async" });
    img.dataset.src = imageURL(item.key, state.info.preview_tier,
      { width: THUMB_WIDTH, format: "webp" });
    button.append(img, caption);
    thumbs.observe(img);
  } else {
    li.classList.add("failed");
    button.title = `${item.key}: failed when archived: ${item.error || "unknown error"}`;
    button.append(el("span", { className: "why", textContent: "failed when archived" }), caption);
  }
  li.append(button);
  return li;
}

function loadThumb(img, attempt = 0) {
  img.onload = () => img.closest(".tile")?.classList.add("loaded");
  img.onerror = async () => {
    // an <img> does not say why it failed: ask once more for the status and message
    const r = await fetch(img.dataset.src).catch(() => null);
    if (r && (r.ok || r.status === 429 || r.status === 503) && attempt < RETRIES) {
      await sleep(1000 * (attempt + 1));
      loadThumb(img, attempt + 1);
      return;
    }
    const message = r ? await detail(r) : "the server does not answer";
    const li = img.closest(".tile");
    li?.classList.add("broken");
    li?.querySelector("button")?.setAttribute("title", message);
    img.replaceWith(el("span", { className: "why", textContent: message }));
  };
  img.src = img.dataset.src;
}

function updateCount() {
  const shown = state.items.length;
  const what = [state.q ? `matching “${state.q}”` : "",
    state.taken ? `taken ${state.taken}` : ""].filter(Boolean).join(", ");
  $("count").textContent = shown < state.total
    ? `${shown} of ${state.total} ${what}`.trim()
    : `${plural(state.total, "image")} ${what}`.trim();
}

async function loadPage() {
  if (state.loading || state.done) return;
  state.loading = true;
  const gen = state.gen;
  try {
    const params = new URLSearchParams({ offset: state.items.length, limit: PAGE, details: "true" });
    if (state.q) params.set("q", state.q);
    if (state.taken) {
      const [from, to] = state.taken.includes("..") ? state.taken.split("..", 2)
        : [state.taken, state.taken];
      if (from.trim()) params.set("taken_from", from.trim());
      if (to.trim()) params.set("taken_to", to.trim());
    }
    const page = await getJSON(`images?${params}`);
    if (gen !== state.gen) return;
    const tiles = page.items.map((item, i) => tile(item, state.items.length + i));
    state.items.push(...page.items);
    state.total = page.total;
    state.done = state.items.length >= page.total || page.items.length === 0;
    $("grid").append(...tiles);
    $("grid").dataset.loaded = String(state.items.length);
    updateCount();
    showError("");
  } catch (e) {
    if (gen === state.gen) showError(e.message);
    return;
  } finally {
    if (gen === state.gen) state.loading = false;
  }
  // a tall window may still show the end of the grid: the observer will not fire again
  if (!state.done && $("more").getBoundingClientRect().top < innerHeight + 600) loadPage();
}

function setFilter(q, taken = state.taken) {
  if (q === state.q && taken === state.taken) return;
  closeViewer();
  Object.assign(state, { q, taken, items: [], total: 0, done: false, loading: false });
  state.gen++;
  thumbs.disconnect();
  $("grid").replaceChildren();
  $("grid").dataset.loaded = "0";
  loadPage();
}

let filterTimer = 0;
for (const box of [$("filter"), $("taken")]) {
  box.addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => setFilter($("filter").value.trim(), $("taken").value.trim()),
      200);
  });
}

// -- viewer -------------------------------------------------------------------------------
function stats(r) {
  const h = (name) => r.headers.get(`X-CDC-${name}`);
  return {
    tier: h("Tier"), steps: h("Steps"), gamma: h("Gamma"), source: h("Source"),
    bytes: Number(h("Bytes-Read")), bpp: Number(h("Bpp")), decodeMs: Number(h("Decode-Ms")),
  };
}

// how one tier was made: steps, γ, bytes read, bpp, decode time
function details(s) {
  const how = s.source === "decoded" ? `decoded in ${fmtMs(s.decodeMs)}`
    : s.source === "archive-cache" ? "from the archive's cache" : "from the server's cache";
  return `${plural(s.steps, "step")} · γ ${Number(s.gamma)} · ${fmtBytes(s.bytes)} read · ` +
    `${s.bpp.toFixed(3)} bpp · ${how}`;
}

const label = (s) => `${s.tier} · ${details(s)}`;

function tierRow(tier) {
  return el("li", { className: "pending" },
    el("span", { className: "name", textContent: tier }),
    el("span", { className: "what", textContent: "waiting" }));
}

async function openViewer(index) {
  const item = state.items[index];
  if (!item) return;
  const v = state.view;
  const gen = ++v.gen;
  for (const shot of v.shots) URL.revokeObjectURL(shot.obj);
  Object.assign(v, { index, shots: [], comparing: false });
  $("viewer").hidden = false;
  document.body.classList.add("viewing");
  $("vkey").textContent = item.key;
  $("prev").disabled = index === 0;
  $("next").disabled = state.done && index + 1 >= state.items.length;
  $("compare").disabled = true;
  $("compare").setAttribute("aria-pressed", "false");
  const img = $("vimg");
  img.alt = item.key;
  img.removeAttribute("src");
  delete img.dataset.tier;
  delete img.dataset.url;
  $("tiers").replaceChildren();
  if (!item.ok) {
    img.hidden = true;
    $("vlabel").textContent = `failed when archived: ${item.error || "unknown error"}`;
    return;
  }
  img.hidden = false;
  // the thumbnail, already here, stands in until the first tier arrives
  const thumb = document.querySelector(`.tile[data-index="${index}"] img`);
  if (thumb?.complete && thumb.naturalWidth) img.src = thumb.src;
  $("vlabel").textContent = "loading…";
  const rows = state.info.order.map(tierRow);
  $("tiers").append(...rows);
  for (const [i, tier] of state.info.order.entries()) {
    rows[i].querySelector(".what").textContent = "loading…";
    const url = imageURL(item.key, tier);
    const r = await fetchBusy(url).catch(() => null);
    if (gen !== v.gen) return;
    if (!r || !r.ok) {
      const message = r ? await detail(r) : "the server does not answer";
      rows[i].className = "failed";
      rows[i].querySelector(".what").textContent = message;
      continue;
    }
    const blob = await r.blob();
    if (gen !== v.gen) return;
    const shot = { tier, url, obj: URL.createObjectURL(blob), stats: stats(r), row: rows[i] };
    v.shots.push(shot);
    const name = item.key.split("/").pop().replace(/\.[^.]*$/, "");
    rows[i].className = "ready";
    rows[i].querySelector(".what").replaceChildren(
      el("button", { type: "button", className: "show", textContent: details(shot.stats),
        onclick: () => show(v.shots.indexOf(shot), v.gen) }),
      el("a", { href: url, download: `${name}-${tier}.png`, textContent: "download" }));
    $("compare").disabled = v.shots.length < 2;
    const last = v.shots.length - 1;
    await show(v.comparing ? last - 1 : last, gen);
  }
}

async function show(i, gen) {
  const v = state.view;
  const shot = v.shots[i];
  if (!shot || gen !== v.gen) return;
  const img = $("vimg");
  img.src = shot.obj;
  try {
    await img.decode();
  } catch {
    // shown when it loads
  }
  if (gen !== v.gen || img.src !== shot.obj) return;
  img.dataset.tier = shot.tier;
  img.dataset.url = shot.url;
  const best = v.shots[v.shots.length - 1];
  $("vlabel").textContent = shot === best ? label(shot.stats)
    : `${label(shot.stats)} — comparing with ${best.tier}`;
  for (const s of v.shots) s.row.classList.toggle("current", s === shot);
  img.dispatchEvent(new CustomEvent("cdc:shown", { detail: { tier: shot.tier, url: shot.url } }));
}

function toggleCompare() {
  const v = state.view;
  if (v.shots.length < 2) return;
  v.comparing = !v.comparing;
  $("compare").setAttribute("aria-pressed", String(v.comparing));
  show(v.shots.length - (v.comparing ? 2 : 1), v.gen);
}

async function step(delta) {
  const j = state.view.index + delta;
  if (j < 0 || $("viewer").hidden) return;
  if (j >= state.items.length && !state.done) await loadPage();
  if (j < state.items.length) openViewer(j);
}

function closeViewer() {
  const v = state.view;
  if ($("viewer").hidden) return;
  v.gen++;
  for (const shot of v.shots) URL.revokeObjectURL(shot.obj);
  v.shots = [];
  $("viewer").hidden = true;
  $("vimg").removeAttribute("src");
  document.body.classList.remove("viewing");
  document.querySelector(`.tile[data-index="${v.index}"] button`)?.focus();
}

$("prev").addEventListener("click", () => step(-1));
$("next").addEventListener("click", () => step(1));
$("close").addEventListener("click", closeViewer);
$("compare").addEventListener("click", toggleCompare);
document.addEventListener("keydown", (e) => {
  if ($("viewer").hidden || e.altKey || e.ctrlKey || e.metaKey) return;
  const act = { Escape: closeViewer, ArrowLeft: () => step(-1), ArrowRight: () => step(1),
    c: toggleCompare }[e.key];
  if (!act) return;
  e.preventDefault();
  act();
});

// -- start ----------------------------------------------------------------------------------
try {
  await loadInfo();
  nearEnd.observe($("more"));
  loadPage();
} catch (e) {
  $("meta").textContent = "";
  showError(e.message);
}
