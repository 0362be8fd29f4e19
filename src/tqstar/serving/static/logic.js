// The playground's logic with no DOM: what to ask the server, how to read its stream, and what to show.
// app.js wires it to the page; tests/js/logic.test.mjs checks it under `node --test` (run by tests/serving/test_page.py).

/** The controls the page offers, as the request names them (alpha, k, rollout_len go in the `tqstar` extension;
 * temperature, max_tokens and seed are OpenAI's top-level fields). */
export const CONTROLS = ["alpha", "k", "rollout_len", "temperature", "max_tokens", "seed"];
/** Each control's decoding parameter, as `GET /v1/models` lists what a preset's method uses (tqstar.method.uses). */
export const CONTROL_PARAM = {
  alpha: "alpha", k: "k", rollout_len: "rollout_len", temperature: "temperature", max_tokens: "max_new_tokens",
  seed: "seed",
};
const EXTENSION = ["alpha", "k", "rollout_len"];
/** The parameters a preset line shows, when its method uses them (the rest are tuning knobs). */
const SHOWN = ["k", "block_len", "alpha", "n_rollouts", "rollout_len", "beta", "soft_beta", "bon_n", "bon_policy", "bon_beta"];

/** One server cap as {min, max}: a number is a maximum, [lo, hi] or {min, max} a range; missing parts stay null. */
export function normaliseRange(value, fallbackMin = null) {
  if (value === null || value === undefined) return { min: fallbackMin, max: null };
  if (typeof value === "number") return { min: fallbackMin, max: value };
  if (Array.isArray(value)) return { min: value[0] ?? fallbackMin, max: value[1] ?? null };
  if (typeof value === "object") return { min: value.min ?? fallbackMin, max: value.max ?? null };
  return { min: fallbackMin, max: null };
}

/**
 * The preset list of `GET /v1/models`: [{id, params, kind, uses}] — the preset's decoding parameters, its method's
 * kind ("token", "plain", "best-of-n") and the parameters the method reads, as the server derives them from its
 * method table (an older server without `uses`: every parameter counts as used).
 */
export function presetsFrom(models) {
  return (models?.data ?? []).map((m) => {
    const params = m.tqstar?.params ?? m.tqstar ?? {};
    const method = m.tqstar?.method ?? {};
    return { id: m.id, params, kind: method.kind ?? null, uses: method.uses ?? Object.keys(params) };
  });
}

/**
 * The server's caps for the controls, from `GET /v1/tqstar/limits` ({"limits": {"max_k": 50, "max_alpha": ...}};
 * a cap may also be named without `max_`, or be a range): {alpha, k, rollout_len, temperature, max_tokens} each
 * {min, max, step}. Integers start at 1, α and the temperature at 0.
 */
export function controlSpecs(limits) {
  const src = limits?.limits ?? limits ?? {};
  const cap = (name) => [`max_${name}`, name].map((n) => src[n]).find((v) => v !== undefined);
  return {
    alpha: { ...normaliseRange(cap("alpha"), 0), step: "any" },
    k: { ...normaliseRange(cap("k"), 1), step: 1 },
    rollout_len: { ...normaliseRange(cap("rollout_len"), 1), step: 1 },
    temperature: { ...normaliseRange(cap("temperature"), 0), step: "any" },
    max_tokens: { ...normaliseRange(src.max_tokens ?? src.max_new_tokens, 1), step: 1 },
  };
}

/** Whether the preset's method reads the decoding parameter behind control `name`. */
export function uses(preset, name) {
  return (preset?.uses ?? []).includes(CONTROL_PARAM[name] ?? name);
}

/**
 * Whether the preset draws random numbers with these controls (so a seed changes its answer): it samples its choice
 * (the temperature control, else the preset's, above 0), samples rollouts, or is best-of-N.
 */
export function isSampled(preset, temperature = "") {
  const p = preset?.params ?? {};
  const t = temperature !== "" && temperature !== null && temperature !== undefined ? Number(temperature) : Number(p.temperature ?? 0);
  return t > 0 || preset?.kind === "best-of-n" || (uses(preset, "rollout_temperature") && Number(p.rollout_temperature) > 0);
}

/**
 * Which controls the chosen presets read: {name: [preset ids]}; an empty list means no chosen preset reads it, and
 * the page switches that control off. The seed counts only for presets that sample (see isSampled).
 */
export function controlUsers(presets, temperature = "") {
  const out = {};
  for (const name of CONTROLS) {
    out[name] = presets.filter((p) => p && (name === "seed" ? isSampled(p, temperature) : uses(p, name))).map((p) => p.id);
  }
  return out;
}

/** Whether a preset plainly decodes the SFT model (the reference the other answer is compared with). */
export function isPlainSft(preset) {
  const params = preset.params ?? {};
  return params.method === "sft" || (preset.kind === "token" && Number(params.alpha) === 0);
}

