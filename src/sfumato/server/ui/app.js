// sfumato's web UI: a page over the same public API every client uses (A1111 /sdapi/v1 and the
// /sfumato/v1 job queue). Everything shown that came from the server or a file is set with
// textContent or as an attribute, never as HTML, so prompts and metadata cannot inject markup.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];
const state = { pngParameters: null, pngImage: null, panels: {}, paints: {}, models: [], networks: { loras: [], embeddings: [] } };
const MASK_COLOUR = "#ff3d8b"; // how the painted mask shows (half transparent); only its shape is sent

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

// A file as a data: URL.
function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`${file.name} cannot be read`));
    reader.readAsDataURL(file);
  });
}

// A drop zone: files dragged onto `zone` go to `onFile`.
function acceptDrops(zone, onFile) {
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", guarded(async (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files[0]) await onFile(e.dataTransfer.files[0]);
  }));
}

// --- shared parts of the page ----------------------------------------------------------------------

// Each `data-template="x"` placeholder becomes a copy of <template id="template-x"> (its id moves to
// the copy's first element), so the tabs share one definition of their common fields.
function expandTemplates() {
  for (const slot of $$("[data-template]")) {
    const copy = $(`#template-${slot.dataset.template}`).content.cloneNode(true);
    if (slot.id) copy.firstElementChild.id = slot.id;
    slot.replaceWith(copy);
  }
}

// Sections that only count when a control says so are fieldsets, hidden and disabled otherwise:
// disabled controls are left out of FormData, so what is hidden is never sent.
function showSection(section, on) {
  section.hidden = !on;
  section.disabled = !on;
}

function wireToggles(root) {
  for (const box of $$("input[data-toggles]", root)) {
    const section = $(box.dataset.toggles, root);
    box.addEventListener("change", () => showSection(section, box.checked));
    showSection(section, box.checked);
  }
  // A select shows, of the sections its `data-toggles-value` finds, the one whose `data-value` is its value.
  for (const select of $$("select[data-toggles-value]", root)) {
    const sections = $$(select.dataset.togglesValue, root);
    const update = () => { for (const section of sections) showSection(section, section.dataset.value === select.value); };
    select.addEventListener("change", update);
    update();
  }
}

// The form's enabled, non-empty values as an API body: numbers for number inputs and `data-type=
// "number"`, true for a ticked checkbox, booleans for `data-type="bool"`, arrays for `data-type="list"`.
function formValues(form) {
  const values = {};
  for (const [key, value] of new FormData(form).entries()) {
    if (value === "" || value instanceof File) continue;
    const control = form.elements[key];
    const first = control instanceof RadioNodeList ? control[0] : control;
    const type = first.dataset.type || first.type;
    if (type === "list") (values[key] = values[key] || []).push(value);
    else if (type === "number") values[key] = Number(value);
    else if (type === "bool") values[key] = value === "true";
    else if (type === "checkbox") values[key] = true;
    else values[key] = value;
  }
  return values;
}

function setField(form, name, value) {
  const control = form.elements[name];
  if (control && value !== undefined && value !== null) control.value = value;
}

// A1111 infotext parameters (as /sdapi/v1/png-info parses them) into a generation form.
function applyParameters(form, p) {
  setField(form, "prompt", p.Prompt);
  setField(form, "negative_prompt", p["Negative prompt"] || "");
  setField(form, "steps", p.Steps);
  setField(form, "cfg_scale", p["CFG scale"]);
  setField(form, "seed", p.Seed);
  if (p.Sampler) setField(form, "sampler_name", p.Sampler);
  if (p["Schedule type"]) setField(form, "scheduler", p["Schedule type"]);
  if (p.Size) { const [w, h] = String(p.Size).split("x"); setField(form, "width", w); setField(form, "height", h); }
  if (p["Denoising strength"] && (form.dataset.kind === "img2img" || p["Hires upscale"])) {
    setField(form, "denoising_strength", p["Denoising strength"]);
  }
  if (p["Image CFG scale"]) setField(form, "image_cfg_scale", p["Image CFG scale"]);
  const hires = form.elements.enable_hr;
  if (hires) {
    hires.checked = Boolean(p["Hires upscale"] || p["Hires resize"]);
    hires.dispatchEvent(new Event("change"));
    setField(form, "hr_scale", p["Hires upscale"]);
    if (p["Hires upscaler"]) setField(form, "hr_upscaler", p["Hires upscaler"]);
    setField(form, "hr_second_pass_steps", p["Hires steps"] || 0);
  }
}

// --- extra networks: LoRA and embedding cards that write themselves into the prompt ------------

const FAMILY_NAMES = { sd1: "SD1", sd2: "SD2", sdxl: "SDXL" };

