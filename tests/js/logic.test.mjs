// The playground's pure logic (src/tqstar/serving/static/logic.js) under node's built-in test runner.
// Run: node --test tests/js/   (tests/test_page.py runs it from pytest).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  SSEParser, answerSummary, blockRows, chatMessages, controlSpecs, controlUsers, defaultPair, describeParams,
  describeRun, deviation, errorMessage, fmt, isBlockStep, isSampled, klNote, normaliseRange, presetsFrom, readChunk,
  requestBody, sseJson, stepFlags, stepRows, visibleToken,
} from "../../src/tqstar/serving/static/logic.js";

// Presets as GET /v1/models describes them: the method's kind and the parameters it uses come from the server.
const TQ_USES = ["k", "alpha", "n_rollouts", "rollout_len", "rollout_temperature", "reuse_rollouts", "prune",
  "prune_probe", "temperature", "max_new_tokens", "stop", "seed", "trace"];
const PLAIN_USES = ["temperature", "max_new_tokens", "stop", "seed"];
const model = (id, method, kind, uses, params = {}) => ({ id, tqstar: { params: { method, ...params },
  method: { name: method, kind, uses } } });

// A trace row as the decoder writes it: 4 candidates in log π_sft order, the third chosen, the last pruned,
// the first valued from the previous step's rollout.
const ROW = {
  step: 3,
  candidates: [11, 22, 33, 44],
  tokens: [" the", " a", "\n", " fun"],
  logp_sft: [-0.5, -1.2, -2.9, -4.0],
  q: [0.1, 0.2, 0.9, null],
  score: [-0.4, -1.0, -2.0, null],
  p_dec: [0, 0, 1, 0],
  chosen: 33,
  reused: [true, false, false, false],
  pruned: [false, false, false, true],
};

test("normaliseRange reads a number, a pair and an object", () => {
  assert.deepEqual(normaliseRange(64, 1), { min: 1, max: 64 });
  assert.deepEqual(normaliseRange([0, 10], 0), { min: 0, max: 10 });
  assert.deepEqual(normaliseRange({ min: 2, max: 5 }, 1), { min: 2, max: 5 });
  assert.deepEqual(normaliseRange(undefined, 1), { min: 1, max: null });
});

test("controlSpecs reads the server's max_* caps", () => {
  const specs = controlSpecs({ limits: { max_batch: 16, max_tokens: 512, max_k: 50, max_rollout_len: 256, max_alpha: 1000 } });
  assert.deepEqual(specs, {
    alpha: { min: 0, max: 1000, step: "any" }, k: { min: 1, max: 50, step: 1 },
    rollout_len: { min: 1, max: 256, step: 1 }, temperature: { min: 0, max: null, step: "any" },
    max_tokens: { min: 1, max: 512, step: 1 },
  });
});

test("controlSpecs takes caps named plainly or as ranges, bare or wrapped", () => {
  const specs = controlSpecs({ limits: { max_tokens: 128, k: 20, rollout_len: [1, 32], alpha: { min: 0, max: 8 } } });
  assert.deepEqual(specs.max_tokens, { min: 1, max: 128, step: 1 });
  assert.deepEqual(specs.k, { min: 1, max: 20, step: 1 });
  assert.deepEqual(specs.rollout_len, { min: 1, max: 32, step: 1 });
  assert.deepEqual(specs.alpha, { min: 0, max: 8, step: "any" });
  assert.equal(controlSpecs({ max_new_tokens: 9 }).max_tokens.max, 9);
  assert.equal(controlSpecs(null).alpha.max, null);
});

test("defaultPair compares the plain SFT preset with the TQ* preset, whatever their order", () => {
  const presets = presetsFrom({ data: [
    model("cd", "cd", "token", TQ_USES, { alpha: 1 }),
    model("tq", "tq-direct", "token", TQ_USES, { alpha: 2 }),
    model("greedy", "sft", "plain", PLAIN_USES),
  ] });
  assert.deepEqual(defaultPair(presets), ["greedy", "tq"]);
  const zero = presetsFrom({ data: [model("tq", "tq-direct", "token", TQ_USES, { alpha: 1 }),
    model("a0", "tq-soft", "token", TQ_USES, { alpha: 0 })] });
  assert.deepEqual(defaultPair(zero), ["a0", "tq"]);
  assert.deepEqual(defaultPair(presetsFrom({ data: [{ id: "x" }, { id: "y" }] })), ["x", "y"]);
  assert.deepEqual(defaultPair(presetsFrom({ data: [{ id: "only" }] })), ["only", "only"]);
});

