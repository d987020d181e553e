// layertap debug page: pick layers, upload an image, see each channel as a heatmap; explain a class.
// Everything comes from this service: /info, /shapes, /labels, /features (encoding=base64), /explain (format=png),
// and /v1/embeddings to rank images by a text, for models with a text tower (CLIP, SigLIP).
"use strict";

const MAX_CHANNELS = 64;
const state = { file: null, layers: [], labels: null, info: null, generation: 0 };
const $ = (id) => document.getElementById(id);

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function getJSON(path) {
  const response = await fetch(path, { headers: authHeaders() });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// The model every request names: the picker's choice, or the server's default before /info answers.
function modelQuery(extra = {}) {
  const model = $("model-select").value;
  return new URLSearchParams(model ? { model, ...extra } : extra);
}

// Forget what the page showed for the previous model: its maps, classes and explanation. An answer
// still in flight for it is dropped when it arrives (state.generation has moved on).
function clearResults() {
  state.generation += 1;
  $("maps").replaceChildren();
  $("classes").hidden = true;
  $("explain-panel").hidden = true;
  const image = $("explain-image");
  if (image.src) URL.revokeObjectURL(image.src);
  image.removeAttribute("src");
  image.hidden = true;
  $("explain-caption").textContent = "";
  $("explain-target").value = "";
  setStatus("");
}

async function loadModel() {
  clearResults();
  try {
    const info = await getJSON(`/info?${modelQuery()}`);
    state.info = info;
    const picker = $("model-select");
    if (!picker.options.length) {
      picker.replaceChildren(...info.models.map((name) => new Option(name, name, false, name === info.model)));
    }
    $("model-line").textContent =
      `${info.model} · weights ${info.weights} · ${info.device} ${info.dtype} · ${info.layers} layers`;
    const shapes = await getJSON(`/shapes?${modelQuery({ ops: "true" })}`); // op layers too (layer1.0.add, flatten)
    state.layers = shapes.layers.filter((layer) => layer.shape);
    $("layer-select").replaceChildren();
    fillLayerPicker("");
    const crop = info.preprocessing.crop;
    $("shape-size").textContent = `${crop}×${crop}`;
    const body = $("shape-table").querySelector("tbody");
    body.replaceChildren(...state.layers.map((layer) => row([layer.name, kindOf(layer), `[${layer.shape.join(", ")}]`])));
    state.labels = info.labels ? (await getJSON(`/labels?${modelQuery()}`)).labels : null;
    $("search-panel").hidden = !info.text;
    fillExplainLayers();
  } catch (error) {
    setStatus(`cannot describe the model: ${error.message}`, true);
  }
}

// A module's class (Conv2d), or "function op" / "method op" for an op layer
function kindOf(layer) {
  return layer.op ? `${layer.op} op` : layer.type;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.appendChild(td);
  }
  return tr;
}

function fillLayerPicker(filter) {
  const select = $("layer-select");
  const chosen = new Set([...select.selectedOptions].map((o) => o.value));
  if (!select.options.length) chosen.add(state.info.default_layer);
  select.replaceChildren();
  for (const layer of state.layers) {
    if (filter && !layer.name.includes(filter)) continue;
    const op = layer.op ? "  (op)" : "";
    const option = new Option(`${layer.name}  [${layer.shape.slice(1).join("×")}]${op}`, layer.name);
    option.selected = chosen.has(layer.name);
    select.appendChild(option);
  }
}

function chooseFile(file) {
  if (!file) return;
  state.file = file;
  const preview = $("preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("run").disabled = false;
  setStatus(`${file.name} (${Math.round(file.size / 1024)} kB)`);
}

function decodeFloats(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}

// A perceptually ordered dark-blue → yellow ramp (close to viridis), 5 stops.
const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function color(t) {
  const x = Math.min(Math.max(t, 0), 1) * (RAMP.length - 1);
  const i = Math.min(Math.floor(x), RAMP.length - 2);
  const f = x - i;
  return RAMP[i].map((c, k) => Math.round(c + f * (RAMP[i + 1][k] - c)));
}

function heatmap(values, offset, height, width) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < height * width; i++) {
    const v = values[offset + i];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const image = canvas.getContext("2d").createImageData(width, height);
  const span = hi - lo || 1;
  for (let i = 0; i < height * width; i++) {
    const [r, g, b] = color((values[offset + i] - lo) / span);
    image.data.set([r, g, b, 255], i * 4);
  }
  canvas.getContext("2d").putImageData(image, 0, 0);
  return canvas;
}

