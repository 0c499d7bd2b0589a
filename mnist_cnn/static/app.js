// The drawing page: strokes on a canvas (pointer events: mouse, pen and touch alike), every class's probability
// from POST /predict after each change, beside the canvas the 28 x 28 image the model saw (the server's
// normalisation, sent back with ?image=true), a clear button and an image upload. No build step, no CDN.
"use strict";
const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen").getContext("2d");
const labelOut = document.getElementById("label");
const probabilitiesOut = document.getElementById("probabilities");
const statusOut = document.getElementById("status");
let drawing = false, inFlight = false, again = false, strokes = 0;
let generation = 0;  // bumped by clear and by an upload: an answer for an older drawing is dropped
let classes = null;  // the model's class names, in its output order, from /health

function clearPad() {
  generation += 1;
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  seen.fillStyle = "#000";
  seen.fillRect(0, 0, seen.canvas.width, seen.canvas.height);
  strokes = 0;
  labelOut.textContent = "–";
  probabilitiesOut.replaceChildren();
  statusOut.textContent = "";
}

function point(event) {  // canvas pixels, whatever size CSS gives the canvas
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width, (event.clientY - box.top) * pad.height / box.height];
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  drawing = true;
  strokes += 1;
  const [x, y] = point(event);
  ctx.beginPath();
  ctx.arc(x, y, 9, 0, 2 * Math.PI);
  ctx.fillStyle = "#fff";
  ctx.fill();
  ctx.beginPath();
  ctx.moveTo(x, y);
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const [x, y] = point(event);
  ctx.lineTo(x, y);
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = 18;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.stroke();
  ctx.beginPath();
  ctx.moveTo(x, y);
  guess();
});

function endStroke() {
  if (!drawing) return;
  drawing = false;
  guess();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function show(result) {
  labelOut.textContent = result.label;
  const probability = new Map(result.top.map((item) => [item.label, item.probability]));
  probabilitiesOut.replaceChildren(...classes.map((name) => {  // in the model's class order: bars stay in place
    const value = probability.get(name);
    const li = document.createElement("li");
    li.dataset.label = name;
    li.dataset.probability = String(value);
    li.classList.toggle("best", name === result.label);
    const label = document.createElement("span");
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("aria-hidden", "true");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(100 * value).toFixed(1)}%`;
    track.append(bar);
    const percent = document.createElement("span");
    percent.className = "value";
    percent.textContent = `${(100 * value).toFixed(1)}%`;
    li.append(label, track, percent);
    return li;
  }));
  drawSeen(result.image);
  statusOut.textContent = "";
}

function drawSeen(rows) {  // the model's input, each value in [0, 1] a gray level (a colour model's [r, g, b])
  const pixels = seen.createImageData(rows[0].length, rows.length);
  rows.flat().forEach((value, i) => {
    const [r, g, b] = Array.isArray(value) ? value : [value, value, value];
    pixels.data.set([r, g, b].map((v) => Math.round(255 * v)).concat(255), 4 * i);
  });
  seen.canvas.width = pixels.width;
  seen.canvas.height = pixels.height;
  seen.putImageData(pixels, 0, 0);
}

async function send(blob, name) {
  if (!classes) classes = (await (await fetch("/health")).json()).classes;
  const form = new FormData();
  form.append("file", blob, name);
  const response = await fetch(`/predict?top=${classes.length}&image=true`, { method: "POST", body: form });
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

// At most one request at a time; changes made meanwhile are sent when it returns.
function guess() {
  if (!strokes) return;
  if (inFlight) { again = true; return; }
  inFlight = true;
  const drawn = generation;
  pad.toBlob(async (blob) => {
    try {
      const result = await send(blob, "drawing.png");
      if (drawn === generation) show(result);
    } catch (error) {
      if (drawn === generation) statusOut.textContent = String(error.message || error);
    } finally {
      inFlight = false;
      if (again) { again = false; guess(); }
    }
  }, "image/png");
}

document.getElementById("clear").addEventListener("click", clearPad);

document.getElementById("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  try {
    const image = await createImageBitmap(file);
    clearPad();
    const scale = Math.min(pad.width / image.width, pad.height / image.height);
    ctx.drawImage(image, (pad.width - image.width * scale) / 2, (pad.height - image.height * scale) / 2,
                  image.width * scale, image.height * scale);
  } catch (error) {
    clearPad();  // a file the browser can't draw: the server still says what is wrong with it
  }
  const uploaded = generation;
  try {
    const result = await send(file, file.name);
    if (uploaded === generation) show(result);
  } catch (error) {
    if (uploaded === generation) statusOut.textContent = String(error.message || error);
  }
  event.target.value = "";
});

clearPad();
