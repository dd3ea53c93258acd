// Draw-and-classify page. It talks only to TensorFlow Serving's REST API: model status and
// metadata, then `:predict` on the `serve_images` signature with {"b64": PNG or file bytes}.
// Drawn digits are prepared as MNIST's were before they are sent, and files are sent as they
// are (prepare.js says how and why).
import {FRAME, prepareDrawing, prepareLikeServeImages} from "./prepare.js";

const DEBOUNCE_MS = 150;    // Predict this long after the pen last moved.
const STATUS_POLL_MS = 10000;

const $ = (id) => document.getElementById(id);
const state = {model: "", version: null, classNames: [], classes: 0, seq: 0,
               drawing: false, last: null, timer: 0, source: "none", input: null};

function modelName() {
  const fromUrl = new URLSearchParams(location.search).get("model");
  return fromUrl || document.querySelector('meta[name="model-name"]').content;
}

function modelPath() {
  return `/v1/models/${encodeURIComponent(state.model)}`;
}

// A REST call; TF Serving's {"error": ...} becomes the thrown message.
async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new Error(`cannot reach the server (${err.message})`);
  }
  const payload = await response.json().catch(() => null);
  if (!response.ok) {
    throw new Error((payload && payload.error) || `HTTP ${response.status} ${response.statusText}`);
  }
  return payload;
}

// The newest available version, its class count and names; the bars follow it.
async function refreshModel() {
  const status = await api(modelPath());
  const available = status.model_version_status
    .filter((entry) => entry.state === "AVAILABLE").map((entry) => Number(entry.version));
  if (!available.length) throw new Error(`model ${state.model} has no available version`);
  const version = Math.max(...available);
  if (version === state.version) return;
  const metadata = await api(`${modelPath()}/versions/${version}/metadata`);
  const signature = metadata.metadata.signature_def.signature_def.serve_images;
  if (!signature) {
    throw new Error(`version ${version} has no serve_images signature: export it again`);
  }
  state.version = version;
  state.classes = Number(signature.outputs.probabilities.tensor_shape.dim[1].size);
  // TF Serving's metadata has no class names; without them the answers teach them one by one.
  state.classNames = metadata.metadata.class_names || [];
  $("model").textContent = `Model ${state.model}, version ${version}`;
  $("hint").textContent = inputHint(state.classNames);
  buildBars();
}

// What to draw or drop: a digit for MNIST's classes, else one of the model's classes.
function inputHint(names) {
  const digits = Array.from({length: 10}, (_, i) => String(i));
  if (!names.length) return "Draw, or drop or paste an image file.";
  if (names.join() === digits.join()) return "Draw a digit, or drop or paste an image file.";
  return `Draw, drop or paste an image of one of: ${names.join(", ")}.`;
}

function className(index) {
  return state.classNames[index] || `class ${index}`;
}

function buildBars() {
  const items = [];
  for (let i = 0; i < state.classes; i++) {
    const item = document.createElement("li");
    item.className = "bar";
    item.dataset.probability = "0";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = className(i);
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill";
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = "0.0%";
    item.append(name, track, value);
    items.push(item);
  }
  $("bars").replaceChildren(...items);
}

function showAnswer(prediction, milliseconds) {
  const top = Number(prediction.classes);
  if (prediction.class_names !== undefined) state.classNames[top] = prediction.class_names;
  [...$("bars").children].forEach((item, i) => {
    const p = prediction.probabilities[i];
    item.dataset.probability = String(p);
    item.classList.toggle("top", i === top);
    item.querySelector(".name").textContent = className(i);
    item.querySelector(".fill").style.width = `${(p * 100).toFixed(2)}%`;
    item.querySelector(".value").textContent = `${(p * 100).toFixed(1)}%`;
  });
  $("answer").textContent = className(top);
  $("confidence").textContent = `${(prediction.probabilities[top] * 100).toFixed(1)}% sure`;
  $("latency").textContent = `Version ${state.version} answered in ${Math.round(milliseconds)} ms`;
  $("error").hidden = true;
}

function clearAnswerText() {
  $("answer").textContent = "—";
  $("confidence").textContent = "";
  $("latency").textContent = "";
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  clearAnswerText();
}

function resetAnswer() {
  state.seq++;  // Answers still on their way are for input that is gone.
  state.input = null;
  buildBars();
  clearAnswerText();
  $("error").hidden = true;
  const seen = $("seen").getContext("2d");
  seen.fillStyle = "#000";
  seen.fillRect(0, 0, FRAME, FRAME);
}

function toBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