test("presetsFrom reads the parameters, and what the method uses from the server", () => {
  const [p] = presetsFrom({ data: [model("p", "eft", "token", ["k", "alpha", "beta", "temperature"], { beta: 2 })] });
  assert.deepEqual(p, { id: "p", params: { method: "eft", beta: 2 }, kind: "token",
    uses: ["k", "alpha", "beta", "temperature"] });
  assert.deepEqual(presetsFrom({ data: [{ id: "old", tqstar: { params: { method: "cd", k: 3 } } }] })[0].uses,
    ["method", "k"]);  // an older server without `uses`: every parameter counts
});

test("describeParams shows only what the method uses; describeRun adds the answer's budget, seed and stop", () => {
  const all = { method: "sft", k: 4, alpha: 2, n_rollouts: 1, rollout_len: 3, rollout_temperature: 0, beta: 1, bon_n: 4,
    bon_policy: "sft", temperature: 0, max_new_tokens: 24, seed: 81, stop: [] };
  assert.equal(describeParams(all, PLAIN_USES), "method sft · temperature 0");
  assert.equal(describeParams({ ...all, method: "tq-direct" }, TQ_USES),
    "method tq-direct · k 4 · alpha 2 · n_rollouts 1 · rollout_len 3 · temperature 0");
  assert.equal(describeParams({ ...all, method: "soft-cd", rollout_temperature: 1 }, TQ_USES),
    "method soft-cd · k 4 · alpha 2 · n_rollouts 1 · rollout_len 3 · temperature 0 · rollout_temperature 1");
  assert.equal(describeParams({ ...all, method: "eft" }, ["k", "alpha", "beta", "temperature"]),
    "method eft · k 4 · alpha 2 · beta 1 · temperature 0");
  assert.equal(describeParams({ ...all, method: "bon" }, ["bon_n", "bon_policy", "temperature"]),
    "method bon · bon_n 4 · bon_policy sft · temperature 0");
  assert.equal(describeRun({ ...all, stop: ["\n"] }, PLAIN_USES),
    'method sft · temperature 0 · max_tokens 24 · seed 81 · stop ["\\n"]');
  assert.equal(describeParams({ ...all, method: "cd", block_len: 8 }, [...TQ_USES, "block_len"]),
    "method cd · k 4 · block_len 8 · alpha 2 · n_rollouts 1 · rollout_len 3 · temperature 0");
  assert.equal(describeParams({ ...all, method: "soft-bon", bon_beta: 0.1 }, ["bon_n", "bon_policy", "bon_beta", "temperature"]),
    "method soft-bon · bon_n 4 · bon_policy sft · bon_beta 0.1 · temperature 0");
});

test("controlUsers switches off what neither preset reads, and the seed while both are greedy", () => {
  const [sft, tq, bon] = presetsFrom({ data: [model("sft", "sft", "plain", PLAIN_USES, { temperature: 0 }),
    model("tq", "tq-direct", "token", TQ_USES, { temperature: 0, rollout_temperature: 0 }),
    model("bon", "bon", "best-of-n", ["bon_n", "temperature", "max_new_tokens", "seed"], { temperature: 1 })] });
  const greedy = controlUsers([sft, tq], "0");
  assert.deepEqual(greedy, { alpha: ["tq"], k: ["tq"], rollout_len: ["tq"], temperature: ["sft", "tq"],
    max_tokens: ["sft", "tq"], seed: [] });
  assert.deepEqual(controlUsers([sft, tq], "0.7").seed, ["sft", "tq"]);
  assert.deepEqual(controlUsers([sft, sft], "").alpha, []);
  assert.equal(isSampled(bon, ""), true);
  assert.equal(isSampled(tq, ""), false);
  assert.equal(isSampled({ ...tq, params: { ...tq.params, rollout_temperature: 1 } }, "0"), true);
});

