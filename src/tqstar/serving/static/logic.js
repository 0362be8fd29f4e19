// The playground's logic with no DOM: what to ask the server, how to read its stream, and what to show.
// app.js wires it to the page; tests/js/logic.test.mjs checks it under `node --test` (run by tests/serving/test_page.py).

/** Methods that score the SFT model's top-k per token (they take α and k). */
export const TOKEN_METHODS = ["tq-direct", "tq-indirect", "cd", "args", "none"];
/** Methods that roll candidates out (they also take the rollout length). */
export const ROLLOUT_METHODS = ["tq-direct", "tq-indirect", "cd"];
/** The controls the page offers, as named in the request's `tqstar` extension (max_tokens is top level). */
export const CONTROLS = ["alpha", "k", "rollout_len", "max_tokens"];

/** One server cap as {min, max}: a number is a maximum, [lo, hi] or {min, max} a range; missing parts stay null. */
export function normaliseRange(value, fallbackMin = null) {
  if (value === null || value === undefined) return { min: fallbackMin, max: null };
  if (typeof value === "number") return { min: fallbackMin, max: value };
  if (Array.isArray(value)) return { min: value[0] ?? fallbackMin, max: value[1] ?? null };
  if (typeof value === "object") return { min: value.min ?? fallbackMin, max: value.max ?? null };
  return { min: fallbackMin, max: null };
}

/** The preset list of `GET /v1/models`: [{id, params}] where params are the preset's decoding parameters. */
export function presetsFrom(models) {
  return (models?.data ?? []).map((m) => ({ id: m.id, params: m.tqstar?.params ?? m.tqstar ?? {} }));
}

/**
 * The server's caps for the controls, from `GET /v1/tqstar/limits` ({"limits": {"max_k": 50, "max_alpha": ...}};
 * a cap may also be named without `max_`, or be a range): {alpha, k, rollout_len, max_tokens} each
 * {min, max, step}. Integers start at 1, α at 0.
 */
export function controlSpecs(limits) {
  const src = limits?.limits ?? limits ?? {};
  const cap = (name) => [`max_${name}`, name].map((n) => src[n]).find((v) => v !== undefined);
  return {
    alpha: { ...normaliseRange(cap("alpha"), 0), step: "any" },
    k: { ...normaliseRange(cap("k"), 1), step: 1 },
    rollout_len: { ...normaliseRange(cap("rollout_len"), 1), step: 1 },
    max_tokens: { ...normaliseRange(src.max_tokens ?? src.max_new_tokens, 1), step: 1 },
  };
}

/** Whether a preset plainly decodes the SFT model (the reference the other answer is compared with). */
export function isPlainSft(params) {
  return params.method === "sft" || (TOKEN_METHODS.includes(params.method) && Number(params.alpha) === 0);
}

/** The two presets compared by default: a plain SFT preset vs a TQ* preset, else the first two. */
export function defaultPair(presets) {
  const ids = presets.map((p) => p.id);
  const sft = presets.find((p) => isPlainSft(p.params))?.id ?? ids[0];
  const tq = presets.find((p) => String(p.params.method ?? "").startsWith("tq") && p.id !== sft)?.id
    ?? ids.find((id) => id !== sft) ?? sft;
  return [sft, tq];
}

/** The parameters that matter for a preset's method, as "method tq-direct · k 10 · alpha 2 · ...". */
export function describeParams(params) {
  const method = params.method;
  const names = ["method"];
  if (TOKEN_METHODS.includes(method)) names.push("k", "block_len", "alpha");
  if (ROLLOUT_METHODS.includes(method)) names.push("n_rollouts", "rollout_len");
  if (method === "tq-indirect") names.push("beta");
  if (method === "bon" || method === "soft-bon") names.push("bon_n", "bon_policy");
  if (method === "soft-bon") names.push("bon_beta");
  names.push("temperature");
  return names.filter((n) => params[n] !== undefined && params[n] !== null).map((n) => `${n} ${params[n]}`).join(" · ");
}

/** Chat messages for the request: an optional system turn, then the user's prompt. */
export function chatMessages(system, user) {
  const messages = [];
  if (system && system.trim()) messages.push({ role: "system", content: system });
  messages.push({ role: "user", content: user });
  return messages;
}

/**
 * The body of `POST /v1/chat/completions` for one preset. The controls go only where the preset's method uses
 * them (α and k: token-level methods; rollout_len: rollout methods); values are sent as typed (the server
 * checks them and answers 400 naming the field), an empty field is left to the preset.
 */
