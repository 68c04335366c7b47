// sfumato's web UI: a page over the same public API every client uses (A1111 /sdapi/v1 and the
// /sfumato/v1 job queue). Everything shown that came from the server or a file is set with
// textContent or as an attribute, never as HTML, so prompts and metadata cannot inject markup.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];
const state = { job: null, lastSeed: null, pngParameters: null, polling: false };

function showMessage(text) {
  const box = $("#message");
  box.textContent = text;
  box.hidden = !text;
}

async function api(path, options = {}) {
  const init = { ...options, headers: { "content-type": "application/json", ...(options.headers || {}) } };
  if (init.body && typeof init.body !== "string") init.body = JSON.stringify(init.body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new Error(`the server cannot be reached (${error.message})`);
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!response.ok) {
    const message = (body && (body.error || (typeof body.detail === "string" && body.detail))) || `HTTP ${response.status}`;
    throw new Error(message);
  }
  return body;
}

function guarded(fn) {
  return async (...args) => {
    try { showMessage(""); await fn(...args); } catch (error) { showMessage(error.message); }
  };
}

function element(tag, properties = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(properties)) {
    if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function fillSelect(select, values, selected) {
  select.replaceChildren(...values.map(([value, label]) => element("option", { value, text: label })));
  if (selected !== undefined && selected !== null) select.value = selected;
}

function tableRows(table, rows) {
  $("tbody", table).replaceChildren(...rows.map((cells) => element("tr", {}, cells.map((cell) =>
    element("td", {}, [cell instanceof Node ? cell : document.createTextNode(cell ?? "")])))));
}

// --- tabs ---------------------------------------------------------------------------------------

function openTab(name) {
  for (const button of $$("#tabs [data-tab]")) button.setAttribute("aria-selected", String(button.dataset.tab === name));
  for (const panel of $$("[data-panel]")) panel.hidden = panel.dataset.panel !== name;
  if (name === "queue") refreshQueue();
  if (name === "models") refreshModels();
  if (name === "settings") loadSettings();
}

// --- txt2img ------------------------------------------------------------------------------------

function formRequest(form) {
  const data = new FormData(form);
  const request = {};
  for (const [key, value] of data.entries()) {
    if (value === "") continue;
    const input = form.elements[key];
    request[key] = input.type === "number" ? Number(value) : value;
  }
  if (!$("#variation-toggle").checked) { delete request.subseed; delete request.subseed_strength; }
  return request;
}

function setProgress(fraction, text) {
  const box = $(".progress");
  box.hidden = fraction === null;
  const percent = Math.round((fraction || 0) * 100);
  const bar = $(".bar", box);
  bar.style.width = `${percent}%`;
  bar.setAttribute("aria-valuenow", String(percent));
  $(".progress-text", box).textContent = text || `${percent}%`;
}

function showImages(job) {
  const gallery = $("#gallery");
  gallery.replaceChildren(...job.images.map((image) => element("img", {
    src: `sfumato/v1/jobs/${encodeURIComponent(job.id)}/images/${image.index}`,
    alt: `image ${image.index + 1}`, title: image.infotext, class: "result",
    onclick: () => { $("#infotext").textContent = image.infotext; },
  })));
  if (job.images.length) {
    $("#infotext").textContent = job.images[0].infotext;
    state.lastSeed = job.images[0].seed;
  }
}

async function generate(event) {
  event.preventDefault();
  const job = await api("sfumato/v1/jobs", { method: "POST", body: { kind: "txt2img", request: formRequest(event.target) } });
  state.job = job.id;
  $("#generate").disabled = true;
  $("#interrupt").disabled = false;
  $("#skip").disabled = false;
  setProgress(0, job.queue_position > 0 ? `queued (${job.queue_position} ahead)` : "starting");
  try { await followJob(job.id); } finally {
    $("#generate").disabled = false;
    $("#interrupt").disabled = true;
    $("#skip").disabled = true;
    state.job = null;
  }
}

async function followJob(id) {
  for (;;) {
    const job = await api(`sfumato/v1/jobs/${encodeURIComponent(id)}`);
    if (!["queued", "running"].includes(job.state)) {
      setProgress(null);
      $("#preview").hidden = true;
      showImages(job);
      if (job.state === "failed") showMessage(job.error || "the job failed");
      else if (job.state === "interrupted") showMessage("interrupted: the images made so far are kept");
      return job;
    }
    if (job.state === "running") {
      const progress = await api("sdapi/v1/progress");
      if (progress.state.job === id) {
        const eta = progress.eta_relative > 0 ? `, about ${progress.eta_relative.toFixed(0)} s left` : "";
        setProgress(progress.progress, `${Math.round(progress.progress * 100)}%${eta}`);
        if (progress.current_image) {
          $("#preview").src = `data:image/png;base64,${progress.current_image}`;
          $("#preview").hidden = false;
        }
      }
    } else {
      setProgress(0, `queued (${job.queue_position - 1} ahead)`);
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
}

// --- PNG Info -------------------------------------------------------------------------------------

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`${file.name} cannot be read`));
    reader.readAsDataURL(file);
  });
}

