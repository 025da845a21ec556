// terrapipe serve: map of the products, runs, field labels. Plain JS over the app's JSON API.
"use strict";

const STATE_COLOURS = { done: "#2e7d32", failed: "#c62828", pending: "#f9a825", no_scenes: "#90a4ae" };
const STATE_NAMES = { done: "done", failed: "failed", pending: "pending", no_scenes: "no scenes (skipped)" };

const ui = {
  config: null,
  products: [],
  product: null,       // the product drawn on the map view
  productLayer: null,
  runLayer: null,
  labelsLayer: null,
  parcelsLayer: null,
  candidate: null,     // {geometry, properties} chosen for the next label
  candidateLayer: null,
  drawing: [],         // polygon corners being drawn
  pixelMarker: null,   // the last clicked pixel on the map view
  selectedTile: null,  // the tile clicked on the run view
  runId: null,         // the run drawn on the run view
  view: "map",
};

const $ = (id) => document.getElementById(id);

function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function showMessage(text, ok) {
  const box = $("message");
  box.textContent = text;
  box.className = ok ? "ok" : "";
  box.hidden = !text;
}

async function api(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const text = body && body.error ? body.error : `${response.status} ${response.statusText} (${url})`;
    throw new Error(text);
  }
  return body;
}

// ---- the map ----------------------------------------------------------------------------

// minZoom 0 on the map itself: otherwise Leaflet takes the smallest minZoom of its layers, and a
// product drawn only from its min_zoom on would stop the map from zooming out.
const map = L.map("map", { zoomControl: true, minZoom: 0, maxZoom: 20 });

function aoiLayer(aoi) {
  return L.geoJSON(aoi, { style: { color: "#1d3557", weight: 2, fill: false, dashArray: "4 4" }, interactive: false });
}

function setView(view) {
  ui.view = view;
  for (const name of ["map", "runs", "labels"]) {
    $(`view-${name}`).hidden = name !== view;
    $(`tab-${name}`).classList.toggle("active", name === view);
  }
  for (const layer of [ui.runLayer]) if (layer) (view === "runs" ? layer.addTo(map) : layer.remove());
  for (const layer of [ui.labelsLayer, ui.candidateLayer, ui.parcelsLayer]) if (layer) (view === "labels" ? layer.addTo(map) : layer.remove());
  for (const layer of [ui.productLayer, ui.pixelMarker]) if (layer) (view === "map" ? layer.addTo(map) : layer.remove());
  showMessage("");
  if (view === "runs") loadRuns();
  if (view === "labels") loadLabels();
}

// ---- products -----------------------------------------------------------------------------

function tileUrl(product, label) {
  return `/tiles/${encodeURIComponent(product)}/${encodeURIComponent(label)}/{z}/{x}/{y}.png`;
}

function productLayer(product, label, opacity, minZoom) {
  const layer = L.tileLayer(tileUrl(product, label), { minZoom: minZoom || 0, maxZoom: 20, opacity: opacity, className: `product-${product}` });
  let reported = false;
  layer.on("tileerror", async (event) => {
    if (reported) return;
    reported = true;
    try {
      await api(event.tile.src);
    } catch (err) {
      showMessage(`${product} ${label}: ${err.message}`);
    }
  });
  return layer;
}

function drawProduct() {
  if (ui.productLayer) ui.productLayer.remove();
  ui.productLayer = null;
  const product = ui.product;
  $("legend").innerHTML = "";
  if (!product) return;
  const label = product.labels[Number($("date").value)] || product.labels[0];
  $("date-label").textContent = label;
  if (product.error) { showMessage(product.error); return; }
  if (product.kind === "choropleth") { drawYield(label); return; }
  ui.productLayer = productLayer(product.name, label, Number($("opacity").value) / 100, product.min_zoom);
  if (ui.view === "map") ui.productLayer.addTo(map);
  showZoomHint();
  const legend = product.legend.map((e) => `<div class="legend-item"><span class="swatch" style="background:${esc(e.colour)}"></span>${esc(e.code)} ${esc(e.name)}</div>`);
  if (product.kind === "ids") legend.push(`<div class="hint">${esc(product.bands[0])} parcels, one colour per id</div>`);
  $("legend").innerHTML = legend.join("");
  if (product.kind === "truecolor" || product.kind === "continuous") drawScale(product, label);
}