export function requestBody(preset, { messages, seed, controls, stream = true }) {
  const method = preset.params.method;
  const ext = { trace: true };
  const set = (name) => {
    const value = controls[name];
    if (value !== "" && value !== null && value !== undefined) ext[name] = Number(value);
  };
  if (TOKEN_METHODS.includes(method)) { set("alpha"); set("k"); }
  if (ROLLOUT_METHODS.includes(method)) set("rollout_len");
  const body = { model: preset.id, messages, stream, tqstar: ext };
  if (controls.max_tokens !== "" && controls.max_tokens != null) body.max_tokens = Number(controls.max_tokens);
  if (seed !== "" && seed != null) body.seed = Number(seed);
  if (stream) body.stream_options = { include_usage: true };
  return body;
}

/**
 * Server-sent events, fed in arbitrary pieces: `push(text)` returns the `data` payloads of the events it
 * completed (multi-line data joined with "\n"); comments and other fields are ignored.
 */
export class SSEParser {
  constructor() { this.buffer = ""; }

  push(text) {
    this.buffer += text.replace(/\r\n?/g, "\n");
    const out = [];
    let end;
    while ((end = this.buffer.indexOf("\n\n")) >= 0) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).replace(/^ /, ""));
      if (data.length) out.push(data.join("\n"));
    }
    return out;
  }
}

/** The JSON objects of an SSE byte stream (a ReadableStream of Uint8Array), up to `[DONE]`. */
export async function* sseJson(stream) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  const parser = new SSEParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      const payloads = parser.push(done ? decoder.decode() + "\n\n" : decoder.decode(value, { stream: true }));
      for (const data of payloads) {
        if (data.trim() === "[DONE]") return;
        yield JSON.parse(data);
      }
      if (done) return;
    }
  } finally {
    reader.releaseLock();
  }
}

/**
 * What one stream chunk means for an answer: {error} (the server failed mid-stream), or {token: {text, trace}}
 * when it commits a token (text may be ""), {finish: {reason, tqstar}} on the final chunk, {usage}; or several.
 */
export function readChunk(chunk) {
  if (chunk.error) return { error: chunk.error };
  const out = {};
  const choice = chunk.choices?.[0];
  const trace = chunk.tqstar?.trace;
  const text = choice?.delta?.content ?? choice?.text;
  if (trace || (text !== undefined && text !== null && text !== "")) out.token = { text: text ?? "", trace: trace ?? null };
  if (choice?.finish_reason) out.finish = { reason: choice.finish_reason, tqstar: chunk.tqstar ?? {} };
  if (chunk.usage) out.usage = chunk.usage;
  return out;
}

/**
 * How far a step's choice moved from the SFT model: rank of the chosen token by log π_sft among the candidates
 * (0 = the SFT model's own top-1; null when it is not among them), gap = log π_sft(top-1) − log π_sft(chosen),
 * and a colour level 0..4 (0: the SFT choice; 1..4: gap < 0.5, < 1.5, < 3, ≥ 3 nats; "off": outside the top-k).
 */
export function deviation(row) {
  if (isBlockStep(row)) return { rank: null, gap: null, level: "block" };
  const at = row.candidates.indexOf(row.chosen);
  if (at < 0) return { rank: null, gap: null, level: "off" };
  const lp = row.logp_sft;
  const rank = lp.filter((v, i) => v > lp[at] || (v === lp[at] && i < at)).length;
  const gap = Math.max(...lp) - lp[at];
  const level = rank === 0 ? 0 : gap < 0.5 ? 1 : gap < 1.5 ? 2 : gap < 3 ? 3 : 4;
  return { rank, gap, level };
}

/** Whether a trace row is a blockwise decision: k sampled blocks (`blocks`, `texts`), `chosen` their index. */
export function isBlockStep(row) {
  return Array.isArray(row?.blocks);
}

/** Counts of the step's pruned and reused candidates, and whether the chosen one was reused. */
export function stepFlags(row) {
  const at = isBlockStep(row) ? row.chosen : row.candidates.indexOf(row.chosen);
  const pruned = isBlockStep(row) ? 0 : (row.pruned ?? row.q.map((q) => q === null)).filter(Boolean).length;
  const reused = (row.reused ?? []).filter(Boolean).length;
  return { pruned, reused, chosenReused: at >= 0 && Boolean(row.reused?.[at]) };
}

/**
 * The step's candidates as rows sorted by score (best first; pruned ones, which have no score, last by
 * log π_sft): {id, text, logp, q, score, p, chosen, pruned, reused, sftBar, decBar} where the bars are widths in
 * [0, 1]: π_sft(z) = exp(log π_sft) and the decision probability.
 */