function showLayer(name, feature, layer) {
  const layout = layer.layout;
  const values = decodeFloats(feature.data);
  const shape = feature.shape;
  const box = document.createElement("div");
  box.className = "layer";
  box.dataset.layer = name;
  const title = document.createElement("h3");
  const code = document.createElement("code");
  code.textContent = `[${shape.join(", ")}]`;
  title.append(`${name} `, code);
  box.appendChild(title);
  const grid = document.createElement("div");
  grid.className = "grid";
  if (shape.length === 4 && layout !== "tokens" && shape[1] * shape[2] * shape[3] > Math.max(shape[1], shape[3])) {
    // nchw: one map per channel, contiguous; nhwc (Swin's stages): gather each channel first.
    const [channels, height, width] = layout === "nhwc" ? [shape[3], shape[1], shape[2]] : shape.slice(1);
    for (let c = 0; c < Math.min(channels, MAX_CHANNELS); c++) {
      const plane = layout === "nhwc" ? channelOf(values, c, channels, height * width) : values;
      const canvas = heatmap(plane, layout === "nhwc" ? 0 : c * height * width, height, width);
      canvas.title = `${name} channel ${c}`;
      grid.appendChild(canvas);
    }
    if (channels > MAX_CHANNELS) {
      const more = document.createElement("p");
      more.textContent = `first ${MAX_CHANNELS} of ${channels} channels`;
      box.appendChild(more);
    }
  } else if (shape.length === 3 && layout === "tokens" && patchGrid(shape[1] - layer.prefix_tokens) > 1) {
    // A ViT's tokens: the patches laid out as their grid, one map per feature (the class and register
    // tokens before them are not patches of the image, and are left out).
    const [, tokens, features] = shape;
    const prefix = layer.prefix_tokens;
    const side = patchGrid(tokens - prefix);
    const patches = values.subarray(prefix * features);
    for (let c = 0; c < Math.min(features, MAX_CHANNELS); c++) {
      const canvas = heatmap(channelOf(patches, c, features, side * side), 0, side, side);
      canvas.title = `${name} feature ${c}`;
      grid.appendChild(canvas);
    }
    const more = document.createElement("p");
    more.textContent = `${side}×${side} patches` + (prefix ? `, ${prefix} token(s) before them not drawn` : "") +
      (features > MAX_CHANNELS ? `; first ${MAX_CHANNELS} of ${features} features` : "");
    box.appendChild(more);
  } else if (shape.length === 3 && layout === "tokens") {
    // Tokens that are no patch grid: one map, a row per token.
    const [, tokens, width] = shape;
    const canvas = heatmap(values, 0, tokens, width);
    canvas.className = "tokens";
    canvas.title = `${name}: ${tokens} tokens × ${width}`;
    grid.appendChild(canvas);
  } else {
    // A vector (the classifier) or a pooled map (1×1 per channel): one strip, scaled across all values.
    const length = values.length;
    const canvas = heatmap(values, 0, 1, length);
    canvas.className = "vector";
    canvas.title = `${name}: ${length} values`;
    grid.appendChild(canvas);
  }
  box.appendChild(grid);
  $("maps").appendChild(box);
}

// The side of a square grid of this many patches, or 0 when they make none.
function patchGrid(patches) {
  const side = Math.round(Math.sqrt(patches));
  return side * side === patches ? side : 0;
}

function channelOf(values, channel, channels, pixels) {
  const plane = new Float32Array(pixels);
  for (let i = 0; i < pixels; i++) plane[i] = values[i * channels + channel];
  return plane;
}

