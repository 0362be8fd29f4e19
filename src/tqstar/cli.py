"""The ``tqstar`` command line: a thin layer over the library (every command is one library call).

    tqstar generate [--config run.yaml] [flags]   decode prompts with a method; text or JSONL out
    tqstar demo                                   SmolLM2: SFT, DPO baseline, TQ* direct/soft, EFT side by side
    tqstar eval --config eval.yaml                run methods over a prompt set (resumable JSONL), then report
    tqstar report results.jsonl                   table (terminal, Markdown, CSV) and plots of a results file
    tqstar testbed  [flags]                       exact TQ*, soft values, EFT, CD, ARGS on tabular instances
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .errors import TQStarError

DECODE_FLAGS = ("method", "k", "alpha", "n_rollouts", "rollout_len", "rollout_temperature", "rollout_seed", "beta",
                "soft_beta", "temperature", "max_new_tokens", "seed", "bon_n", "bon_policy")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _quiet_transformers()
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except TQStarError as exc:
        print(f"tqstar: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tqstar: interrupted", file=sys.stderr)
        return 130


def _quiet_transformers() -> None:
    """No weight-loading progress bars or info logs from transformers in our output."""
    try:
        from transformers.utils import logging

        logging.disable_progress_bar()
        logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


# ---- generate ------------------------------------------------------------------------------------------------
def run_generate(args: argparse.Namespace) -> int:
    from .config import RunConfig, load_yaml

    config = RunConfig.from_dict(_merge(load_yaml(args.config) if args.config else {}, args))
    if not config.prompts:
        raise TQStarError("no prompts given; pass --prompt TEXT (repeatable) or --prompts-file FILE")
    if config.sft is None:
        print("tqstar: no --sft given: using the built-in tiny random models and the sentiment reward"
              " (they show the machinery, not alignment)", file=sys.stderr)
    engine = config.build()
    out = open(args.output, "w") if args.output else sys.stdout  # noqa: SIM115
    fmt = args.format or ("jsonl" if args.output and args.output.endswith(".jsonl") else "text")

    def emit(response) -> None:
        if fmt == "jsonl":
            out.write(json.dumps(response.to_dict()) + "\n")
        else:
            out.write(format_response(response))
            if response.trace:
                out.write(format_trace(response.trace) + "\n")
        out.flush()

    try:
        engine.generate(list(config.prompts), config.decode, batch_size=config.batch_size,
                        concurrency=config.concurrency, truncate_prompt=config.truncate_prompt,
                        progress=not args.no_progress, on_response=emit)
    finally:
        if out is not sys.stdout:
            out.close()
        print_server_stats(engine)
    return 0


def print_server_stats(engine) -> None:
    """One stderr line per served model: requests, retries, tokens sent, and the server's prefix-cache hit rate."""
    for role in ("sft", "baseline"):
        lm = getattr(engine.models, role)
        if lm is None or not hasattr(lm, "stats"):
            continue
        stats = lm.stats()
        line = (f"tqstar: {role} server {lm.base_url}: {stats['requests']} requests, {stats['retries']} retries,"
                f" {stats['prompt_tokens_sent']} prompt tokens sent, {stats['completion_tokens']} tokens generated")
        if "prefix_cache_hit_rate" in stats:
            line += f", server prefix-cache hit rate {stats['prefix_cache_hit_rate']:.1%} (since server start)"
        print(line, file=sys.stderr)


def format_response(response) -> str:
    a = response.accounting
    facts = [f"reward={response.reward:.4f}" if response.reward is not None else None,
             f"kl={response.kl:.3f}" if response.kl is not None else None,
             f"tokens={len(response.token_ids)}", f"finish={response.finish_reason}",
             f"rollouts={a.rollouts}", f"reward_calls={a.reward_calls}", f"time={a.wall_time_s:.2f}s"]
    return (f"### [{response.method}] {response.prompt}\n{response.text}\n"
            f"({', '.join(f for f in facts if f)})\n\n")


def format_trace(trace: list[dict[str, Any]]) -> str:
    """The per-step table: every candidate's log π_sft, Q̂, score and decoding probability; * marks the choice.

    A candidate whose Q̂ was never computed (it could not change the choice) shows ``pruned``; one valued from the
    previous step's rollout is marked ``reused``."""
    lines = [f"{'step':>4}  {'token':<14}{'logp_sft':>9}{'Q':>9}{'score':>9}{'p_dec':>7}"]
    for row in trace:
        for j, z in enumerate(row["candidates"]):
            mark = "*" if z == row["chosen"] else " "
            q, s = row["q"][j], row["score"][j]
            note = "  reused" if row.get("reused", [False] * (j + 1))[j] else ""
            lines.append(f"{row['step']:>4}{mark} {row['tokens'][j]!r:<14.14}{row['logp_sft'][j]:>9.3f}"
                         f"{'pruned' if q is None else f'{q:.3f}':>9}{'-inf' if s is None else f'{s:.3f}':>9}"
                         f"{row['p_dec'][j]:>7.3f}{note}")
    return "\n".join(lines)