test("chatMessages adds the system turn only when written", () => {
  assert.deepEqual(chatMessages("", "hi"), [{ role: "user", content: "hi" }]);
  assert.deepEqual(chatMessages("  ", "hi"), [{ role: "user", content: "hi" }]);
  assert.deepEqual(chatMessages("be kind", "hi"), [
    { role: "system", content: "be kind" }, { role: "user", content: "hi" }]);
});

test("requestBody sends each control only to the presets whose method uses it, the seed only when sampled", () => {
  const controls = { alpha: "99", k: "4", rollout_len: "8", temperature: "0.5", max_tokens: "12" };
  const messages = [{ role: "user", content: "hi" }];
  const [tqPreset, argsPreset, sftPreset] = presetsFrom({ data: [model("tq", "tq-direct", "token", TQ_USES),
    model("a", "args", "token", ["k", "alpha", "prune", "temperature", "max_new_tokens", "seed", "trace"]),
    model("s", "sft", "plain", PLAIN_USES)] });
  const tq = requestBody(tqPreset, { messages, seed: "7", controls });
  assert.deepEqual(tq, {
    model: "tq", messages, stream: true, seed: 7, max_tokens: 12, temperature: 0.5,
    stream_options: { include_usage: true }, tqstar: { trace: true, alpha: 99, k: 4, rollout_len: 8 },
  });
  const args = requestBody(argsPreset, { messages, seed: "", controls });
  assert.deepEqual(args.tqstar, { trace: true, alpha: 99, k: 4 });
  assert.equal("seed" in args, false);  // empty: the server draws one
  const sft = requestBody(sftPreset, { messages, seed: "3", controls: { ...controls, temperature: "0" }, stream: false });
  assert.deepEqual(sft, { model: "s", messages, stream: false, temperature: 0, max_tokens: 12, tqstar: {} });  // no trace: plain decoding has none
  const blank = requestBody(tqPreset,
    { messages, seed: "0", controls: { alpha: "", k: "", rollout_len: "", temperature: "", max_tokens: "" } });
  assert.deepEqual(blank.tqstar, { trace: true });
  assert.equal("max_tokens" in blank, false);
  assert.equal("seed" in blank, false);  // the preset is greedy: a seed would change nothing
});

test("SSEParser joins events split anywhere, CRLF included, and ignores comments", () => {
  const parser = new SSEParser();
  assert.deepEqual(parser.push(": keep-alive\n\ndata: {\"a\""), []);
  assert.deepEqual(parser.push(": 1}\r\n\r\ndata: [DO"), ['{"a": 1}']);
  assert.deepEqual(parser.push("NE]\n\nevent: x\ndata: one\ndata: two\n\n"), ["[DONE]", "one\ntwo"]);
});

test("sseJson yields the JSON chunks of a byte stream up to [DONE], across split UTF-8", async () => {
  const bytes = new TextEncoder().encode('data: {"t": "é"}\n\ndata: {"t": 2}\n\ndata: [DONE]\n\ndata: {"t": 3}\n\n');
  const cut = bytes.indexOf(0xc3) + 1; // inside the two bytes of "é"
  const stream = new ReadableStream({
    start(c) { c.enqueue(bytes.slice(0, cut)); c.enqueue(bytes.slice(cut)); c.close(); },
  });
  const got = [];
  for await (const chunk of sseJson(stream)) got.push(chunk);
  assert.deepEqual(got, [{ t: "é" }, { t: 2 }]);
});

test("sseJson reads a last event that lacks its blank line", async () => {
  const stream = new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode('data: {"t": 1}')); c.close(); } });
  const got = [];
  for await (const chunk of sseJson(stream)) got.push(chunk);
  assert.deepEqual(got, [{ t: 1 }]);
});

test("readChunk tells tokens, the finish, usage and mid-stream errors apart", () => {
  assert.deepEqual(readChunk({ choices: [{ delta: { role: "assistant" } }] }), {});
  assert.deepEqual(readChunk({ choices: [{ delta: { content: "" } }], tqstar: { trace: ROW } }),
    { token: { text: "", trace: ROW } });
  assert.deepEqual(readChunk({ choices: [{ delta: { content: "Hi" } }] }), { token: { text: "Hi", trace: null } });
  const fin = readChunk({ choices: [{ delta: {}, finish_reason: "length" }], tqstar: { reward: 0.5 } });
  assert.deepEqual(fin, { finish: { reason: "length", tqstar: { reward: 0.5 } } });
  assert.deepEqual(readChunk({ choices: [], usage: { completion_tokens: 3 } }), { usage: { completion_tokens: 3 } });
  assert.deepEqual(readChunk({ error: { message: "boom" } }), { error: { message: "boom" } });
});