async function pngInfo(file) {
  const dataUrl = await readFile(file);
  $("#png-image").src = dataUrl;
  $("#png-image").hidden = false;
  const info = await api("sdapi/v1/png-info", { method: "POST", body: { image: dataUrl } });
  $("#png-parameters").textContent = info.info || "this image carries no generation parameters";
  state.pngParameters = info.info ? info.parameters : null;
  $("#send-txt2img").disabled = !state.pngParameters;
}

function sendToTxt2img() {
  const p = state.pngParameters;
  const form = $("#txt2img-form");
  const set = (name, value) => { if (value !== undefined && value !== null) form.elements[name].value = value; };
  set("prompt", p.Prompt);
  set("negative_prompt", p["Negative prompt"] || "");
  set("steps", p.Steps);
  set("cfg_scale", p["CFG scale"]);
  set("seed", p.Seed);
  if (p.Sampler) set("sampler_name", p.Sampler);
  if (p["Schedule type"]) set("scheduler", p["Schedule type"]);
  if (p.Size) { const [w, h] = String(p.Size).split("x"); set("width", w); set("height", h); }
  openTab("txt2img");
}

// --- Extras -------------------------------------------------------------------------------------

async function upscaleImage(event) {
  event.preventDefault();
  const file = $("#extras-file").files[0];
  if (!file) throw new Error("choose an image to upscale");
  const form = event.target;
  const result = await api("sdapi/v1/extra-single-image", { method: "POST", body: {
    image: await readFile(file),
    upscaler_1: form.elements.upscaler_1.value,
    upscaling_resize: Number(form.elements.upscaling_resize.value),
  } });
  $("#extras-result").src = `data:image/png;base64,${result.image}`;
  $("#extras-result").hidden = false;
  $("#extras-info").textContent = new DOMParser().parseFromString(result.html_info, "text/html").body.textContent;
}

// --- queue, models, settings -----------------------------------------------------------------

