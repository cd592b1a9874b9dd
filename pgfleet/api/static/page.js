// The page's only script: every request goes to this API with the key typed above (kept in
// this tab's sessionStorage, never in the page's address). Text from the server is put in
// the page with textContent, never as HTML.
"use strict";
const $ = (id) => document.getElementById(id);
const KEY = "pgfleet-key";
const keyOf = () => sessionStorage.getItem(KEY) || "";

// The same tab keeps the same version of an A/B split: a random id of this tab (not a secret,
// sent as the search's "key", the A/B assignment key).
function tabId() {
  let id = sessionStorage.getItem("pgfleet-tab");
  if (!id) {
    const bytes = crypto.getRandomValues(new Uint8Array(12));
    id = "page-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem("pgfleet-tab", id);
  }
  return id;
}

async function call(path, options = {}) {
  if (!keyOf()) throw new Error("no API key: type one above and press Use");
  const headers = { Authorization: "Bearer " + keyOf(), ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function cell(row, text, tag = "td") {
  const el = document.createElement(tag);
  if (tag === "th") el.scope = "col";
  el.textContent = text;
  row.appendChild(el);
}

const fixed = (value, digits) => (value == null ? "-" : value.toFixed(digits));
const percent = (value) => (value == null ? "-" : `${Math.round(value * 100)}%`);

function showKeyState() {
  $("key-state").textContent = keyOf() ? "key set for this tab" : "no key yet";
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
  $("api-key").value = "";
  showKeyState();
  loadModelName();
});

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const meta = $("answer-meta"), hits = $("hits"), button = $("search-button");
  meta.className = "meta"; meta.textContent = "searching..."; delete meta.dataset.version;
  hits.replaceChildren(); button.disabled = true;
  const started = performance.now();
  try {
    const answer = await (await call("/v1/search", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query: $("query").value, k: 10, key: tabId() }) })).json();
    const roundTrip = performance.now() - started;
    let text = `answered by ${answer.version} in ${answer.latency_ms.toFixed(1)} ms ` +
      `(${roundTrip.toFixed(0)} ms round trip)` + (answer.cache_hit ? ", cached query" : "");
    if (answer.fallback_from) text += `, fell back from ${answer.fallback_from}`;
    if (answer.incomplete) text += ", still being backfilled: some docs are missing";
    text += answer.hits.length ? `; ${answer.hits.length} hits` : "; no hits";
    meta.textContent = text;
    meta.dataset.version = answer.version;
    for (const hit of answer.hits) {
      const li = document.createElement("li");
      li.dataset.docId = String(hit.doc_id);
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = `${hit.score.toFixed(3)} · doc ${hit.doc_id} · `;
      li.appendChild(score);
      const content = hit.content.length > 400 ? hit.content.slice(0, 400) + "…" : hit.content;
      li.appendChild(document.createTextNode(content));
      hits.appendChild(li);
    }
  } catch (error) {
    meta.className = "meta error"; meta.textContent = error.message;
  } finally {
    button.disabled = false;
  }
});

async function loadModelName() {
  if (!keyOf() || $("ab-name").value) return;
  try {
    const models = await (await call("/v1/models")).json();
    const active = models.data.find((m) => m.kind === "embedding" && m.active);
    if (active) $("ab-name").value = active.name;
  } catch (error) { /* the report says what is wrong */ }
}

$("ab-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const box = $("ab-report"), plot = $("ab-plot"), button = $("ab-button");
  box.replaceChildren(); plot.hidden = true; button.disabled = true;
  if (plot.src) { URL.revokeObjectURL(plot.src); plot.removeAttribute("src"); }
  const name = encodeURIComponent($("ab-name").value.trim());
  try {
    const report = await (await call(`/v1/ab/${name}`)).json();
    const table = document.createElement("table");
    table.id = "ab-table";
    table.createCaption().textContent =
      `${report.name}: the last ${Math.round(report.since_s / 3600)} h of searches`;
    const head = table.createTHead().insertRow();
    for (const title of ["version", "traffic", "requests", "p50 ms", "p95 ms", "errors",
                         "cache hits", "MRR", "coverage"])
      cell(head, title, "th");
    const body = table.createTBody();
    for (const v of report.versions) {
      const row = body.insertRow();
      const lat = v.latency_ms || {};
      cell(row, v.version);
      cell(row, v.shadow ? "shadow" : `${v.traffic_percent}%`);
      cell(row, String(v.requests));
      cell(row, fixed(lat.p50, 1));
      cell(row, fixed(lat.p95, 1));
      cell(row, v.errors == null ? "-" : String(v.errors));
      cell(row, percent(v.cache_hit_rate));
      cell(row, fixed(v.mrr, 3));
      cell(row, percent(v.coverage));
    }
    box.appendChild(table);
    if (!report.versions.length) {
      const p = document.createElement("p");
      p.textContent = "no version of this model is serving";
      box.appendChild(p);
    }
    for (const comparison of report.comparisons || []) {
      const p = document.createElement("p");
      p.textContent = comparison.verdict;
      box.appendChild(p);
    }
    const image = await (await call(`/v1/ab/${name}/latency.png`)).blob();
    plot.alt = `${report.name}: search latency distribution per version`;
    plot.src = URL.createObjectURL(image);
    plot.hidden = false;
  } catch (error) {
    const p = document.createElement("p");
    p.className = "error"; p.textContent = error.message;
    box.appendChild(p);
  } finally {
    button.disabled = false;
  }
});

showKeyState();
loadModelName();