function familyName(family) {
  return FAMILY_NAMES[family] || family || "";
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

// How a network shows in a prompt (a regular expression's source): a LoRA as its tag with any
// weights, an embedding as its name standing alone (not part of a longer word).
const loraInPrompt = (name) => `<lora:${escapeRegExp(name)}(?::[^>]*)?>`;
const wordInPrompt = (word) => `(?<![\\w-])${escapeRegExp(word)}(?![\\w-])`;

// A1111's click on an extra network card: the text goes at the end of the prompt after a space; if
// the network is in the prompt already, it is taken out instead (with the space before it).
function toggleInPrompt(textarea, text, source) {
  const prompt = textarea.value;
  if (new RegExp(source).test(prompt)) {
    const removed = prompt.replace(new RegExp(`\\s*${source}`, "g"), "");
    textarea.value = /^\s/.test(prompt) ? removed : removed.trimStart();
  } else {
    textarea.value = prompt && !/\s$/.test(prompt) ? `${prompt} ${text}` : `${prompt}${text}`;
  }
  textarea.dispatchEvent(new Event("input", { bubbles: true }));
}

// The "Networks" section of a generation tab: cards for the LoRA files and the embeddings, a search
// box over names and trigger words. A card is pressed while its network is in the prompt.
class NetworkPicker {
  constructor(root, prompt) {
    this.root = root;
    this.prompt = prompt;
    this.cards = []; // [{card, source}] source: how the network shows in the prompt
    this.search = $(".networks-search", root);
    this.search.addEventListener("input", () => this.filter());
    this.search.addEventListener("keydown", (e) => { if (e.key === "Enter") e.preventDefault(); }); // not Generate
    $(".networks-refresh", root).addEventListener("click", guarded(refreshModels));
    prompt.addEventListener("input", () => this.markUsed());
  }

  card(name, lines, text, source, words = []) {
    const card = element("button", { type: "button", class: "card", "aria-pressed": "false",
      dataset: { search: [name, ...words].join("\n").toLowerCase() } },
      [element("span", { class: "card-name", text: name }), ...lines.filter(Boolean).map((line) => element("span", { class: "card-detail", text: line }))]);
    card.addEventListener("click", () => toggleInPrompt(this.prompt, text, source));
    this.cards.push({ card, source });
    return card;
  }

  loraCard(lora, checkpointFamily) {
    const detail = [familyName(lora.family) || "family unknown", lora.rank ? `rank ${lora.rank}` : "",
      lora.kinds.filter((k) => k !== "lora").join(", ")].filter(Boolean).join(" · ");
    const words = lora.trigger_words.length ? `triggers: ${lora.trigger_words.slice(0, 5).join(", ")}` : "";
    const tag = `<lora:${lora.name}:1>`;
    const card = this.card(lora.name, [detail, words], tag, loraInPrompt(lora.name), [lora.alias, ...lora.trigger_words]);
    card.title = `adds ${tag} to the prompt`;
    if (lora.note) {
      card.disabled = true;
      card.classList.add("broken");
      card.title = lora.note;
    } else if (checkpointFamily && lora.family && lora.family !== checkpointFamily) {
      card.classList.add("other-family");
      card.title = `for another family: ${familyName(lora.family)} checkpoints (the checkpoint is ${familyName(checkpointFamily)})`;
    }
    return card;
  }

  render({ loras, embeddings }, checkpointFamily) {
    this.cards = [];
    const empty = (text) => element("p", { class: "hint", text });
    $(".networks-loras", this.root).replaceChildren(...(loras.length
      ? loras.map((lora) => this.loraCard(lora, checkpointFamily))
      : [empty("No LoRA files: put them in models/Lora.")]));
    $(".networks-embeddings", this.root).replaceChildren(...(embeddings.length
      ? embeddings.map(([name, e]) => {
          const card = this.card(name, [`${e.vectors} ${e.vectors === 1 ? "vector" : "vectors"}`], name, wordInPrompt(name));
          card.title = `adds ${name} to the prompt`;
          return card;
        })
      : [empty("No embeddings: put them in embeddings/.")]));
    this.filter();
    this.markUsed();
  }

  filter() {
    const query = this.search.value.trim().toLowerCase();
    for (const { card } of this.cards) card.hidden = Boolean(query) && !card.dataset.search.includes(query);
  }

  markUsed() {
    for (const { card, source } of this.cards) card.setAttribute("aria-pressed", String(new RegExp(source).test(this.prompt.value)));
  }
}

function checkpointFamily() {
  const model = state.models.find((m) => m.title === $("#checkpoint").value);
  return model ? model.family : null;
}

function renderNetworks() {
  for (const panel of Object.values(state.panels)) panel.networks.render(state.networks, checkpointFamily());
}

// --- generation tabs (txt2img, img2img): one panel class, the request is the tab's own -------------

class GenerationPanel {
  constructor(form, buildRequest) {
    this.form = form;
    this.kind = form.dataset.kind;
    this.buildRequest = buildRequest;
    this.lastSeed = null;
    this.networks = new NetworkPicker($(".networks", form), form.elements.prompt);
    form.addEventListener("submit", guarded((event) => this.generate(event)));
    this.part("interrupt").addEventListener("click", guarded(() => api("sdapi/v1/interrupt", { method: "POST" })));
    this.part("skip").addEventListener("click", guarded(() => api("sdapi/v1/skip", { method: "POST" })));
    this.part("seed-random").addEventListener("click", () => { form.elements.seed.value = -1; });
    this.part("seed-reuse").addEventListener("click", () => {
      if (this.lastSeed !== null) form.elements.seed.value = this.lastSeed;
    });
  }

  part(name) {
    return $(`.${name}`, this.form);
  }

  setBusy(busy) {
    this.part("generate").disabled = busy;
    this.part("interrupt").disabled = !busy;
    this.part("skip").disabled = !busy;
  }

  // `buildRequest` turns the form's values into `{request}`, or `{kind, request}` for another job kind.
  async generate(event) {
    event.preventDefault();
    const { kind = this.kind, request } = await this.buildRequest(formValues(this.form));
    const job = await api("sfumato/v1/jobs", { method: "POST", body: { kind, request } });
    this.setBusy(true);
    this.setProgress(0, job.queue_position > 0 ? `queued (${job.queue_position} ahead)` : "starting");
    try { await this.follow(job.id); } finally { this.setBusy(false); }
  }

  async follow(id) {
    for (;;) {
      const job = await api(`sfumato/v1/jobs/${encodeURIComponent(id)}`);
      if (!["queued", "running"].includes(job.state)) {
        this.setProgress(null);
        this.part("preview").hidden = true;
        this.showImages(job);
        if (job.state === "failed") showMessage(job.error || "the job failed");
        else if (job.state === "interrupted") showMessage("interrupted: the images made so far are kept");
        return job;
      }
      if (job.state === "running") {
        const progress = await api("sdapi/v1/progress");
        if (progress.state.job === id) {
          const eta = progress.eta_relative > 0 ? `, about ${progress.eta_relative.toFixed(0)} s left` : "";
          this.setProgress(progress.progress, `${Math.round(progress.progress * 100)}%${eta}`);
          if (progress.current_image) {
            this.part("preview").src = `data:image/png;base64,${progress.current_image}`;
            this.part("preview").hidden = false;
          }
        }
      } else {
        this.setProgress(0, `queued (${job.queue_position - 1} ahead)`);
      }
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
  }

  setProgress(fraction, text) {
    const box = this.part("progress");
    box.hidden = fraction === null;
    const percent = Math.round((fraction || 0) * 100);
    const bar = $(".bar", box);
    bar.style.width = `${percent}%`;
    bar.setAttribute("aria-valuenow", String(percent));
    $(".progress-text", box).textContent = text || `${percent}%`;
  }

  // The job's images; a gif2gif job's last one is the animation, shown above its frames.
  showImages(job) {
    const infotext = this.part("infotext");
    const frames = [...job.images];
    const animation = job.kind === "gif2gif" && ["done", "interrupted"].includes(job.state) ? frames.pop() : null;
    const shown = (image, properties) => mediaElement(jobImageUrl(job.id, image), image.path, {
      title: image.infotext, onclick: () => { infotext.textContent = image.infotext; }, ...properties,
    });
    this.part("gallery").replaceChildren(
      ...(animation ? [shown(animation, { alt: "the animation", class: "animation" })] : []),
      ...frames.map((image) => shown(image, { alt: `image ${image.index + 1}`, class: "result" })),
    );
    if (job.images.length) {
      infotext.textContent = job.images[0].infotext;
      this.lastSeed = job.images[0].seed;
    }
  }
}

function jobImageUrl(jobId, image) {
  return `sfumato/v1/jobs/${encodeURIComponent(jobId)}/images/${image.index}`;
}

const VIDEO_FILE = /\.(mp4|mov|webm|mkv)$/i;

// An <img> for a job's image file, or a <video controls> when the file is a video (an <img> shows
// animated GIF, APNG and WebP itself).
function mediaElement(src, path, properties) {
  if (!VIDEO_FILE.test(path || "")) return element("img", { src, ...properties });
  const { alt, ...rest } = properties;
  const video = element("video", { src, controls: "", loop: "", muted: "", playsinline: "", "aria-label": alt || "video", ...rest });
  video.muted = true; // the attribute alone does not mute a video made by script
  return video;
}

// --- painting on an image: sketch strokes and inpainting masks ------------------------------------

// The image, a sketch layer and a mask layer, stacked at the image's own pixel size and shown scaled
// to fit. `mode` is "none" (look only), "sketch" (coloured strokes that become part of the image) or
// "mask" (the area to repaint or remove). The brush size is in screen pixels, so it feels the same
// on a small image shown large as on a large one shown small.
class PaintCanvas {
  constructor(root) {
    this.root = root;
    this.layers = $(".paint-layers", root);
    this.image = $(".layer-image", root);
    this.sketch = $(".layer-sketch", root);
    this.mask = $(".layer-mask", root);
    this.tool = "brush";
    this.stroke = null;
    $(".paint-file", root).addEventListener("change", guarded(async (e) => {
      if (e.target.files[0]) await this.loadFile(e.target.files[0]);
    }));
    acceptDrops($(".paint-stage", root), (file) => this.loadFile(file));
    for (const button of $$("[data-tool]", root)) button.addEventListener("click", () => this.setTool(button.dataset.tool));
    $(".paint-clear", root).addEventListener("click", () => this.clear(this.activeLayer()));
    $(".paint-invert", root).addEventListener("click", () => this.invertMask());
    this.layers.addEventListener("pointerdown", (e) => this.startStroke(e));
    this.layers.addEventListener("pointermove", (e) => this.continueStroke(e));
    for (const end of ["pointerup", "pointercancel"]) this.layers.addEventListener(end, () => { this.stroke = null; });
  }

  get hasImage() {
    return !this.layers.hidden;
  }

  setMode(mode) {
    this.root.dataset.mode = mode;
    this.mask.hidden = mode !== "mask";
  }

  setTool(tool) {
    this.tool = tool;
    for (const button of $$("[data-tool]", this.root)) button.setAttribute("aria-pressed", String(button.dataset.tool === tool));
  }

  activeLayer() {
    return this.root.dataset.mode === "sketch" ? this.sketch : this.mask;
  }

  async loadFile(file) {
    if (!file.type.startsWith("image/")) throw new Error(`${file.name} is not an image`);
    await this.load(await readFile(file));
  }

  load(source) {
    return new Promise((resolve, reject) => {
      const picture = new Image();
      picture.onload = () => {
        const { naturalWidth: width, naturalHeight: height } = picture;
        for (const canvas of [this.image, this.sketch, this.mask]) { canvas.width = width; canvas.height = height; }
        this.image.getContext("2d").drawImage(picture, 0, 0);
        const scale = Math.min(512 / width, 512 / height);
        this.layers.style.width = `${Math.round(width * scale)}px`;
        this.layers.style.aspectRatio = `${width} / ${height}`;
        this.layers.classList.toggle("enlarged", scale > 1);
        this.layers.hidden = false;
        $(".paint-empty", this.root).hidden = true;
        resolve();
      };
      picture.onerror = () => reject(new Error("this file is not an image the browser can read"));
      picture.src = source;
    });
  }

  point(event) {
    const box = this.layers.getBoundingClientRect();
    const ratio = this.image.width / box.width;
    return { x: (event.clientX - box.left) * ratio, y: (event.clientY - box.top) * ratio, ratio };
  }

  startStroke(event) {
    if (!this.hasImage || this.root.dataset.mode === "none" || event.button !== 0) return;
    event.preventDefault();
    this.layers.setPointerCapture(event.pointerId);
    const { x, y, ratio } = this.point(event);
    const context = this.activeLayer().getContext("2d");
    context.globalCompositeOperation = this.tool === "eraser" ? "destination-out" : "source-over";
    context.strokeStyle = context.fillStyle = this.root.dataset.mode === "sketch" ? $(".brush-colour", this.root).value : MASK_COLOUR;
    context.lineWidth = Number($(".brush-size", this.root).value) * ratio;
    context.lineCap = context.lineJoin = "round";
    context.beginPath();
    context.arc(x, y, context.lineWidth / 2, 0, 2 * Math.PI);
    context.fill();
    this.stroke = { context, x, y };
  }

  continueStroke(event) {
    if (!this.stroke) return;
    const { x, y } = this.point(event);
    const { context } = this.stroke;
    context.beginPath();
    context.moveTo(this.stroke.x, this.stroke.y);
    context.lineTo(x, y);
    context.stroke();
    Object.assign(this.stroke, { x, y });
  }

  clear(layer) {
    layer.getContext("2d").clearRect(0, 0, layer.width, layer.height);
  }

  blank() {
    return element("canvas", { width: this.image.width, height: this.image.height });
  }

  invertMask() {
    const inverted = this.blank();
    const context = inverted.getContext("2d");
    context.fillStyle = MASK_COLOUR;
    context.fillRect(0, 0, inverted.width, inverted.height);
    context.globalCompositeOperation = "destination-out";
    context.drawImage(this.mask, 0, 0);
    this.clear(this.mask);
    const mask = this.mask.getContext("2d");
    mask.globalCompositeOperation = "source-over"; // the eraser may have left it erasing
    mask.drawImage(inverted, 0, 0);
  }

  maskIsEmpty() {
    const { data } = this.mask.getContext("2d").getImageData(0, 0, this.mask.width, this.mask.height);
    for (let i = 3; i < data.length; i += 4) if (data[i]) return false;
    return true;
  }

  // The image with its sketch strokes, as a PNG data URL (what img2img repaints).
  imageData() {
    const out = this.blank();
    const context = out.getContext("2d");
    context.drawImage(this.image, 0, 0);
    context.drawImage(this.sketch, 0, 0);
    return out.toDataURL("image/png");
  }

  // The mask as A1111 takes it: white = repaint, on black, at the image's size; the brush's soft
  // edges are cut at half strength, so the mask is exactly what the painted shape covers.
  maskData() {
    const context = this.mask.getContext("2d");
    const pixels = context.getImageData(0, 0, this.mask.width, this.mask.height);
    const { data } = pixels;
    for (let i = 0; i < data.length; i += 4) {
      data[i] = data[i + 1] = data[i + 2] = data[i + 3] >= 128 ? 255 : 0;
      data[i + 3] = 255;
    }
    const out = this.blank();
    out.getContext("2d").putImageData(pixels, 0, 0);
    return out.toDataURL("image/png");
  }
}

// --- txt2img and img2img requests --------------------------------------------------------------

function txt2imgRequest(values) {
  return { request: values };
}

function img2imgMode() {
  return $("#img2img-form .modes [data-mode][aria-selected=true]").dataset.mode;
}

function setImg2imgMode(mode) {
  for (const button of $$("#img2img-form .modes [data-mode]")) button.setAttribute("aria-selected", String(button.dataset.mode === mode));
  for (const hint of $$("#img2img-form [data-hint]")) hint.hidden = hint.dataset.hint !== mode;
  state.paints.img2img.setMode({ img2img: "none", sketch: "sketch", inpaint: "mask" }[mode]);
  showSection($("#img2img-form .inpaint-settings"), mode === "inpaint");
}

// The img2img tab's scripts, by the Script select's value; each has a fieldset of its own fields
// (`data-value` = that value), which are never sent as they are. An A1111 script becomes `script_args`
// in the order of its `args`; one that is a job kind of its own gives its `kind` and `inputs` instead
// of the init image. No script uses the painted mask.
const IMG2IMG_SCRIPTS = {
  "Poor man's outpainting": {
    args(v) {
      if (!v.outpaint_direction) throw new Error("outpainting: tick at least one direction");
      return [v.outpaint_pixels, v.outpaint_mask_blur, v.outpaint_fill, v.outpaint_direction];
    },
  },
  "SD upscale": { args: (v) => ["", v.sd_upscale_overlap, v.sd_upscale_upscaler, v.sd_upscale_scale] },
  gif2gif: { kind: "gif2gif", inputs: (form) => animationInput(form.elements.animation_file) },
};

// The chosen animation file as the gif2gif job takes it: the file's bytes as base64, and its format
// from its extension (one of those the file input accepts).
async function animationInput(input) {
  const file = input.files[0];
  if (!file) throw new Error("gif2gif: choose an animation file first");
  const formats = input.accept.split(",").map((suffix) => suffix.trim().slice(1));
  const format = file.name.includes(".") ? file.name.split(".").pop().toLowerCase() : "";
  if (!formats.includes(format)) throw new Error(`gif2gif: ${file.name} is not one of ${formats.join(", ")}`);
  const dataUrl = await readFile(file);
  return { animation: dataUrl.slice(dataUrl.indexOf(",") + 1), animation_format: format };
}

async function img2imgRequest(values) {
  const form = $("#img2img-form");
  const request = { ...values };
  for (const control of $$("fieldset.script [name]", form)) delete request[control.name];
  const script = values.script_name ? IMG2IMG_SCRIPTS[values.script_name] : null;
  if (script && script.kind) {
    delete request.script_name;
    return { kind: script.kind, request: { ...request, ...(await script.inputs(form)) } };
  }
  const paint = state.paints.img2img;
  if (!paint.hasImage) throw new Error("add an init image first: choose a file or drop one on the canvas");
  request.init_images = [paint.imageData()];
  if (script) {
    request.script_args = script.args(values);
  } else if (img2imgMode() === "inpaint") {
    if (paint.maskIsEmpty()) throw new Error("inpaint: paint over the area to repaint first");
    request.mask = paint.maskData();
  }
  return { request };
}

// --- PNG Info -------------------------------------------------------------------------------------

async function pngInfo(file) {
  const dataUrl = await readFile(file);
  $("#png-image").src = dataUrl;
  $("#png-image").hidden = false;
  const info = await api("sdapi/v1/png-info", { method: "POST", body: { image: dataUrl } });
  $("#png-parameters").textContent = info.info || "this image carries no generation parameters";
  state.pngParameters = info.info ? info.parameters : null;
  state.pngImage = dataUrl;
  $("#send-txt2img").disabled = !state.pngParameters;
  $("#send-img2img").disabled = false;
}

function sendToTxt2img() {
  applyParameters($("#txt2img-form"), state.pngParameters);
  openTab("txt2img");
}

async function sendToImg2img() {
  if (state.pngParameters) applyParameters($("#img2img-form"), state.pngParameters);
  await state.paints.img2img.load(state.pngImage);
  openTab("img2img");
}

// --- Extras -------------------------------------------------------------------------------------

function extrasImage() {
  const paint = state.paints.extras;
  if (!paint.hasImage) throw new Error("choose an image first: a file, or drop one on the canvas");
  return paint.imageData();
}

function showExtrasResult(image, info) {
  $("#extras-result").src = `data:image/png;base64,${image}`;
  $("#extras-result").hidden = false;
  $("#extras-info").textContent = info;
}

async function upscaleImage(event) {
  event.preventDefault();
  const form = event.target;
  const result = await api("sdapi/v1/extra-single-image", { method: "POST", body: {
    image: extrasImage(),
    upscaler_1: form.elements.upscaler_1.value,
    upscaling_resize: Number(form.elements.upscaling_resize.value),
  } });
  showExtrasResult(result.image, new DOMParser().parseFromString(result.html_info, "text/html").body.textContent);
}

async function cleanImage() {
  const paint = state.paints.extras;
  const image = extrasImage();
  if (paint.maskIsEmpty()) throw new Error("clean: paint over what to remove first");
  const method = $("#extras-form").elements.clean_method.value;
  const result = await api("sfumato/v1/clean", { method: "POST", body: { image, mask: paint.maskData(), method } });
  showExtrasResult(result.image, [`Cleaned (${method})`, ...result.notes].join("\n"));
}

// --- Merge and Extract LoRA: new model files made from the folders' ones ----------------------------

// A select of models from the listings, keeping the choice when it is still listed; a fresh one picks
// its `data-pick`-th entry, so A, B and C start on different checkpoints.
function fillModelSelect(select, values) {
  const previous = select.value;
  fillSelect(select, values);
  if (values.some(([value]) => value === previous)) select.value = previous;
  else if (values.length) select.value = values[Math.min(Number(select.dataset.pick || 0), values.length - 1)][0];
}

function renderTools(models, vaes, loras) {
  const checkpoints = models.map((m) => [m.title, m.title]);
  for (const select of $$("select[data-models=checkpoints]")) fillModelSelect(select, checkpoints);
  const bakeable = [["", "None (keep A's own)"], ...vaes.map((v) => [v.model_name, v.model_name])];
  for (const select of $$("select[data-models=vaes]")) fillModelSelect(select, bakeable);
  renderBakeLoras(loras);
}

// The Bake section's LoRA list: a checkbox and a weight per file; what was ticked stays ticked.
function renderBakeLoras(loras) {
  const box = $("#bake-form .bake-loras");
  const before = new Map($$(".bake-lora", box).map((row) => [row.dataset.name, { on: $("input[type=checkbox]", row).checked, weight: $(".weight", row).value }]));
  box.replaceChildren(...(loras.length ? loras.map((lora) => {
    const kept = before.get(lora.name);
    const tick = element("input", { type: "checkbox", value: lora.name });
    tick.checked = Boolean(kept && kept.on);
    tick.disabled = Boolean(lora.note);
    const weight = element("input", { type: "number", class: "weight", step: "0.05", min: "-10", max: "10", value: kept ? kept.weight : "1", "aria-label": `weight of ${lora.name}` });
    const detail = lora.note ? "unreadable" : [familyName(lora.family), lora.rank ? `rank ${lora.rank}` : ""].filter(Boolean).join(" · ");
    return element("div", { class: "bake-lora", dataset: { name: lora.name, family: lora.family || "" }, title: lora.note || "" }, [
      element("label", { class: "check" }, [tick, element("span", { text: lora.name })]),
      element("span", { class: "card-detail", text: detail }), weight]);
  }) : [element("p", { class: "hint", text: "No LoRA files: put them in models/Lora." })]));
  markBakeFamilies();
}

// LoRAs made for another family than the chosen checkpoint are dimmed (baking skips them).
function markBakeFamilies() {
  const model = state.models.find((m) => m.title === $("#bake-form").elements.model.value);
  for (const row of $$("#bake-form .bake-lora")) {
    const other = Boolean(model && model.family && row.dataset.family && row.dataset.family !== model.family);
    row.classList.toggle("other-family", other);
  }
}

function showToolResult(form, rows) {
  const list = $(".tool-result", form);
  list.replaceChildren(...rows.flatMap(([key, value]) => [element("dt", { text: key }), element("dd", { text: String(value) })]));
  list.hidden = false;
}

// One tool request with the form busy meanwhile (its button says what runs and cannot be pressed again).
async function runTool(form, path, body) {
  const button = $("button[type=submit]", form);
  const label = button.textContent;
  $(".tool-result", form).hidden = true;
  button.disabled = true;
  button.textContent = button.dataset.busy;
  form.setAttribute("aria-busy", "true");
  try {
    return await api(path, { method: "POST", body });
  } finally {
    button.disabled = false;
    button.textContent = label;
    form.removeAttribute("aria-busy");
  }
}

function mergeMode() {
  const form = $("#merge-form");
  const addDiff = form.elements.mode.value === "add-diff";
  form.querySelector(".model-c").hidden = !addDiff;
  const alpha = Number(form.elements.alpha.value);
  const shown = Number.isFinite(alpha) ? alpha.toFixed(2) : "?";
  $(".alpha-hint", form).textContent = addDiff
    ? `α = ${shown}: A plus ${shown} × (B − C), what B has learnt beyond C.`
    : `α = ${shown}: ${Math.round((1 - alpha) * 100)}% A, ${Math.round(alpha * 100)}% B.`;
}

async function mergeCheckpoints(event) {
  event.preventDefault();
  const form = event.target;
  const f = form.elements;
  const mode = f.mode.value;
  const models = [f.model_a.value, f.model_b.value, ...(mode === "add-diff" ? [f.model_c.value] : [])];
  const body = { models, mode, alpha: Number(f.alpha.value), dtype: f.dtype.value, name: f.name.value, overwrite: f.overwrite.checked };
  if (f.vae.value) body.vae = f.vae.value;
  const made = await runTool(form, "sfumato/v1/merge", body);
  showToolResult(form, [["Saved", made.path], ["Checkpoint", made.title]]);
  await refreshModels();
}

async function bakeLoras(event) {
  event.preventDefault();
  const form = event.target;
  const f = form.elements;
  const loras = $$(".bake-lora", form).filter((row) => $("input[type=checkbox]", row).checked)
    .map((row) => `${row.dataset.name}:${$(".weight", row).value || 1}`);
  if (!loras.length) throw new Error("bake: tick at least one LoRA");
  const made = await runTool(form, "sfumato/v1/merge-lora", { model: f.model.value, loras, dtype: f.dtype.value, name: f.name.value, overwrite: f.overwrite.checked });
  showToolResult(form, [["Saved", made.path], ["Checkpoint", made.title], ["Baked in", loras.join(", ")], ...made.notes.map((note) => ["Note", note])]);
  await refreshModels();
}

function relativeError(value) {
  return value < 1e-3 ? value.toExponential(2) : value.toFixed(4);
}

async function extractLora(event) {
  event.preventDefault();
  const form = event.target;
  const f = form.elements;
  const body = { tuned: f.tuned.value, base: f.base.value, dim: Number(f.dim.value), name: f.name.value, overwrite: f.overwrite.checked };
  if (f.conv_dim.value) body.conv_dim = Number(f.conv_dim.value);
  const made = await runTool(form, "sfumato/v1/extract-lora", body);
  showToolResult(form, [
    ["Saved", made.path], ["Use as", `<lora:${made.name}:1>`], ["Layers", made.layers],
    ["Mean relative error", relativeError(made.mean_error)],
    ["Max relative error", `${relativeError(made.max_error)} (${made.worst_layer})`],
  ]);
  await refreshModels();
}

// --- tabs, queue, models, settings ---------------------------------------------------------------

function openTab(name) {
  for (const button of $$("#tabs [data-tab]")) button.setAttribute("aria-selected", String(button.dataset.tab === name));
  for (const panel of $$("[data-panel]")) panel.hidden = panel.dataset.panel !== name;
  if (name === "queue") guarded(refreshQueue)();
  if (name === "models") guarded(refreshModels)();
  if (name === "settings") guarded(loadSettings)();
  if (name === "merge" || name === "extract") guarded(refreshModels)(); // files made elsewhere show up
}

async function refreshQueue() {
  const jobs = await api("sfumato/v1/jobs?limit=50");
  tableRows($("#jobs"), jobs.map((job) => [
    new Date(job.created * 1000).toLocaleString(), job.kind, job.state,
    (job.request.generation && job.request.generation.prompt) || "", String(job.error || ""),
    ["queued", "running"].includes(job.state)
      ? element("button", { type: "button", text: "Cancel", onclick: guarded(async () => {
          await api(`sfumato/v1/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" });
          await refreshQueue();
        }) })
      : "",
  ]));
  const images = await api("sfumato/v1/images?limit=60");
  $("#past-images").replaceChildren(...images.map((image) => mediaElement(jobImageUrl(image.job_id, image), image.path, {
    alt: `seed ${image.seed}`, title: image.infotext, class: "thumb",
  })));
}

async function refreshModels() {
  const [models, vaes, loras, embeddings] = await Promise.all([
    api("sdapi/v1/sd-models"), api("sdapi/v1/sd-vae"), api("sdapi/v1/loras"), api("sdapi/v1/embeddings"),
  ]);
  tableRows($("#models-checkpoints"), models.map((m) => [m.title, m.filename]));
  tableRows($("#models-vae"), vaes.map((v) => [v.model_name, v.filename]));
  $("#models-loras .lora-entries").replaceChildren(...loras.map(loraEntry));
  tableRows($("#models-embeddings"), Object.entries(embeddings.loaded).map(([name, e]) => [name, `${e.vectors} vectors`, `width ${e.shape}`]));
  fillSelect($("#checkpoint"), models.map((m) => [m.title, m.title]), (await api("sdapi/v1/options")).sd_model_checkpoint);
  state.models = models;
  state.networks = { loras, embeddings: Object.entries(embeddings.loaded) };
  renderNetworks();
  renderTools(models, vaes, loras);
}

// One LoRA of the Models tab: a row that opens to show the file's kohya training metadata (ss_*).
function loraEntry(lora) {
  const cells = [lora.name, lora.note ? "unreadable" : familyName(lora.family), lora.kinds.join(", "),
    lora.rank ?? "", lora.alpha ?? "", lora.hash || "", lora.trigger_words.join(", ")];
  const metadata = Object.entries(lora.metadata).filter(([key]) => key.startsWith("ss_")).sort(([a], [b]) => a.localeCompare(b));
  const body = [element("p", { class: "hint", text: lora.path })];
  if (lora.note) body.push(element("p", { class: "note", text: lora.note }));
  body.push(metadata.length
    ? element("dl", { class: "kv" }, metadata.flatMap(([key, value]) => [
        element("dt", { text: key }), element("dd", { text: typeof value === "string" ? value : JSON.stringify(value) })]))
    : element("p", { class: "hint", text: "no ss_* training metadata in this file" }));
  return element("details", { class: "lora-entry" }, [
    element("summary", { class: "lora-row" }, cells.map((cell) => element("span", { text: String(cell) }))), ...body]);
}

// A1111's Settings > Optimizations, with its labels; each is an /sdapi/v1/options field.
const OPTIMIZATIONS = [
  { name: "s_min_uncond", label: "Negative Guidance minimum sigma (0: off)", type: "number", min: 0, max: 15, step: 0.01 },
  { name: "s_min_uncond_all", label: "Negative Guidance minimum sigma all steps", type: "checkbox" },
  { name: "token_merging_ratio", label: "Token merging ratio (0: off)", type: "number", min: 0, max: 0.9, step: 0.1 },
  { name: "token_merging_ratio_hr", label: "Token merging ratio for high-res pass (0: same)", type: "number", min: 0, max: 0.9, step: 0.1 },
  { name: "token_merging_ratio_img2img", label: "Token merging ratio for img2img (0: same)", type: "number", min: 0, max: 0.9, step: 0.1 },
  { name: "deepcache_interval", label: "DeepCache interval (full UNet every N steps; 0/1: off)", type: "number", min: 0, max: 10, step: 1 },
  { name: "sd_vae_decode_method", label: "VAE type for decode", type: "select", choices: ["Full", "TAESD"] },
  { name: "pad_cond_uncond", label: "Pad prompt/negative prompt", type: "checkbox" },
];

function optimizationInputs() {
  const fieldset = $("#optimizations");
  for (const spec of OPTIMIZATIONS) {
    const limits = Object.fromEntries(["min", "max", "step"].filter((key) => key in spec).map((key) => [key, spec[key]]));
    const input = spec.type === "select"
      ? element("select", { name: spec.name })
      : element("input", { name: spec.name, type: spec.type, ...limits });
    if (spec.type === "select") fillSelect(input, spec.choices.map((c) => [c, c]));
    fieldset.append(spec.type === "checkbox"
      ? element("label", {}, [input, ` ${spec.label}`])
      : element("label", {}, [`${spec.label} `, input]));
  }
}

function optimizationValues(form) {
  return Object.fromEntries(OPTIMIZATIONS.map((spec) => {
    const input = form.elements[spec.name];
    if (spec.type === "checkbox") return [spec.name, input.checked];
    return [spec.name, spec.type === "number" ? Number(input.value) : input.value];
  }));
}

async function loadSettings() {
  const [options, vaes] = await Promise.all([api("sdapi/v1/options"), api("sdapi/v1/sd-vae")]);
  const form = $("#settings-form");
  fillSelect(form.elements.sd_vae, [["Automatic", "Automatic"], ["None", "None"], ...vaes.map((v) => [v.model_name, v.model_name])], options.sd_vae);
  form.elements.CLIP_stop_at_last_layers.value = options.CLIP_stop_at_last_layers;
  form.elements.samples_save.checked = Boolean(options.samples_save);
  for (const spec of OPTIMIZATIONS) {
    const input = form.elements[spec.name];
    if (spec.type === "checkbox") input.checked = Boolean(options[spec.name]);
    else input.value = options[spec.name] ?? "";
  }
}

async function saveSettings(event) {
  event.preventDefault();
  const form = event.target;
  await api("sdapi/v1/options", { method: "POST", body: {
    sd_vae: form.elements.sd_vae.value,
    CLIP_stop_at_last_layers: Number(form.elements.CLIP_stop_at_last_layers.value),
    samples_save: form.elements.samples_save.checked,
    ...optimizationValues(form),
  } });
  showMessage("settings saved");
}

// --- start ----------------------------------------------------------------------------------------

async function start() {
  expandTemplates();
  optimizationInputs();
  for (const form of $$("form")) wireToggles(form);
  for (const button of $$("#tabs [data-tab]")) button.addEventListener("click", () => openTab(button.dataset.tab));
  state.panels.txt2img = new GenerationPanel($("#txt2img-form"), txt2imgRequest);
  state.panels.img2img = new GenerationPanel($("#img2img-form"), img2imgRequest);
  state.paints.img2img = new PaintCanvas($("#img2img-paint"));
  state.paints.extras = new PaintCanvas($("#extras-paint"));
  state.paints.extras.setMode("mask");
  $("#img2img-form input[name=width]").placeholder = "the image's";
  $("#img2img-form input[name=height]").placeholder = "the image's";
  for (const button of $$("#img2img-form .modes [data-mode]")) button.addEventListener("click", () => setImg2imgMode(button.dataset.mode));
  setImg2imgMode("img2img");

  $("#png-file").addEventListener("change", guarded((e) => e.target.files[0] && pngInfo(e.target.files[0])));
  acceptDrops($("#drop"), pngInfo);
  $("#send-txt2img").addEventListener("click", sendToTxt2img);
  $("#send-img2img").addEventListener("click", guarded(sendToImg2img));
  $("#queue-refresh").addEventListener("click", guarded(refreshQueue));
  $("#models-refresh").addEventListener("click", guarded(refreshModels));
  $("#settings-form").addEventListener("submit", guarded(saveSettings));
  $("#extras-form").addEventListener("submit", guarded(upscaleImage));
  $("#clean").addEventListener("click", guarded(cleanImage));
  $("#merge-form").addEventListener("submit", guarded(mergeCheckpoints));
  $("#bake-form").addEventListener("submit", guarded(bakeLoras));
  $("#extract-form").addEventListener("submit", guarded(extractLora));
  $("#bake-form").elements.model.addEventListener("change", markBakeFamilies);
  const mergeForm = $("#merge-form");
  for (const radio of mergeForm.elements.mode) radio.addEventListener("change", mergeMode);
  mergeForm.elements.alpha_slider.addEventListener("input", () => { mergeForm.elements.alpha.value = mergeForm.elements.alpha_slider.value; mergeMode(); });
  mergeForm.elements.alpha.addEventListener("input", () => { mergeForm.elements.alpha_slider.value = mergeForm.elements.alpha.value; mergeMode(); });
  mergeMode();
  $("#checkpoint").addEventListener("change", guarded(async (e) => {
    renderNetworks(); // LoRAs for another family dim at once
    await api("sdapi/v1/options", { method: "POST", body: { sd_model_checkpoint: e.target.value } });
  }));

  const [samplers, schedulers, upscalers, latentModes, cleanMethods] = await Promise.all([
    api("sdapi/v1/samplers"), api("sdapi/v1/schedulers"), api("sdapi/v1/upscalers"), api("sdapi/v1/latent-upscale-modes"),
    api("sfumato/v1/clean/methods"),
  ]);
  const methodLabels = { telea: "Telea (fast marching)", ns: "Navier-Stokes" };
  fillSelect($("#extras-form").elements.clean_method, cleanMethods.map((m) => [m, methodLabels[m] || m]), "telea");
  for (const select of [$("#extras-form").elements.upscaler_1, $("#img2img-form").elements.sd_upscale_upscaler]) {
    fillSelect(select, upscalers.map((u) => [u.name, u.name]), "Lanczos");
  }
  const hiresUpscalers = [...latentModes.map((m) => m.name), ...upscalers.map((u) => u.name).filter((n) => n !== "None")];
  fillSelect($("#txt2img-form").elements.hr_upscaler, hiresUpscalers.map((name) => [name, name]), "Latent");
  for (const form of [$("#txt2img-form"), $("#img2img-form")]) {
    fillSelect(form.elements.sampler_name, samplers.map((s) => [s.name, s.name]), "DPM++ 2M");
    fillSelect(form.elements.scheduler, schedulers.map((s) => [s.label, s.label]), "Automatic");
  }
  await refreshModels();
}

document.addEventListener("DOMContentLoaded", guarded(start));