async function refreshQueue() {
  const jobs = await api("sfumato/v1/jobs?limit=50");
  tableRows($("#jobs"), jobs.map((job) => [
    new Date(job.created * 1000).toLocaleString(), job.state,
    (job.request.generation && job.request.generation.prompt) || "", String(job.error || ""),
    ["queued", "running"].includes(job.state)
      ? element("button", { type: "button", text: "Cancel", onclick: guarded(async () => {
          await api(`sfumato/v1/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" });
          await refreshQueue();
        }) })
      : "",
  ]));
  const images = await api("sfumato/v1/images?limit=60");
  $("#past-images").replaceChildren(...images.map((image) => element("img", {
    src: `sfumato/v1/jobs/${encodeURIComponent(image.job_id)}/images/${image.index}`,
    alt: `seed ${image.seed}`, title: image.infotext, class: "thumb",
  })));
}

async function refreshModels() {
  const [models, vaes, loras, embeddings] = await Promise.all([
    api("sdapi/v1/sd-models"), api("sdapi/v1/sd-vae"), api("sdapi/v1/loras"), api("sdapi/v1/embeddings"),
  ]);
  tableRows($("#models-checkpoints"), models.map((m) => [m.title, m.filename]));
  tableRows($("#models-vae"), vaes.map((v) => [v.model_name, v.filename]));
  tableRows($("#models-loras"), loras.map((l) => [l.name, l.metadata.ss_sd_model_name || "", l.path]));
  tableRows($("#models-embeddings"), Object.entries(embeddings.loaded).map(([name, e]) => [name, `${e.vectors} vectors`, `width ${e.shape}`]));
  fillSelect($("#checkpoint"), models.map((m) => [m.title, m.title]), (await api("sdapi/v1/options")).sd_model_checkpoint);
}

async function loadSettings() {
  const [options, vaes] = await Promise.all([api("sdapi/v1/options"), api("sdapi/v1/sd-vae")]);
  const form = $("#settings-form");
  fillSelect(form.elements.sd_vae, [["Automatic", "Automatic"], ["None", "None"], ...vaes.map((v) => [v.model_name, v.model_name])], options.sd_vae);
  form.elements.CLIP_stop_at_last_layers.value = options.CLIP_stop_at_last_layers;
  form.elements.samples_save.checked = Boolean(options.samples_save);
}

async function saveSettings(event) {
  event.preventDefault();
  const form = event.target;
  await api("sdapi/v1/options", { method: "POST", body: {
    sd_vae: form.elements.sd_vae.value,
    CLIP_stop_at_last_layers: Number(form.elements.CLIP_stop_at_last_layers.value),
    samples_save: form.elements.samples_save.checked,
  } });
  showMessage("settings saved");
}

// --- start ----------------------------------------------------------------------------------------

async function start() {
  for (const button of $$("#tabs [data-tab]")) button.addEventListener("click", () => openTab(button.dataset.tab));
  $("#txt2img-form").addEventListener("submit", guarded(generate));
  $("#interrupt").addEventListener("click", guarded(() => api("sdapi/v1/interrupt", { method: "POST" })));
  $("#skip").addEventListener("click", guarded(() => api("sdapi/v1/skip", { method: "POST" })));
  $("#seed-random").addEventListener("click", () => { $("#txt2img-form").elements.seed.value = -1; });
  $("#seed-reuse").addEventListener("click", () => {
    if (state.lastSeed !== null) $("#txt2img-form").elements.seed.value = state.lastSeed;
  });
  $("#variation-toggle").addEventListener("change", (e) => { $("#variation").hidden = !e.target.checked; });
  $("#png-file").addEventListener("change", guarded((e) => e.target.files[0] && pngInfo(e.target.files[0])));
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", guarded(async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) await pngInfo(e.dataTransfer.files[0]);
  }));
  $("#send-txt2img").addEventListener("click", sendToTxt2img);
  $("#queue-refresh").addEventListener("click", guarded(refreshQueue));
  $("#models-refresh").addEventListener("click", guarded(refreshModels));
  $("#settings-form").addEventListener("submit", guarded(saveSettings));
  $("#extras-form").addEventListener("submit", guarded(upscaleImage));
  $("#checkpoint").addEventListener("change", guarded(async (e) => {
    await api("sdapi/v1/options", { method: "POST", body: { sd_model_checkpoint: e.target.value } });
  }));
  const [samplers, schedulers, upscalers] = await Promise.all([
    api("sdapi/v1/samplers"), api("sdapi/v1/schedulers"), api("sdapi/v1/upscalers"),
  ]);
  fillSelect($("#extras-form").elements.upscaler_1, upscalers.map((u) => [u.name, u.name]), "Lanczos");
  const form = $("#txt2img-form");
  fillSelect(form.elements.sampler_name, samplers.map((s) => [s.name, s.name]), "DPM++ 2M");
  fillSelect(form.elements.scheduler, schedulers.map((s) => [s.label, s.label]), "Automatic");
  await refreshModels();
}

document.addEventListener("DOMContentLoaded", guarded(start));