test("deviation ranks the chosen token under the SFT model and buckets the log-prob gap", () => {
  const dev = deviation(ROW);
  assert.equal(dev.rank, 2);
  assert.ok(Math.abs(dev.gap - 2.4) < 1e-12);
  assert.equal(dev.level, 3);
  assert.deepEqual(deviation({ ...ROW, chosen: 11 }), { rank: 0, gap: 0, level: 0 });
  assert.equal(deviation({ ...ROW, chosen: 22 }).level, 2);
  assert.equal(deviation({ ...ROW, chosen: 44 }).level, 4);
  assert.equal(deviation({ ...ROW, chosen: 99 }).level, "off");
  // A tie with the top-1 ranks by position (the candidate list order is the SFT model's).
  assert.equal(deviation({ ...ROW, logp_sft: [-1, -1, -2, -3], chosen: 22 }).rank, 1);
});

test("stepFlags counts pruned and reused candidates, also when the row has no pruned list", () => {
  assert.deepEqual(stepFlags(ROW), { pruned: 1, reused: 1, chosenReused: false });
  assert.deepEqual(stepFlags({ ...ROW, chosen: 11 }), { pruned: 1, reused: 1, chosenReused: true });
  const { pruned, reused, ...old } = ROW;
  assert.deepEqual(stepFlags(old), { pruned: 1, reused: 0, chosenReused: false });
});

test("stepRows sorts by score with pruned candidates last and marks the chosen one", () => {
  const rows = stepRows(ROW);
  assert.deepEqual(rows.map((r) => r.id), [11, 22, 33, 44]);
  assert.deepEqual(rows.map((r) => r.chosen), [false, false, true, false]);
  assert.equal(rows[3].pruned, true);
  assert.equal(rows[0].reused, true);
  assert.ok(Math.abs(rows[0].sftBar - Math.exp(-0.5)) < 1e-12);
  assert.equal(rows[2].decBar, 1);
  const swapped = stepRows({ ...ROW, score: [-3, -1, -2, null] });
  assert.deepEqual(swapped.map((r) => r.id), [22, 33, 11, 44]);
  assert.equal(rows[2].text, "\n");
  // Equal scores, and pruned candidates (no score), go by log π_sft.
  const ties = stepRows({ ...ROW, score: [-1, -1, null, null], pruned: [false, false, true, true] });
  assert.deepEqual(ties.map((r) => r.id), [11, 22, 33, 44]);
});

// A blockwise decision's trace row: k = 3 sampled blocks (the third a duplicate of the first), the second chosen.
const BLOCK = {
  step: 4, blocks: [[5, 6], [7], [5, 6]], texts: [" a b", " c", " a b"], q: [0.2, 0.9, 0.2],
  p_dec: [0.25, 0.5, 0.25], chosen: 1, duplicate: [false, false, true], reused: [false, false, false], choice: "soft",
};

test("a blockwise step lists its sampled blocks by the choice's probability, duplicates marked", () => {
  assert.ok(isBlockStep(BLOCK) && !isBlockStep(ROW));
  const rows = stepRows(BLOCK);
  assert.deepEqual(rows, blockRows(BLOCK));
  assert.deepEqual(rows.map((r) => r.id), [1, 0, 2]);
  assert.deepEqual(rows.map((r) => [r.chosen, r.duplicate, r.pruned]), [[true, false, false], [false, false, false],
    [false, true, false]]);
  assert.deepEqual(rows.map((r) => r.text), [" c", " a b", " a b"]);
  assert.ok(rows.every((r) => Math.abs(r.sftBar - 1 / 3) < 1e-12 && r.logp === null && r.score === null));
  assert.deepEqual(rows.map((r) => r.decBar), [0.5, 0.25, 0.25]);
  assert.deepEqual(deviation(BLOCK), { rank: null, gap: null, level: "block" });
  assert.deepEqual(stepFlags(BLOCK), { pruned: 0, reused: 0, chosenReused: false });
  assert.deepEqual(stepFlags({ ...BLOCK, reused: [false, true, false] }), { pruned: 0, reused: 1, chosenReused: true });
  // Not valued (α = 0): no Q̂, and nothing pruned.
  const unvalued = stepRows({ ...BLOCK, q: [null, null, null], p_dec: [1, 0, 0], chosen: 0, choice: "argmax" });
  assert.deepEqual(unvalued.map((r) => [r.id, r.q, r.pruned]), [[0, null, false], [1, null, false], [2, null, false]]);
});

