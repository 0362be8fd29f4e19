// The playground page: reads the presets and caps, streams two answers through the public
// /v1/chat/completions endpoint at once, and renders each token as a focusable span that opens its step.
import {
  CONTROLS, answerSummary, chatMessages, controlSpecs, controlUsers, defaultPair, describeParams, describeRun, deviation,
  errorMessage, fmt, isBlockStep, presetsFrom, readChunk, requestBody, sseJson, stepFlags, stepRows, visibleToken,
} from "./logic.js";

const LABELS = { alpha: "α", k: "k", rollout_len: "rollout length", temperature: "temperature", max_tokens: "max tokens", seed: "seed" };
const $ = (id) => document.getElementById(id);
const state = { presets: [], controller: null, requests: [] };

/** The Authorization header when the user gave an API key. */
function auth() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** GET a JSON document of the server; null when it is absent (404). A 401 opens the API key field. */
async function getJson(path) {
  const res = await fetch(path, { headers: { Accept: "application/json", ...auth() } });
  if (res.status === 404) return null;
  if (res.status === 401) $("auth").open = true;
  if (!res.ok) throw new Error(errorMessage(res.status, await readBody(res)).message);
  return res.json();
}

async function readBody(res) {
  const text = await res.text();
  try { return JSON.parse(text); } catch { return text; }
}

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role" || key === "tabindex") node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

function showFormError(message) {
  $("form-error").textContent = message;
  $("form-error").hidden = !message;
}

/** Fill the preset choosers and the controls' bounds from the server. */
async function init() {
  const models = await getJson("v1/models");
  const limits = await getJson("v1/tqstar/limits");
  state.presets = presetsFrom(models);
  const specs = controlSpecs(limits);
  for (const select of [$("preset-a"), $("preset-b")]) {
    select.replaceChildren(...state.presets.map((p) => el("option", { value: p.id, text: p.id })));
  }
  const [a, b] = defaultPair(state.presets);
  $("preset-a").value = a;
  $("preset-b").value = b;
  const defaults = state.presets.find((p) => p.id === b)?.params ?? {};
  const caps = [];
  for (const name of CONTROLS) {
    if (name === "seed") continue;  // empty: the server draws a fresh seed and reports it
    const input = $(name);
    const { min, max } = specs[name];
    if (min !== null) input.min = min;
    if (max !== null) input.max = max;
    // Start from the right-hand preset's value (max tokens: its max_new_tokens, within the server's cap).
    const preset = name === "max_tokens" ? defaults.max_new_tokens : defaults[name];
    if (preset !== undefined && input.value === "") input.value = max === null ? preset : Math.min(preset, max);
    if (max !== null) caps.push(`${LABELS[name]} ${min ?? ""}–${max}`);
  }
  $("limits").textContent = caps.length ? `Server limits: ${caps.join(", ")}.` : "";
  for (const id of ["a", "b"]) renderAnswerShell(id);
  updateControls();
}

function chosenPresets() {
  return ["a", "b"].map((id) => state.presets.find((p) => p.id === $(`preset-${id}`).value)).filter(Boolean);
}

/** Switch off the controls that neither chosen preset reads (the server says which parameters each method uses), and
 * say on each control which preset it goes to. */
function updateControls() {
  const users = controlUsers(chosenPresets(), $("temperature").value.trim());
  for (const name of CONTROLS) {
    const input = $(name);
    const ids = users[name];
    input.disabled = ids.length === 0;
    input.closest("label").classList.toggle("off", ids.length === 0);
    input.title = ids.length === 0
      ? (name === "seed" ? "Both answers are greedy: no random draw, so no seed matters (raise the temperature)."
        : `Neither chosen preset's method uses ${LABELS[name]}.`)
      : `Sent to ${ids.join(" and ")}.`;
  }
}

function renderAnswerShell(id) {
  const section = $(`answer-${id}`);
  section.replaceChildren($("answer-template").content.cloneNode(true));
  section.querySelector(".title").id = `answer-${id}-title`;
  const preset = state.presets.find((p) => p.id === $(`preset-${id}`).value);
  section.querySelector(".title").textContent = preset ? preset.id : "—";
  section.querySelector(".params").textContent = preset ? `preset: ${describeParams(preset.params, preset.uses)}` : "";
  section.querySelector(".close").addEventListener("click", () => closeStep(section));
  section.querySelector(".step").addEventListener("keydown", (e) => { if (e.key === "Escape") closeStep(section); });
  return section;
}