// Zoomed out beyond a product's min_zoom, one map tile would read more than max_tile_cogs COGs:
// the server leaves such tiles empty, and the page says how far to zoom in.
function showZoomHint() {
  const product = ui.product;
  const hint = $("zoom-hint");
  const below = product && product.min_zoom !== undefined && map.getZoom() < product.min_zoom;
  hint.hidden = !below;
  if (below) {
    hint.textContent = `Zoom in to level ${product.min_zoom} or closer to see ${product.name} (now ${map.getZoom()}): ` +
      `a map tile here spans more than ${product.max_tile_cogs} of its tiles.`;
  }
}
map.on("zoomend", showZoomHint);

async function drawScale(product, label) {
  let s;
  try {
    s = await api(`/api/legend/${encodeURIComponent(product.name)}/${encodeURIComponent(label)}`);
  } catch (err) {
    showMessage(`${product.name} ${label}: ${err.message}`);
    return;
  }
  if (ui.product !== product) return;  // another layer was chosen meanwhile
  const num = (v) => (Math.abs(v) >= 10 ? v.toFixed(1) : v.toPrecision(3));
  const [plo, phi] = s.percentiles;
  if (s.kind === "continuous") {
    $("legend").innerHTML = `<div class="hint">${esc(s.bands[0])}, ${plo}-${phi} % of the date</div>
      <div id="colour-bar" style="height:12px;background:linear-gradient(to right, ${s.colours.join(", ")})"></div>
      <div class="scale"><span>${num(s.low[0])}</span><span>${num(s.high[0])}</span></div>`;
  } else {
    const rows = s.bands.map((b, i) => `<tr><td>${esc(b)}</td><td>${num(s.low[i])} - ${num(s.high[i])}</td></tr>`).join("");
    $("legend").innerHTML = `<div class="hint">R, G, B stretched between the ${plo} and ${phi} % of the date</div><table id="colour-bar"><tbody>${rows}</tbody></table>`;
  }
}

// ColorBrewer YlGn, 5 classes: low to high yield.
const YIELD_COLOURS = ["#ffffcc", "#c2e699", "#78c679", "#31a354", "#006837"];

async function drawYield(season) {
  let body;
  try {
    body = await api(`/api/yield/${encodeURIComponent(season)}`);
  } catch (err) {
    showMessage(`yield ${season}: ${err.message}`);
    return;
  }
  const crops = body.crops;
  const keep = $("yield-crop") ? $("yield-crop").value : null;
  const crop = crops.includes(keep) ? keep : crops[0];
  const values = body.features.map((f) => (f.properties.forecast[crop] || {}).forecast).filter((v) => v !== null && v !== undefined);
  const lo = Math.min(...values), hi = Math.max(...values);
  const step = (hi - lo) / YIELD_COLOURS.length || 1;
  const colour = (v) => (v === null || v === undefined ? "#cccccc" : YIELD_COLOURS[Math.min(YIELD_COLOURS.length - 1, Math.floor((v - lo) / step))]);
  if (ui.productLayer) ui.productLayer.remove();
  ui.productLayer = L.geoJSON(body, {
    style: (f) => ({ color: "#333", weight: 1, fillOpacity: Number($("opacity").value) / 100, fillColor: colour((f.properties.forecast[crop] || {}).forecast) }),
    onEachFeature: (f, layer) => layer.on("click", () => showCounty(f.properties, body)),
  });
  ui.productLayer.setOpacity = (o) => ui.productLayer.setStyle({ fillOpacity: o });
  if (ui.view === "map") ui.productLayer.addTo(map);
  const bins = YIELD_COLOURS.map((c, i) => `<div class="legend-item"><span class="swatch" style="background:${c}"></span>${(lo + i * step).toFixed(2)} - ${(lo + (i + 1) * step).toFixed(2)} t/ha</div>`);
  $("legend").innerHTML = `<label for="yield-crop">Crop</label><select id="yield-crop">${crops.map((c) => `<option${c === crop ? " selected" : ""}>${esc(c)}</option>`).join("")}</select>` + bins.join("");
  $("yield-crop").addEventListener("change", () => drawYield(season));
}