// Sends encoded image bytes to serve_images; only the newest request's answer is shown.
async function classify(bytes, label) {
  const seq = ++state.seq;
  state.input = [bytes, label];
  const started = performance.now();
  try {
    if (state.version === null) await refreshModel();
    const answer = await api(`${modelPath()}/versions/${state.version}:predict`, {
      signature_name: "serve_images", instances: [{b64: toBase64(bytes)}]});
    if (seq === state.seq) showAnswer(answer.predictions[0], performance.now() - started);
  } catch (err) {
    if (seq !== state.seq) return;
    if (/not found/i.test(err.message)) state.version = null;  // Reload the versions next time.
    showError(label ? `${label}: ${err.message}` : err.message);
  }
}

// Shows 28x28 gray bytes in the preview; returns that canvas.
function showSeen(bytes) {
  const canvas = $("seen");
  const image = new ImageData(FRAME, FRAME);
  bytes.forEach((v, i) => image.data.set([v, v, v, 255], 4 * i));
  canvas.getContext("2d").putImageData(image, 0, 0);
  return canvas;
}

// --- Input: the drawing pad, and files dropped, pasted or opened. ---

function clearPad() {
  const pad = $("pad");
  const context = pad.getContext("2d", {willReadFrequently: true});
  context.fillStyle = "#000";
  context.fillRect(0, 0, pad.width, pad.height);
}

function clearAll() {
  clearTimeout(state.timer);
  clearPad();
  resetAnswer();
  state.source = "none";
}

async function predictDrawing() {
  clearTimeout(state.timer);
  const bytes = prepareDrawing($("pad"));
  if (!bytes) return;
  const blob = await new Promise((resolve) => showSeen(bytes).toBlob(resolve, "image/png"));
  await classify(new Uint8Array(await blob.arrayBuffer()), "");
}

function setUpPad() {
  const pad = $("pad");
  const fit = () => {
    const size = Math.round(pad.getBoundingClientRect().width * (window.devicePixelRatio || 1));
    if (size > 0 && size !== pad.width) {
      pad.width = pad.height = size;
      clearAll();
    }
  };
  new ResizeObserver(fit).observe(pad);
  fit();
  const context = pad.getContext("2d", {willReadFrequently: true});
  const point = (event) => {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * pad.width / box.width,
            (event.clientY - box.top) * pad.height / box.height];
  };
  const stroke = (from, to) => {
    context.strokeStyle = "#fff";
    context.lineWidth = pad.width / 16;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    context.moveTo(...from);
    context.lineTo(...to);
    context.stroke();
  };
  pad.addEventListener("pointerdown", (event) => {
    if (state.source !== "drawing") clearAll();
    state.source = "drawing";
    state.drawing = true;
    pad.setPointerCapture(event.pointerId);
    state.last = point(event);
    stroke(state.last, state.last);
    event.preventDefault();
  });
  pad.addEventListener("pointermove", (event) => {
    if (!state.drawing) return;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const each of events.length ? events : [event]) {
      const next = point(each);
      stroke(state.last, next);
      state.last = next;
    }
    clearTimeout(state.timer);
    state.timer = setTimeout(predictDrawing, DEBOUNCE_MS);
  });
  const end = () => {
    if (!state.drawing) return;
    state.drawing = false;
    predictDrawing();
  };
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);
}

// Shows the file on the pad, its 28x28 in the preview (if the browser can decode it), and
// classifies its bytes as they are.
async function classifyFile(file) {
  clearAll();
  state.source = "file";
  const bytes = new Uint8Array(await file.arrayBuffer());
  try {
    const bitmap = await createImageBitmap(
      file, {premultiplyAlpha: "none", colorSpaceConversion: "none"});
    const pad = $("pad");
    const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const w = bitmap.width * scale, h = bitmap.height * scale;
    pad.getContext("2d").drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    showSeen(prepareLikeServeImages(bitmap));
  } catch {
    // Not an image this browser decodes: the server says what is wrong with it.
  }
  await classify(bytes, file.name || "pasted image");
}

function setUpFiles() {
  const zone = $("drop-zone");
  const dragging = (on) => {
    zone.classList.toggle("dragging", on);
    $("drop-hint").hidden = !on;
  };
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    dragging(true);
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) dragging(false);
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    dragging(false);
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) classifyFile(file);
  });
  document.addEventListener("paste", (event) => {
    const file = event.clipboardData && event.clipboardData.files[0];
    if (file) {
      event.preventDefault();
      classifyFile(file);
    }
  });
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) classifyFile(file);
    event.target.value = "";
  });
  $("clear").addEventListener("click", clearAll);
}

// A new version, exported while the page is open, answers the input on screen again.
async function watchVersions() {
  const before = state.version;
  try {
    await refreshModel();
  } catch {
    return;  // The next prediction reports what is wrong.
  }
  if (state.version !== before && state.input) classify(...state.input);
}

async function start() {
  state.model = modelName();
  setUpPad();
  setUpFiles();
  if (!state.model) {
    showError("No model name: open this page as ?model=NAME");
    return;
  }
  try {
    await refreshModel();
  } catch (err) {
    showError(err.message);
  }
  setInterval(watchVersions, STATUS_POLL_MS);
}

start();