function controlValues() {
  return Object.fromEntries(CONTROLS.map((name) => [name, $(name).disabled ? "" : $(name).value.trim()]));
}

function markField(field) {
  for (const name of [...CONTROLS, "prompt"]) $(name).removeAttribute("aria-invalid");
  const target = field === "messages" ? "prompt" : field;
  if (target && $(target)) $(target).setAttribute("aria-invalid", "true");
}

/** Generate: both answers stream at once; each one's failure is shown in its own column. */
async function generate(event) {
  event.preventDefault();
  showFormError("");
  markField(null);
  if (!$("prompt").value.trim()) { showFormError("Write a user message first."); markField("messages"); return; }
  const controller = new AbortController();
  state.controller = controller;
  $("generate").disabled = true;
  $("stop").disabled = false;
  $("status").textContent = "generating…";
  const messages = chatMessages($("system").value, $("prompt").value);
  state.requests = ["a", "b"].map((id) => {
    const preset = state.presets.find((p) => p.id === $(`preset-${id}`).value);
    const controls = controlValues();
    return requestBody(preset, { messages, seed: controls.seed, controls });
  });
  document.body.dataset.requests = JSON.stringify(state.requests);
  document.body.dataset.done = "false";
  const results = await Promise.all(["a", "b"].map((id, i) => streamAnswer(id, state.requests[i], controller.signal)));
  state.controller = null;
  $("generate").disabled = false;
  $("stop").disabled = true;
  $("status").textContent = controller.signal.aborted ? "stopped" : results.every(Boolean) ? "done" : "finished with an error";
  document.body.dataset.done = "true";
}

/** Stream one answer into its column; returns whether it finished without an error. */
async function streamAnswer(id, body, signal) {
  const section = renderAnswerShell(id);
  section.dataset.state = "streaming";
  const tokens = section.querySelector(".tokens");
  const steps = [];
  let finish = null;
  try {
    const res = await fetch("v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...auth() },
      body: JSON.stringify(body), signal,
    });
    if (res.status === 401) $("auth").open = true;
    if (!res.ok) return fail(section, errorMessage(res.status, await readBody(res)));
    for await (const chunk of sseJson(res.body)) {
      const item = readChunk(chunk);
      if (item.error) return fail(section, errorMessage(500, { error: item.error }));
      if (item.token) tokens.append(tokenSpan(section, item.token, steps));
      if (item.finish) finish = item.finish;
    }
  } catch (err) {
    if (signal.aborted) { section.dataset.state = "stopped"; return false; }
    return fail(section, errorMessage(0, String(err.message ?? err)));
  }
  if (!finish) return fail(section, { message: "The stream ended before the answer finished.", field: null });
  section.dataset.state = "done";
  section.dataset.finishReason = finish.reason;
  const preset = state.presets.find((p) => p.id === body.model);
  if (finish.tqstar.params) section.querySelector(".params").textContent = `ran: ${describeRun(finish.tqstar.params, preset?.uses)}`;
  if (!steps.length && tokens.childElementCount) {
    tokens.after(el("p", { class: "hint", text: "This method decodes one model over its full vocabulary: it has no"
      + " per-token candidates to show." }));
  }
  const summary = section.querySelector(".summary");
  for (const item of answerSummary(finish.tqstar, steps.length)) {
    summary.append(el("div", { "data-key": item.key, ...(item.note ? { title: item.note } : {}) },
      [el("dt", { text: item.label }), el("dd", { text: item.value })]));
    if (item.note) summary.after(el("p", { class: "hint kl-note", text: item.note }));
  }
  return true;
}

function fail(section, { message, field }) {
  const box = section.querySelector(".error");
  box.textContent = message;
  box.hidden = false;
  section.dataset.state = "error";
  if (field) markField(field);
  return false;
}