function showCounty(props, body) {
  const rows = Object.entries(props.forecast).map(([c, f]) => `<tr><td>${esc(c)}</td><td>${valueText(f.forecast)}</td><td>${valueText(f.lower)} - ${valueText(f.upper)}</td></tr>`).join("");
  const p = body.item.properties;
  $("info").innerHTML = `<h2>${esc(props.name || "county " + props.county_id)}, ${body.season}</h2>
    <table id="county-forecast"><thead><tr><th>crop</th><th>forecast t/ha</th><th>interval</th></tr></thead><tbody>${rows || "<tr><td colspan=3>no forecast</td></tr>"}</tbody></table>
    <h2>STAC item</h2><table id="stac-item"><tbody><tr><td>id</td><td><code>${esc(body.item.id)}</code></td></tr>
    <tr><td>model</td><td>${esc(JSON.stringify(p["terrapipe:model"] || {}))}</td></tr></tbody></table>`;
}

function chooseProduct(name) {
  ui.product = ui.products.find((p) => p.name === name) || null;
  const slider = $("date");
  slider.max = ui.product ? ui.product.labels.length - 1 : 0;
  slider.value = slider.max;
  slider.disabled = !ui.product || ui.product.labels.length < 2;
  drawProduct();
}

async function loadProducts() {
  const body = await api("/api/products");
  ui.products = body.products;
  const box = $("products");
  box.innerHTML = "";
  if (body.message) showMessage(body.message);
  for (const p of body.products) {
    const id = `product-${p.name}`;
    box.insertAdjacentHTML("beforeend",
      `<label><input type="radio" name="product" id="${esc(id)}" value="${esc(p.name)}"> ${esc(p.name)} <span class="hint">(${p.labels.length} date${p.labels.length === 1 ? "" : "s"})</span></label>`);
  }
  box.querySelectorAll("input").forEach((input) => input.addEventListener("change", () => chooseProduct(input.value)));
  if (body.products.length) {
    const first = body.products[0];
    $(`product-${first.name}`).checked = true;
    chooseProduct(first.name);
  }
}

function valueText(v) {
  return v === null ? "nodata" : (typeof v === "number" && !Number.isInteger(v) ? v.toPrecision(5) : String(v));
}