test("visibleToken shows whitespace and the empty token", () => {
  assert.equal(visibleToken(" a\tb\n"), "␣a⇥b↵");
  assert.equal(visibleToken(""), "∅");
});

test("fmt rounds, uses a true minus sign and a dash for missing values", () => {
  assert.equal(fmt(-1.23456), "−1.235");
  assert.equal(fmt(2, 1), "2.0");
  assert.equal(fmt(null), "—");
  assert.equal(fmt(undefined), "—");
  assert.equal(fmt(-Infinity), "−∞");
});

test("answerSummary divides the compute by the steps and shows the KL bound", () => {
  const tq = { reward: 0.5, kl: 1.25, kl_bound: 3, accounting: { steps: 4, rollouts: 10, reward_calls: 6, wall_time_s: 2 } };
  const got = Object.fromEntries(answerSummary(tq, 99).map((i) => [i.key, i.value]));
  assert.deepEqual(got, { reward: "0.500", kl: "1.250 (bound 3.00)", rollouts: "2.50", reward_calls: "1.50", seconds: "0.500" });
  const plain = Object.fromEntries(answerSummary({ reward: null, kl: null, accounting: { rollouts: 0, wall_time_s: 1 } }, 2)
    .map((i) => [i.key, i.value]));
  assert.deepEqual(plain, { reward: "—", kl: "—", rollouts: "0.00", reward_calls: "—", seconds: "0.500" });
  const estimated = answerSummary({ ...tq, kl_kind: "estimate" }, 99).find((i) => i.key === "kl").value;
  assert.equal(estimated, "1.250 (estimate; bound 3.00)");
});

test("klNote explains the KL of a greedy answer, and only of one", () => {
  const greedy = { kl: 15.6, params: { method: "sft", temperature: 0 } };
  assert.match(klNote(greedy), /−log π_sft\(chosen token\)/);
  assert.equal(klNote({ ...greedy, params: { method: "sft", temperature: 0.7 } }), null);
  assert.equal(klNote({ ...greedy, kl: null }), null);
  assert.equal(klNote({ kl: 1, params: { method: "bon", temperature: 0 } }), null);
  assert.equal(answerSummary(greedy, 3).find((i) => i.key === "kl").note, klNote(greedy));
});

test("errorMessage reads the OpenAI error shape and names the field", () => {
  const bad = errorMessage(400, { error: { message: "`alpha` must be <= 10, got 99", param: "tqstar.alpha" } });
  assert.deepEqual(bad, { message: "`alpha` must be <= 10, got 99", field: "alpha" });
  const unnamed = errorMessage(400, { error: { message: "too long", param: "max_tokens" } });
  assert.deepEqual(unnamed, { message: "too long (field: max_tokens)", field: "max_tokens" });
  assert.equal(errorMessage(429, { error: { message: "queue full; retry" } }).message, "The server is busy: queue full; retry");
  assert.equal(errorMessage(429, "").message, "The server is busy; try again in a moment.");
  assert.equal(errorMessage(0, "Failed to fetch").message, "Could not reach the server: Failed to fetch.");
  assert.equal(errorMessage(502, "").message, "The server answered HTTP 502.");
  assert.equal(errorMessage(422, { detail: "bad body" }).message, "bad body");
  assert.equal(errorMessage(400, { error: { message: "x", param: "temperature" } }).field, "temperature");
  assert.equal(errorMessage(400, { error: { message: "x", param: "tqstar.beta" } }).field, null);
});