/** One token: a focusable span coloured by its deviation from the SFT model; Enter or a click opens its step. */
function tokenSpan(section, token, steps) {
  const span = el("span", { class: token.text ? "tok" : "tok empty", text: token.text });
  if (!token.trace) { span.classList.add("lvl-none"); return span; }
  const index = steps.push(token.trace) - 1;
  const dev = deviation(token.trace);
  const flags = stepFlags(token.trace);
  span.classList.add(`lvl-${dev.level}`);
  if (flags.chosenReused) span.classList.add("reused");
  if (flags.pruned) span.classList.add("has-pruned");
  const rank = isBlockStep(token.trace) ? `block ${token.trace.chosen + 1} of ${token.trace.blocks.length} sampled`
    : dev.rank === null ? "outside the SFT top-k" : `SFT rank ${dev.rank + 1}, gap ${fmt(dev.gap, 2)} nats`;
  const extra = [flags.pruned ? `${flags.pruned} pruned` : "", flags.chosenReused ? "reused rollout" : ""].filter(Boolean);
  Object.assign(span.dataset, { step: String(index), rank: String(dev.rank ?? ""), level: String(dev.level) });
  span.setAttribute("role", "button");
  span.setAttribute("tabindex", "0");
  span.setAttribute("aria-label", `token ${index + 1} “${token.text}”: ${[rank, ...extra].join(", ")}`);
  span.title = [rank, ...extra].join(" · ");
  span.addEventListener("click", () => openStep(section, span, token.trace, index));
  span.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openStep(section, span, token.trace, index); }
  });
  return span;
}

function openStep(section, span, row, index) {
  section.querySelectorAll(".tok.open").forEach((t) => t.classList.remove("open"));
  span.classList.add("open");
  const panel = section.querySelector(".step");
  panel.dataset.step = String(index);
  panel.returnFocus = span;
  const flags = stepFlags(row);
  const notes = [flags.pruned ? `${flags.pruned} pruned` : "", flags.reused ? `${flags.reused} reused` : ""].filter(Boolean);
  panel.querySelector(".step-title").textContent = isBlockStep(row)
    ? `Block at token ${row.step}: ${row.blocks.length} sampled blocks, ${row.choice} choice${notes.length ? ` (${notes.join(", ")})` : ""}`
    : `Step ${row.step ?? index}: ${row.candidates.length} candidates${notes.length ? ` (${notes.join(", ")})` : ""}`;
  panel.querySelector("tbody").replaceChildren(...stepRows(row).map(candidateRow));
  panel.hidden = false;
  panel.focus();
}

function candidateRow(r) {
  const marks = [r.chosen ? "chosen" : "", r.pruned ? "pruned" : "", r.reused ? "reused" : "",
    r.duplicate ? "duplicate" : ""].filter(Boolean);
  const cls = marks.join(" ");
  const badges = marks.map((b) => el("span", { class: `badge ${b}`, text: b }));
  const bars = el("div", { class: "bars", "aria-hidden": "true" }, [
    el("span", { class: "bar sft" }), el("span", { class: "bar dec" }),
  ]);
  bars.children[0].style.width = `${(100 * r.sftBar).toFixed(1)}%`;
  bars.children[1].style.width = `${(100 * r.decBar).toFixed(1)}%`;
  const tr = el("tr", { class: cls, "data-token-id": String(r.id), "data-logp": String(r.logp),
    "data-q": String(r.q), "data-score": String(r.score), "data-p": String(r.p) }, [
    el("td", { class: "text" }, [el("code", { text: visibleToken(r.text) }), ...badges]),
    el("td", { text: fmt(r.logp) }),
    el("td", { text: r.pruned ? "pruned" : fmt(r.q) }),
    el("td", { text: fmt(r.score) }),
    el("td", { text: fmt(r.p) }),
    el("td", {}, [bars]),
  ]);
  if (r.chosen) tr.setAttribute("aria-current", "true");
  return tr;
}

function closeStep(section) {
  const panel = section.querySelector(".step");
  panel.hidden = true;
  section.querySelectorAll(".tok.open").forEach((t) => t.classList.remove("open"));
  panel.returnFocus?.focus();
}

$("controls").addEventListener("submit", generate);
$("stop").addEventListener("click", () => state.controller?.abort());
for (const id of ["a", "b"]) $(`preset-${id}`).addEventListener("change", () => { renderAnswerShell(id); updateControls(); });
$("temperature").addEventListener("input", updateControls);
function start() {
  showFormError("");
  init().then(() => { document.body.dataset.ready = "true"; }, (err) => {
    showFormError(`Could not read the server's presets: ${err.message ?? err}`);
    document.body.dataset.ready = "error";
  });
}
$("api-key").addEventListener("change", start);
start();