async function showPixel(latlng) {
  const product = ui.product;
  if (!product || product.kind === "choropleth") return;  // counties answer their own clicks
  const label = product.labels[Number($("date").value)];
  const info = $("info");
  if (ui.pixelMarker) ui.pixelMarker.remove();
  ui.pixelMarker = L.circleMarker(latlng, { radius: 6, color: "#d62828", weight: 2, fill: false, interactive: false }).addTo(map);
  try {
    const body = await api(`/api/point/${encodeURIComponent(product.name)}/${encodeURIComponent(label)}?lon=${latlng.lng}&lat=${latlng.lat}`);
    const p = body.item.properties;
    const rows = Object.entries(body.values).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(valueText(v))}</td></tr>`).join("");
    const checksums = Object.entries(p["terrapipe:model_checksums"] || {}).map(([k, v]) => `<tr><td>model ${esc(k)}</td><td><code>${esc(v)}</code></td></tr>`).join("");
    info.innerHTML = `
      <table id="pixel-values"><tbody>
        <tr><td>lon, lat</td><td>${latlng.lng.toFixed(6)}, ${latlng.lat.toFixed(6)}</td></tr>${rows}
      </tbody></table>
      <h2>STAC item</h2>
      <table id="stac-item"><tbody>
        <tr><td>id</td><td><code>${esc(body.item.id)}</code></td></tr>
        <tr><td>tile</td><td>${esc(body.tile_id)}</td></tr>
        <tr><td>datetime</td><td>${esc(p.datetime || "")}</td></tr>
        <tr><td>stage</td><td>${esc(p["terrapipe:stage"])} ${esc(p["terrapipe:stage_version"])}</td></tr>
        <tr><td>software</td><td>terrapipe ${esc(p["terrapipe:software_version"])}</td></tr>
        <tr><td>lineage</td><td>${esc(p["processing:lineage"] || "")}</td></tr>
        <tr><td>inputs</td><td>${esc((p["terrapipe:input_items"] || []).length)} items</td></tr>
        ${checksums || "<tr><td>models</td><td>none</td></tr>"}
      </tbody></table>
      <details><summary>full item JSON</summary><pre>${esc(JSON.stringify(body.item, null, 1))}</pre></details>`;
  } catch (err) {
    info.innerHTML = "";
    showMessage(err.message);
  }
}

// ---- runs ---------------------------------------------------------------------------------

async function loadRuns() {
  const tbody = $("runs-table").querySelector("tbody");
  try {
    const body = await api("/api/runs");
    tbody.innerHTML = "";
    if (!body.runs.length) {
      $("run-detail").innerHTML = `<p class="hint">No runs of ${esc(ui.config.province)} in ${esc(ui.config.store)} yet.</p>`;
      return;
    }
    for (const r of body.runs) {
      const c = r.counts;
      const tr = document.createElement("tr");
      tr.dataset.run = r.run_id;
      tr.innerHTML = `<td>${esc(r.window.join(" to "))}<br><span class="hint">${esc(r.products.join(", "))}</span></td><td class="state-${esc(r.state)}">${esc(r.state)}</td><td>${esc(r.outcome || "-")}<br><span class="hint">${esc(r.ended || "")}</span></td><td>${c.done} / ${c.failed} / ${c.pending} / ${c.no_scenes}</td>`;
      tr.addEventListener("click", () => loadRun(r.run_id));
      tbody.appendChild(tr);
    }
    loadRun(body.runs[0].run_id);
  } catch (err) {
    showMessage(err.message);
  }
}

async function loadRun(runId) {
  document.querySelectorAll("#runs-table tbody tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.run === runId));
  const body = await api(`/api/runs/${encodeURIComponent(runId)}`);
  const r = body.report;
  ui.runId = runId;
  $("run-detail").innerHTML = `<p><b>${esc(r.run_id)}</b>: <span id="run-state" class="state-${esc(r.state)}">${esc(r.state)}</span>
    <a id="report-download" href="/api/runs/${encodeURIComponent(r.run_id)}/report.json" download>run report (JSON)</a></p>` +
    scenesAtFault(r.failed_scenes || {});
  $("run-legend").innerHTML = Object.entries(STATE_NAMES).map(([s, n]) => `<div><span class="swatch" style="background:${STATE_COLOURS[s]}"></span>${n}</div>`).join("");
  $("tile-detail").innerHTML = `<p class="hint">Click a tile for its products and failures.</p>`;
  if (ui.runLayer) ui.runLayer.remove();
  ui.selectedTile = null;
  ui.runLayer = L.geoJSON(body.tiles, {
    style: (f) => ({ color: "#333", weight: 1, fillColor: STATE_COLOURS[f.properties.state] || "#000", fillOpacity: 0.55 }),
    onEachFeature: (f, layer) => layer.on("click", () => {
      if (ui.selectedTile) ui.runLayer.resetStyle(ui.selectedTile);
      ui.selectedTile = layer;
      layer.setStyle({ color: "#000", weight: 4 });
      showTile(layer.feature.properties);
    }),
  });
  if (ui.view === "runs") {
    ui.runLayer.addTo(map);
    map.fitBounds(ui.runLayer.getBounds(), { padding: [20, 20] });
  }
}

// The scenes whose file or metadata failed products of a run (STAC item -> tiles), and the config
// line that runs without them, as `terrapipe status RUN` prints it.
function scenesAtFault(scenes) {
  const ids = Object.keys(scenes);
  if (!ids.length) return "";
  const rows = ids.map((id) => `<tr><td>${esc(id)}</td><td>${scenes[id].length}<br><span class="hint">${scenes[id].map(esc).join(", ")}</span></td></tr>`).join("");
  return `<div id="run-scenes"><h2>Scenes at fault</h2>
    <table><thead><tr><th>STAC item</th><th>tiles</th></tr></thead><tbody>${rows}</tbody></table>
    <p class="hint">To run without them, list them in the config:</p>
    <pre id="run-exclude">stac: {exclude_items: [${ids.map(esc).join(", ")}]}</pre></div>`;
}

// A run in progress: its tile states are read again while the view is open, RUN_REFRESH_MS
// after the last answer and never sooner than that answer took: a read is every marker of the
// run (tens of thousands for a province's month, longer than the interval on an object store),
// so reads never overlap and a slow store is asked less often.
const RUN_REFRESH_MS = 10000;

async function refreshRunForever() {
  const started = performance.now();
  try {
    await refreshRun();
  } finally {
    setTimeout(refreshRunForever, Math.max(RUN_REFRESH_MS, performance.now() - started));
  }
}

async function refreshRun() {
  if (ui.view !== "runs" || !ui.runId || !ui.runLayer) return;
  const runId = ui.runId;
  let body;
  try {
    body = await api(`/api/runs/${encodeURIComponent(runId)}`);
  } catch (err) {
    return;  // the next refresh tries again; the last states stay drawn
  }
  if (ui.runId !== runId) return;  // another run was opened meanwhile: its states are drawn
  const byId = new Map(body.tiles.features.map((f) => [f.properties.tile_id, f.properties]));
  ui.runLayer.eachLayer((layer) => {
    const now = byId.get(layer.feature.properties.tile_id);
    if (!now) return;
    layer.feature.properties = now;
    layer.setStyle({ fillColor: STATE_COLOURS[now.state] || "#000" });
  });
  const state = $("run-state");
  if (state) { state.textContent = body.report.state; state.className = `state-${body.report.state}`; }
}

function showTile(tile) {
  const rows = tile.products.map((p) => `<tr><td>${esc(p.product)}</td><td class="state-${esc(p.state)}">${esc(STATE_NAMES[p.state] || p.state)}</td><td>${p.done}/${p.labels}</td></tr>` +
    (p.state === "failed" ? `<tr class="failure"><td colspan="3"><b>${esc(p.kind)}</b> ${esc(p.error)}: ${esc(p.message)}</td></tr>` : "")).join("");
  $("tile-detail").innerHTML = `<h2>Tile ${esc(tile.tile_id)}: <span class="state-${esc(tile.state)}">${esc(STATE_NAMES[tile.state] || tile.state)}</span></h2>
    <p class="hint">${tile.seconds} s, ${tile.bytes_written} bytes written</p>
    <table><thead><tr><th>product</th><th>state</th><th>dates done</th></tr></thead><tbody>${rows}</tbody></table>`;
}

// ---- labels -------------------------------------------------------------------------------

function parcelsLabel() {
  const parcels = ui.products.find((p) => p.name === "parcels" && !p.error);
  return parcels ? parcels.labels[parcels.labels.length - 1] : null;
}

function renderLabels(state) {
  $("labels-path").textContent = `Saved to ${state.path}; terrapipe season needs ${state.min_per_crop} per crop.`;
  const rows = state.crops.map((c) => {
    const n = state.counts[c] || 0;
    const pct = Math.min(100, (100 * n) / state.min_per_crop);
    return `<tr data-crop="${esc(c)}"><td>${esc(c)}</td><td class="count">${n}</td><td>/ ${state.min_per_crop}</td><td><span class="bar${n < state.min_per_crop ? " short" : ""}"><span style="width:${pct}%"></span></span></td></tr>`;
  });
  $("counts").querySelector("tbody").innerHTML = rows.join("");
  $("ready").textContent = state.ready ? "Every crop has enough labels for terrapipe season." : "Some crops need more labels.";
  $("undo-label").disabled = !state.features.length;
  if (ui.labelsLayer) ui.labelsLayer.remove();
  ui.labelsLayer = L.geoJSON(state, {
    style: { color: "#6a1b9a", weight: 2, fillOpacity: 0.25 },
    pointToLayer: (f, latlng) => L.circleMarker(latlng, { radius: 6, color: "#6a1b9a" }),
    onEachFeature: (f, layer) => layer.bindTooltip(f.properties.crop),
  });
  if (ui.view === "labels") ui.labelsLayer.addTo(map);
}

async function loadLabels() {
  const crops = ui.config.crops;
  const select = $("crop");
  if (!select.options.length) select.innerHTML = crops.map((c) => `<option value="${esc(c)}">${esc(c)}</option>`).join("");
  const label = parcelsLabel();
  if (!ui.parcelsLayer && label) ui.parcelsLayer = productLayer("parcels", label, 0.45);
  if (ui.parcelsLayer && ui.view === "labels") ui.parcelsLayer.addTo(map);
  if (!label) $("mode-draw").checked = true;
  try {
    renderLabels(await api("/api/labels"));
  } catch (err) {
    showMessage(err.message);
  }
}

function setCandidate(feature, text) {
  ui.candidate = feature;
  if (ui.candidateLayer) ui.candidateLayer.remove();
  ui.candidateLayer = null;
  if (feature) {
    ui.candidateLayer = L.geoJSON(feature, { style: { color: "#ff6f00", weight: 3, dashArray: "6 4", fillOpacity: 0.2 } });
    if (ui.view === "labels") ui.candidateLayer.addTo(map);
  }
  $("candidate").textContent = text || "No field chosen.";
  $("save-label").disabled = !feature;
  $("clear-candidate").disabled = !feature && !ui.drawing.length;
}

function drawingFeature(closed) {
  const ring = ui.drawing.map((ll) => [ll.lng, ll.lat]);
  if (closed) return { type: "Feature", geometry: { type: "Polygon", coordinates: [[...ring, ring[0]]] }, properties: {} };
  return { type: "Feature", geometry: { type: "LineString", coordinates: ring }, properties: {} };
}

async function labelClick(latlng) {
  const mode = document.querySelector("input[name=mode]:checked").value;
  if (mode === "draw") {
    ui.drawing.push(latlng);
    if (ui.candidateLayer) ui.candidateLayer.remove();
    ui.candidate = null;
    ui.candidateLayer = ui.drawing.length > 1 ? L.geoJSON(drawingFeature(false), { style: { color: "#ff6f00" } }) : L.circleMarker(latlng, { radius: 4, color: "#ff6f00" });
    ui.candidateLayer.addTo(map);
    $("finish-polygon").disabled = ui.drawing.length < 3;
    $("clear-candidate").disabled = false;
    $("save-label").disabled = true;
    $("candidate").textContent = `${ui.drawing.length} corner(s); close the polygon when done.`;
    return;
  }
  const label = parcelsLabel();
  if (!label) {
    showMessage("The store holds no parcels product: draw the field as a polygon instead.");
    return;
  }
  try {
    const parcel = await api(`/api/parcel/${encodeURIComponent(label)}?lon=${latlng.lng}&lat=${latlng.lat}`);
    showMessage("");
    setCandidate(parcel, `Parcel ${parcel.properties.parcel_id} on tile ${parcel.properties.tile_id}.`);
  } catch (err) {
    showMessage(err.message);
  }
}

async function saveLabel() {
  if (!ui.candidate) return;
  const crop = $("crop").value;
  const props = ui.candidate.properties || {};
  try {
    const state = await api("/api/labels", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ crop: crop, geometry: ui.candidate.geometry, properties: { parcel_id: props.parcel_id, tile_id: props.tile_id } }),
    });
    ui.drawing = [];
    setCandidate(null, `Saved a ${crop} label.`);
    renderLabels(state);
    showMessage(`Saved: ${crop} (${state.counts[crop]} of ${state.min_per_crop}).`, true);
  } catch (err) {
    showMessage(`Not saved: ${err.message}`);
  }
}

async function undoLabel() {
  try {
    const state = await api("/api/labels/undo", { method: "POST" });
    renderLabels(state);
    showMessage("Removed the last label.", true);
  } catch (err) {
    showMessage(err.message);
  }
}

// ---- start --------------------------------------------------------------------------------

async function start() {
  try {
    ui.config = await api("/api/config");
  } catch (err) {
    showMessage(err.message);
    return;
  }
  $("province").textContent = ui.config.province;
  $("store").textContent = ui.config.store;
  const [w, s, e, n] = ui.config.bounds;
  map.fitBounds([[s, w], [n, e]]);
  aoiLayer(ui.config.aoi).addTo(map);
  L.control.scale({ imperial: false }).addTo(map);
  document.querySelectorAll("nav .tab").forEach((b) => b.addEventListener("click", () => setView(b.dataset.view)));
  $("date").addEventListener("input", drawProduct);
  $("opacity").addEventListener("input", () => ui.productLayer && ui.productLayer.setOpacity(Number($("opacity").value) / 100));
  map.on("click", (event) => {
    if (ui.view === "map") showPixel(event.latlng);
    else if (ui.view === "labels") labelClick(event.latlng);
  });
  $("finish-polygon").addEventListener("click", () => {
    const feature = drawingFeature(true);
    ui.drawing = [];
    $("finish-polygon").disabled = true;
    setCandidate(feature, "A drawn polygon.");
  });
  $("clear-candidate").addEventListener("click", () => { ui.drawing = []; $("finish-polygon").disabled = true; setCandidate(null); });
  $("save-label").addEventListener("click", saveLabel);
  $("undo-label").addEventListener("click", undoLabel);
  setTimeout(refreshRunForever, RUN_REFRESH_MS);
  try {
    await loadProducts();
  } catch (err) {
    showMessage(err.message);
  }
  document.body.dataset.ready = "1";
}

start();