function showTop5(logits) {
  const max = Math.max(...logits);
  const exp = logits.map((v) => Math.exp(v - max));
  const sum = exp.reduce((a, b) => a + b, 0);
  const ranked = [...exp.keys()].sort((a, b) => exp[b] - exp[a]).slice(0, 5);
  $("top5").replaceChildren(
    ...ranked.map((index) => {
      const li = document.createElement("li");
      li.dataset.class = index;
      li.title = "explain this class";
      li.addEventListener("click", () => explain(index));
      const p = exp[index] / sum;
      li.textContent = `${state.labels[index]} — ${(100 * p).toFixed(1)}%`;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.max(2, 200 * p)}px`;
      li.appendChild(bar);
      return li;
    }),
  );
  $("classes").hidden = false;
}

async function run() {
  const chosen = [...$("layer-select").selectedOptions].map((o) => o.value);
  if (!chosen.length) return setStatus("pick at least one layer", true);
  const classifier = state.info.classifier;
  const wanted = state.labels && !chosen.includes(classifier) ? [...chosen, classifier] : chosen;
  $("run").disabled = true;
  setStatus("computing…");
  const started = performance.now();
  const generation = state.generation;
  try {
    const query = modelQuery({ layers: wanted.join(","), encoding: "base64" });
    const response = await fetch(`/features?${query}`, {
      method: "POST",
      headers: { "Content-Type": state.file.type || "application/octet-stream", ...authHeaders() },
      body: state.file,
    });
    const body = await response.json();
    if (generation !== state.generation) return; // the model changed while this was computed
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    $("maps").replaceChildren();
    const described = Object.fromEntries(state.layers.map((layer) => [layer.name, layer]));
    for (const name of chosen) showLayer(name, body.features[name], described[name]);
    if (state.labels) showTop5(Array.from(decodeFloats(body.features[classifier].data)));
    $("explain-panel").hidden = false;
    const ms = Math.round(performance.now() - started);
    setStatus(`done in ${ms} ms (inference ${response.headers.get("X-Inference-Time")} ms)`);
  } catch (error) {
    if (generation === state.generation) setStatus(error.message, true);
  } finally {
    $("run").disabled = false;
  }
}

// The layers a class-activation map can read, as /info lists them; the last is the default.
function fillExplainLayers() {
  const spatial = state.info.spatial_layers;
  $("explain-layer").replaceChildren(...spatial.map((name, i) => new Option(name, name, false, i === spatial.length - 1)));
}

async function explain(target) {
  if (!state.file) return setStatus("choose an image first", true);
  const method = $("explain-method").value;
  const chosen = target ?? ($("explain-target").value === "" ? null : Number($("explain-target").value));
  const params = { method, format: "png" };
  if (method !== "integrated_gradients") params.layer = $("explain-layer").value;
  else params.steps = "32";
  if (chosen !== null) params.target = String(chosen);
  $("explain-run").disabled = true;
  $("explain-caption").textContent = "explaining…";
  const generation = state.generation;
  try {
    const response = await fetch(`/explain?${modelQuery(params)}`, {
      method: "POST",
      headers: { "Content-Type": state.file.type || "application/octet-stream", ...authHeaders() },
      body: state.file,
    });
    if (!response.ok) {
      const body = await response.json();
      throw new Error(body.error ? body.error.message : response.statusText);
    }
    const blob = await response.blob();
    if (generation !== state.generation) return; // the model changed while this was explained
    const image = $("explain-image");
    if (image.src) URL.revokeObjectURL(image.src);
    image.src = URL.createObjectURL(blob);
    image.hidden = false;
    const index = Number(response.headers.get("X-Target"));
    const name = state.labels ? state.labels[index] : `class ${index}`;
    const p = (100 * Number(response.headers.get("X-Probability"))).toFixed(1);
    const where = params.layer ? ` at ${params.layer}` : "";
    $("explain-caption").textContent = `${method}${where}: ${name} (${p}%)`;
  } catch (error) {
    if (generation === state.generation) $("explain-caption").textContent = error.message;
  } finally {
    $("explain-run").disabled = false;
  }
}

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// One /v1/embeddings request for the text and the images (unit vectors in one space): rank by cosine.
async function search() {
  const text = $("search-text").value.trim();
  const files = [...$("search-images").files];
  if (!text || !files.length) return ($("search-caption").textContent = "choose images and type a text");
  const generation = state.generation;
  $("search-caption").textContent = "embedding…";
  try {
    const images = await Promise.all(files.map(readAsDataURL));
    const response = await fetch("/v1/embeddings", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ model: state.info.model, input: [text, ...images] }),
    });
    const body = await response.json();
    if (generation !== state.generation) return;
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    const [query, ...vectors] = body.data.map((item) => item.embedding);
    const scored = vectors.map((vector, i) => ({
      file: files[i], image: images[i], score: vector.reduce((sum, v, k) => sum + v * query[k], 0),
    }));
    scored.sort((a, b) => b.score - a.score);
    $("search-results").replaceChildren(...scored.map(({ file, image, score }) => {
      const li = document.createElement("li");
      const img = document.createElement("img");
      img.src = image;
      img.alt = file.name;
      li.append(img, ` ${file.name}: cosine ${score.toFixed(3)}`);
      return li;
    }));
    $("search-caption").textContent = `ranked ${files.length} images by "${text}"`;
  } catch (error) {
    if (generation === state.generation) $("search-caption").textContent = error.message;
  }
}

$("search-run").addEventListener("click", search);
$("explain-run").addEventListener("click", () => explain(null));
$("explain-method").addEventListener("change", () => {
  $("explain-layer").disabled = $("explain-method").value === "integrated_gradients";
});
$("file-input").addEventListener("change", (event) => chooseFile(event.target.files[0]));
$("layer-filter").addEventListener("input", (event) => fillLayerPicker(event.target.value.trim()));
$("run").addEventListener("click", run);
$("api-key").addEventListener("change", loadModel);
$("model-select").addEventListener("change", loadModel);
const zone = $("drop-zone");
zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (event) => {
  event.preventDefault();
  zone.classList.remove("over");
  chooseFile(event.dataTransfer.files[0]);
});
loadModel();