def _merge(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Flags override the YAML file."""
    data = dict(data)
    for role in ("sft", "baseline"):
        path = getattr(args, role)
        system = getattr(args, f"{role}_system_prompt")
        adapter = getattr(args, f"{role}_adapter")
        tokenizer = getattr(args, f"{role}_tokenizer")
        if (path is None and system is None and adapter is None and tokenizer is None and args.dtype is None
                and args.device is None and not args.no_chat_template):
            continue
        spec = data.get(role)
        spec = {"path": spec} if isinstance(spec, str) else dict(spec or {})
        if path is not None:
            spec["path"] = path
        if not spec.get("path"):
            if system is not None:
                data.setdefault(role, None)
            continue
        for key, value in (("system_prompt", system), ("adapter", adapter), ("tokenizer", tokenizer),
                           ("dtype", args.dtype), ("device", args.device)):
            if value is not None:
                spec[key] = value
        if args.no_chat_template:
            spec["chat_template"] = False
        data[role] = spec
    for role in ("reward", "baseline_reward"):
        spec = getattr(args, role)
        if spec is not None:
            data[role] = spec
    reward = data.get("reward")
    if reward is not None and (args.reward_format or args.reward_truncate or args.reward_sigmoid):
        reward = {"spec": reward} if isinstance(reward, str) else dict(reward)
        reward.update({k: v for k, v in (("format", args.reward_format), ("truncate", args.reward_truncate or None),
                                         ("sigmoid", args.reward_sigmoid or None)) if v is not None})
        data["reward"] = reward
    decode = dict(data.get("decode") or {})
    for name in DECODE_FLAGS:
        value = getattr(args, name)
        if value is not None:
            decode[name] = value
    if args.stop:
        decode["stop"] = tuple(args.stop)
    if args.trace:
        decode["trace"] = True
    data["decode"] = decode
    if args.prompt:
        data["prompts"] = list(args.prompt)
    if args.prompts_file:
        data["prompts_file"] = args.prompts_file
        if not args.prompt:
            data.pop("prompts", None)
    if args.batch_size is not None:
        data["batch_size"] = args.batch_size
    if args.concurrency is not None:
        data["concurrency"] = args.concurrency
    if args.truncate_prompt:
        data["truncate_prompt"] = True
    return data


# ---- demo ---------------------------------------------------------------------------------------------------
def run_demo_command(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(max_new_tokens=args.max_new_tokens, k=args.k, alpha=args.alpha, rollout_len=args.rollout_len,
             n_rollouts=args.n_rollouts)
    return 0


# ---- eval and report ------------------------------------------------------------------------------------------
def run_eval(args: argparse.Namespace) -> int:
    from .config import EvalConfig, load_yaml

    data = load_yaml(args.config)
    if args.output:
        data["output"] = args.output
    if args.prompts or args.limit:
        prompts = data.get("prompts") or {}
        prompts = {"source": prompts} if isinstance(prompts, str) else dict(prompts)
        if args.prompts:
            prompts["source"] = args.prompts
        if args.limit:
            prompts["limit"] = args.limit
        data["prompts"] = prompts
    config = EvalConfig.from_dict(data)
    evaluation = config.build(progress=not args.no_progress)
    try:
        path = evaluation.run()
    finally:
        print_server_stats(evaluation.engine)
    print(f"results: {path}", file=sys.stderr)
    args.file = [str(path)]
    return run_report(args)


def run_report(args: argparse.Namespace) -> int:
    from .judge import LLMJudge
    from .report import report

    llm_judge = None
    if args.llm_judge_url or args.llm_judge_model:
        llm_judge = LLMJudge(args.llm_judge_url or "", args.llm_judge_model or "")
    coherence = None
    if args.coherence != "none":
        from .metrics import Coherence

        try:
            coherence = Coherence(None if args.coherence == "minilm" else args.coherence)
        except TQStarError as exc:
            print(f"tqstar: coherence skipped: {exc}", file=sys.stderr)
    _, text = report(args.file, reference=args.reference, out_dir=args.out_dir, coherence=coherence, title=args.title,
                     llm_judge=llm_judge, kls=getattr(args, "kls", None))
    print(text)
    if args.out_dir:
        print(f"table.md, table.csv and plots written to {args.out_dir}", file=sys.stderr)
    return 0


# ---- testbed -------------------------------------------------------------------------------------------------
def run_testbed(args: argparse.Namespace) -> int:
    from .testbed import average, exact_report, format_matched_kl, format_report, matched_kl

    for setting in ("direct", "indirect") if args.setting == "both" else (args.setting,):
        rows = exact_report(instances=args.instances, alphas=tuple(args.alphas), vocab_size=args.vocab_size,
                            horizon=args.horizon, beta_baseline=args.beta_baseline, k=args.k,
                            temperature=args.temperature, seed=args.seed, setting=setting, draws=args.draws,
                            per_instance=True)
        target = "the target r" if setting == "direct" else "an independent reward r_BL"
        print(f"exact testbed, {setting} transfer: {args.instances} random instances, vocab {args.vocab_size}, horizon"
              f" {args.horizon}, baseline = optimal policy for {target} at beta {args.beta_baseline},"
              f" k = {args.k or args.vocab_size}, temperature {args.temperature}; tq-soft/soft-cd: average policy over"
              f" {args.draws} draws of their N rollouts; means over instances")
        print(format_report(average(rows)))
        print("\nat matched KL: E[r] interpolated along each instance's alpha sweep (alpha = 0 is SFT at KL 0), then"
              " averaged over instances; in brackets the mean gap to the exact optimum at that KL (bisection on beta);"
              " * = not every instance's sweep reaches that KL (mean over those that do)")
        print(format_matched_kl(matched_kl(rows, tuple(args.kls), vocab_size=args.vocab_size, horizon=args.horizon,
                                           seed=args.seed), args.instances) + "\n")
    return 0


def _report_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", default="sft", help="method label the win rates and normalisation refer to")
    parser.add_argument("--out-dir", help="write table.md, table.csv and plots here")
    parser.add_argument("--coherence", default="minilm", help="embedding model directory, 'minilm' (default) or 'none'")
    parser.add_argument("--llm-judge-url", help="OpenAI-compatible server for a pairwise LLM judge (optional)")
    parser.add_argument("--llm-judge-model", help="served model name of the LLM judge")
    parser.add_argument("--title", default="", help="title of the plots")
    parser.add_argument("--kls", type=float, nargs="+", help="target KLs of the matched-KL table (default: ¼, ½, 1 ×"
                        " the smallest mean KL the α-swept methods reach)")


# ---- parser --------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tqstar", description="Transfer Q* decoding-time alignment.")
    sub = parser.add_subparsers(dest="command")

    g = sub.add_parser("generate", help="decode prompts with a method (tq-direct, tq-indirect, cd, args, bon, ...)",
                       description="Decode prompts. With no --sft, the built-in tiny random models and the"
                                   " sentiment reward are used.")
    g.set_defaults(run=run_generate)
    g.add_argument("--config", help="YAML config file; flags override it")
    models = g.add_argument_group("models")
    models.add_argument("--sft", help="SFT (reference) model directory, hub id, 'smollm2', or a served model"
                                      " openai:<base_url>#<served_name>")
    models.add_argument("--baseline", help="aligned baseline model (same forms as --sft; same tokenizer as --sft)")
    models.add_argument("--sft-tokenizer", help="local tokenizer directory of a served --sft (checked against the"
                                                " server's; default: the server's own /tokenize)")
    models.add_argument("--baseline-tokenizer", help="local tokenizer directory of a served --baseline")
    models.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    models.add_argument("--device", help="torch device, e.g. cpu or cuda:0")
    models.add_argument("--no-chat-template", action="store_true", help="format prompts as raw text")
    models.add_argument("--sft-system-prompt", help="system prompt for the SFT model")
    models.add_argument("--baseline-system-prompt", help="system prompt for the baseline (a prompted baseline)")
    models.add_argument("--sft-adapter", help="PEFT (LoRA) adapter directory merged into the SFT model")
    models.add_argument("--baseline-adapter", help="PEFT (LoRA) adapter directory merged into the baseline"
                                                   " (builtin:smollm2-sentiment-dpo is shipped)")
    rewards = g.add_argument_group("rewards")
    rewards.add_argument("--reward", help="target reward: sentiment, harmless, module:function, a reward-model"
                                          " directory, or a weighted sum like '0.7*sentiment+0.3*harmless'")
    rewards.add_argument("--baseline-reward", help="the reward the baseline was aligned to (tq-indirect)")
    rewards.add_argument("--reward-format", help="reward-model input format, e.g. 'Human: {prompt}\\n\\nAssistant: {response}'")
    rewards.add_argument("--reward-truncate", action="store_true", help="truncate over-long reward-model inputs")
    rewards.add_argument("--reward-sigmoid", action="store_true", help="report sigmoid(logit) of the reward model")
    dec = g.add_argument_group("decoding (see tqstar.params.DecodeParams)")
    dec.add_argument("--method", help="tq-direct (default), tq-indirect, tq-soft, cd, soft-cd, args, eft, none, sft,"
                     " baseline, bon")
    dec.add_argument("--k", type=int, help="top-k candidates per step (10)")
    dec.add_argument("--alpha", type=float, help="weight of Q in log pi_sft + alpha*Q (1.0)")
    dec.add_argument("--n-rollouts", type=int, help="rollouts per candidate, N (1)")
    dec.add_argument("--rollout-len", type=int, help="rollout length in tokens, L (20)")
    dec.add_argument("--rollout-temperature", type=float, help="0 = greedy rollouts (0)")
    dec.add_argument("--rollout-seed", type=int, help="seed of the rollouts (default: --seed)")
    dec.add_argument("--beta", type=float, help="baseline's KL strength, tq-indirect and eft (1.0)")
    dec.add_argument("--soft-beta", type=float, help="temperature of the soft value, tq-soft and soft-cd (1/alpha)")
    dec.add_argument("--temperature", type=float, help="0 = greedy choice, else sample softmax(score/T) (0)")
    dec.add_argument("--max-new-tokens", type=int, help="response budget (64)")
    dec.add_argument("--stop", action="append", help="stop string (repeatable)")
    dec.add_argument("--seed", type=int, help="seed of every random choice (0)")
    dec.add_argument("--bon-n", type=int, help="samples for bon (4)")
    dec.add_argument("--bon-policy", choices=["sft", "baseline"], help="model bon samples from (sft)")
    io = g.add_argument_group("prompts and output")
    io.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    io.add_argument("--prompts-file", help="text file (one prompt per line) or JSONL with a 'prompt' field")
    io.add_argument("--output", "-o", help="write here instead of stdout (JSONL when it ends in .jsonl)")
    io.add_argument("--format", choices=["text", "jsonl"], help="output format (text)")
    io.add_argument("--trace", action="store_true", help="print the per-step candidate table")
    io.add_argument("--batch-size", type=int, help="prompts decoded together (8)")
    io.add_argument("--concurrency", type=int, help="batches decoded at once, to keep model servers busy (1; needs"
                                                    " served models)")
    io.add_argument("--truncate-prompt", action="store_true", help="keep a too-long prompt's last tokens")
    io.add_argument("--no-progress", action="store_true", help="no progress bars")

    d = sub.add_parser("demo", help="SmolLM2: SFT, DPO baseline, TQ* direct and soft, EFT on a few prompts (offline,"
                                    " CPU)")
    d.set_defaults(run=run_demo_command)
    d.add_argument("--max-new-tokens", type=int, default=32)
    d.add_argument("--k", type=int, default=10)
    d.add_argument("--alpha", type=float, default=2.0)
    d.add_argument("--rollout-len", type=int, default=20)
    d.add_argument("--n-rollouts", type=int, default=2, help="rollouts per candidate of TQ* soft")

    e = sub.add_parser("eval", help="run methods over a prompt set; one JSONL row per (prompt, method); resumable")
    e.set_defaults(run=run_eval)
    e.add_argument("--config", required=True, help="YAML: models, rewards, judges, methods, prompts, output")
    e.add_argument("--output", "-o", help="results JSONL (overrides the config's `output`)")
    e.add_argument("--prompts", help="prompt set: rtp, dna, mtbench (optionally :train/:test/:all), a file, hf:NAME")
    e.add_argument("--limit", type=int, help="first N prompts of the set")
    e.add_argument("--no-progress", action="store_true")
    _report_flags(e)

    r = sub.add_parser("report", help="table and plots of an evaluation file")
    r.set_defaults(run=run_report)
    r.add_argument("file", nargs="+", help="evaluation JSONL file(s) over the same prompts")
    _report_flags(r)

    t = sub.add_parser("testbed", help="exact TQ*, soft values, EFT, CD and ARGS on random tabular instances")
    t.set_defaults(run=run_testbed)
    t.add_argument("--instances", type=int, default=20)
    t.add_argument("--alphas", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0])
    t.add_argument("--kls", type=float, nargs="+", default=[0.02, 0.1, 0.3], help="KLs of the matched-KL table")
    t.add_argument("--setting", choices=["direct", "indirect", "both"], default="both",
                   help="baseline aligned to the target (direct) or to an independent reward (indirect)")
    t.add_argument("--draws", type=int, default=400, help="draws of the N rollouts per state for tq-soft/soft-cd")
    t.add_argument("--vocab-size", type=int, default=4)
    t.add_argument("--horizon", type=int, default=4)
    t.add_argument("--beta-baseline", type=float, default=0.2, help="the baseline is the optimal policy at this beta")
    t.add_argument("--k", type=int, default=None, help="top-k (default: the whole vocabulary)")
    t.add_argument("--temperature", type=float, default=1.0, help="decoding temperature (1 = softmax policy)")
    t.add_argument("--seed", type=int, default=0)
    return parser


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