/** The two presets compared by default: a plain SFT preset vs a TQ* preset, else the first two. */
export function defaultPair(presets) {
  const ids = presets.map((p) => p.id);
  const sft = presets.find((p) => isPlainSft(p))?.id ?? ids[0];
  const tq = presets.find((p) => String(p.params.method ?? "").startsWith("tq") && p.id !== sft)?.id
    ?? ids.find((id) => id !== sft) ?? sft;
  return [sft, tq];
}

/** The parameters that matter for a preset's method, as "method tq-direct · k 10 · alpha 2 · ...". */
export function describeParams(params, used = Object.keys(params)) {
  const names = ["method", ...SHOWN.filter((n) => used.includes(n)), "temperature"];
  if (used.includes("rollout_temperature") && Number(params.rollout_temperature) > 0) names.push("rollout_temperature");
  return names.filter((n) => params[n] !== undefined && params[n] !== null).map((n) => `${n} ${params[n]}`).join(" · ");
}

/**
 * What ran for one answer (the response's tqstar.params): the preset line, then the answer's own budget, seed and
 * stop strings — the seed is the one the server drew when the request gave none, so it repeats the answer.
 */
export function describeRun(params, used = Object.keys(params)) {
  const parts = [describeParams(params, used), `max_tokens ${params.max_new_tokens}`, `seed ${params.seed}`];
  if (params.stop?.length) parts.push(`stop ${JSON.stringify(params.stop)}`);
  return parts.join(" · ");
}

/** Chat messages for the request: an optional system turn, then the user's prompt. */
export function chatMessages(system, user) {
  const messages = [];
  if (system && system.trim()) messages.push({ role: "system", content: system });
  messages.push({ role: "user", content: user });
  return messages;
}

/**
 * The body of `POST /v1/chat/completions` for one preset. A control goes only to a preset whose method reads it
 * (as `GET /v1/models` says; so does the step trace), the seed only to a preset that samples; values are sent as typed (the server checks
 * them and answers 400 naming the field), an empty field is left to the preset (an empty seed: the server draws
 * one and reports it).
 */
export function requestBody(preset, { messages, seed, controls, stream = true }) {
  const ext = uses(preset, "trace") ? { trace: true } : {};  // the server refuses a field its method ignores
  const body = { model: preset.id, messages, stream };
  const given = (value) => value !== "" && value !== null && value !== undefined;
  for (const name of CONTROLS) {
    const value = name === "seed" ? seed : controls[name];
    if (!given(value) || !uses(preset, name)) continue;
    if (name === "seed" && !isSampled(preset, controls.temperature)) continue;
    if (EXTENSION.includes(name)) ext[name] = Number(value);
    else body[name] = Number(value);
  }
  body.tqstar = ext;
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
  const note = klNote(tq);
  const n = acc.steps || tokens || 0;
  const per = (v) => (v === undefined || v === null || !n ? null : v / n);
  const notes = [tq?.kl_kind === "estimate" ? "estimate" : "",
    tq?.kl_bound === null || tq?.kl_bound === undefined ? "" : `bound ${fmt(tq.kl_bound, 2)}`].filter(Boolean);
  const kl = tq?.kl === null || tq?.kl === undefined ? "—" : fmt(tq.kl) + (notes.length ? ` (${notes.join("; ")})` : "");
  return [
    { key: "reward", label: "reward", value: fmt(tq?.reward) },
    { key: "kl", label: "KL to SFT", value: kl, ...(note ? { note } : {}) },
    { key: "rollouts", label: "rollouts / token", value: fmt(per(acc.rollouts), 2) },
    { key: "reward_calls", label: "reward calls / token", value: fmt(per(acc.reward_calls), 2) },
    { key: "seconds", label: "seconds / token", value: fmt(per(acc.wall_time_s), 3) },
  ];
}

/**
 * What the KL of an answer means when the answer was decoded greedily, or null. A greedy policy puts all its mass on
 * the token it picks, so each step's KL(π_dec ‖ π_sft) is −log π_sft(chosen): the sum is how unlikely the SFT model
 * finds this very path. Greedy SFT's own answer then has KL > 0, and can have more than TQ*'s when TQ* picks tokens
 * the SFT model is surer of; it is not a distance between the answers. Sampled answers (temperature > 0) have KLs
 * that compare the methods.
 */
export function klNote(tq) {
  const p = tq?.params;
  if (!p || tq.kl === null || tq.kl === undefined || Number(p.temperature) !== 0 || p.method === "bon") return null;
  return "Greedy: every step puts all its weight on one token, so this KL is the sum of −log π_sft(chosen token): how"
    + " unlikely the SFT model finds this path. Greedy SFT's own answer scores above 0 too, and can score above TQ*'s"
    + " when TQ* picks tokens the SFT model is surer of. Compare KLs of sampled answers (temperature > 0).";
}

/** The control a server error names (`param` may be "alpha", "tqstar.alpha", "max_tokens", ...), or null. */
export function errorField(param) {
  if (!param) return null;
  const name = String(param).split(".").pop();
  return CONTROLS.includes(name) || name === "messages" ? name : null;
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