export function stepRows(row) {
  if (isBlockStep(row)) return blockRows(row);
  const rows = row.candidates.map((id, i) => ({
    id,
    text: row.tokens[i],
    logp: row.logp_sft[i],
    q: row.q[i],
    score: row.score[i],
    p: row.p_dec[i],
    chosen: id === row.chosen,
    pruned: row.pruned ? Boolean(row.pruned[i]) : row.q[i] === null,
    reused: Boolean(row.reused?.[i]),
    sftBar: Math.min(1, Math.exp(row.logp_sft[i])),
    decBar: Math.min(1, Math.max(0, row.p_dec[i])),
  }));
  const key = (r) => (r.score === null ? -Infinity : r.score);
  return rows.sort((a, b) => key(b) - key(a) || b.logp - a.logp);
}

/**
 * A blockwise decision's k sampled blocks as rows, sorted by the probability the choice gave them (then by Q̂):
 * {id (sample index), text, logp: null, q (null: not valued, the choice ignored values), score: null, p, chosen,
 * pruned: false (blocks are never pruned), reused, duplicate, sftBar: 1/k (each sample is one of k draws of π_sft),
 * decBar}.
 */
export function blockRows(row) {
  const k = row.blocks.length;
  const rows = row.texts.map((text, i) => ({
    id: i,
    text,
    logp: null,
    q: row.q[i],
    score: null,
    p: row.p_dec[i],
    chosen: i === row.chosen,
    pruned: false,
    reused: Boolean(row.reused?.[i]),
    duplicate: Boolean(row.duplicate?.[i]),
    sftBar: 1 / k,
    decBar: Math.min(1, Math.max(0, row.p_dec[i])),
  }));
  return rows.sort((a, b) => b.p - a.p || (b.q ?? -Infinity) - (a.q ?? -Infinity) || a.id - b.id);
}

/** A token's text with its whitespace made visible (for the candidate table): ␣ space, ↵ newline, ⇥ tab. */
export function visibleToken(text) {
  if (text === "") return "∅";
  return text.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
}

/** A number for display: fixed `digits`, "—" for null/undefined, "−" as the minus sign. */
export function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "—";
  if (x === Infinity) return "∞";
  if (x === -Infinity) return "−∞";
  return x.toFixed(digits).replace(/^-/, "−");
}

/**
 * The figures under an answer, from its final chunk's `tqstar` object and the number of tokens shown:
 * [{key, label, value}] for reward, KL to SFT (with its bound; "estimate" when it is one), rollouts / token, reward calls / token,
 * seconds / token. Per-token figures divide by accounting.steps when given, else by `tokens`.
 */
export function answerSummary(tq, tokens) {
  const acc = tq?.accounting ?? {};
  const n = acc.steps || tokens || 0;
  const per = (v) => (v === undefined || v === null || !n ? null : v / n);
  const notes = [tq?.kl_kind === "estimate" ? "estimate" : "",
    tq?.kl_bound === null || tq?.kl_bound === undefined ? "" : `bound ${fmt(tq.kl_bound, 2)}`].filter(Boolean);
  const kl = tq?.kl === null || tq?.kl === undefined ? "—" : fmt(tq.kl) + (notes.length ? ` (${notes.join("; ")})` : "");
  return [
    { key: "reward", label: "reward", value: fmt(tq?.reward) },
    { key: "kl", label: "KL to SFT", value: kl },
    { key: "rollouts", label: "rollouts / token", value: fmt(per(acc.rollouts), 2) },
    { key: "reward_calls", label: "reward calls / token", value: fmt(per(acc.reward_calls), 2) },
    { key: "seconds", label: "seconds / token", value: fmt(per(acc.wall_time_s), 3) },
  ];
}

/** The control a server error names (`param` may be "alpha", "tqstar.alpha", "max_tokens", ...), or null. */
export function errorField(param) {
  if (!param) return null;
  const name = String(param).split(".").pop();
  return CONTROLS.includes(name) || name === "seed" || name === "messages" ? name : null;
}

/**
 * A readable message for a failed request: `status` the HTTP status (0: no answer), `body` the parsed JSON
 * (OpenAI error shape) or the response text. Returns {message, field}.
 */
export function errorMessage(status, body) {
  const err = typeof body === "object" && body !== null ? (body.error ?? body) : null;
  let text = err?.message ?? (typeof err?.detail === "string" ? err.detail : null)
    ?? (typeof body === "string" && body.trim() ? body.trim() : null);
  const field = errorField(err?.param);
  if (status === 429) text = text ? `The server is busy: ${text}` : "The server is busy; try again in a moment.";
  else if (status === 0) text = `Could not reach the server: ${text ?? "no answer"}.`;
  else if (!text) text = `The server answered HTTP ${status}.`;
  if (field && !text.includes(field)) text += ` (field: ${field})`;
  return { message: text, field };
}
