// The page's only script: every request goes to this API with the key typed above (kept in
// this tab's sessionStorage, never in the page's address). Text from the server is put in
// the page with textContent, never as HTML.
"use strict";
const $ = (id) => document.getElementById(id);
const keyOf = () => sessionStorage.getItem("pgfleet-key") || "";

async function call(path, options = {}) {
  const headers = { Authorization: "Bearer " + keyOf(), ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function cell(row, text, tag = "td") {
  const el = document.createElement(tag);
  el.textContent = text;
  row.appendChild(el);
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("pgfleet-key", $("api-key").value.trim());
  $("api-key").value = "";
  $("key-state").textContent = keyOf() ? "key set for this tab" : "no key";
  loadModelName();
});

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const meta = $("answer-meta"), hits = $("hits");
  meta.className = "meta"; meta.textContent = "searching..."; hits.replaceChildren();
  const started = performance.now();
  try {
    const answer = await (await call("/v1/search", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query: $("query").value, k: 10 }) })).json();
    const roundTrip = performance.now() - started;
    let text = `answered by ${answer.version} in ${answer.latency_ms.toFixed(1)} ms ` +
      `(${roundTrip.toFixed(0)} ms round trip)` + (answer.cache_hit ? ", cached query" : "");
    if (answer.fallback_from) text += `, fell back from ${answer.fallback_from}`;
    meta.textContent = text;
    meta.dataset.version = answer.version;
    for (const hit of answer.hits) {
      const li = document.createElement("li");
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = `${hit.score.toFixed(3)} · doc ${hit.doc_id} · `;
      li.appendChild(score);
      li.appendChild(document.createTextNode(hit.content.slice(0, 400)));
      hits.appendChild(li);
    }
    if (!answer.hits.length) meta.textContent += "; no hits";
  } catch (error) {
    meta.className = "meta error"; meta.textContent = error.message;
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
  const box = $("ab-report"), plot = $("ab-plot");
  box.replaceChildren(); plot.hidden = true;
  const name = encodeURIComponent($("ab-name").value.trim());
  try {
    const report = await (await call(`/v1/ab/${name}`)).json();
    const table = document.createElement("table");
    const head = table.insertRow();
    for (const title of ["version", "traffic", "requests", "p50 ms", "p95 ms", "cache hits", "MRR"])
      cell(head, title, "th");
    for (const v of report.versions) {
      const row = table.insertRow();
      const lat = v.latency_ms || {};
      cell(row, v.version);
      cell(row, v.shadow ? "shadow" : `${v.traffic_percent}%`);
      cell(row, String(v.requests));
      cell(row, lat.p50 == null ? "-" : lat.p50.toFixed(1));
      cell(row, lat.p95 == null ? "-" : lat.p95.toFixed(1));
      cell(row, v.cache_hit_rate == null ? "-" : `${Math.round(v.cache_hit_rate * 100)}%`);
      cell(row, v.mrr == null ? "-" : v.mrr.toFixed(3));
    }
    box.appendChild(table);
    for (const comparison of report.comparisons || []) {
      const p = document.createElement("p");
      p.textContent = comparison.verdict;
      box.appendChild(p);
    }
    const image = await (await call(`/v1/ab/${name}/latency.png`)).blob();
    plot.src = URL.createObjectURL(image);
    plot.hidden = false;
  } catch (error) {
    const p = document.createElement("p");
    p.className = "error"; p.textContent = error.message;
    box.appendChild(p);
  }
});

$("key-state").textContent = keyOf() ? "key set for this tab" : "no key yet";
loadModelName();
