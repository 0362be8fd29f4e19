"""``tqstar generate``: decode prompts with a method; text or JSONL out (``-o FILE`` is written, then renamed)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import TQStarError
from .common import models_command, print_server_stats, progress


def add_command(sub) -> None:
    g = models_command(sub, "generate", run_generate, "Decode prompts.", "YAML config file; flags override it",
                        help="decode prompts with a method (tq-direct, tq-indirect, cd, args, bon, ...)")
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
    io.add_argument("--prompts-file", help="text file (one prompt per line), JSONL/JSON/CSV with a 'prompt' field")
    io.add_argument("--column", help="the prompt field of a JSONL/JSON/CSV --prompts-file (prompt)")
    io.add_argument("--output", "-o", help="write here instead of stdout (JSONL when it ends in .jsonl)")
    io.add_argument("--format", choices=["text", "jsonl"], help="output format (text)")
    io.add_argument("--trace", action="store_true", help="print the per-step candidate table")
    io.add_argument("--batch-size", type=int, help="prompts decoded together (8)")
    io.add_argument("--concurrency", type=int, help="batches decoded at once, to keep model servers busy (1; needs"
                                                    " served models)")
    io.add_argument("--truncate-prompt", action="store_true", help="keep a too-long prompt's last tokens")
    io.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_generate(args: argparse.Namespace) -> int:
    """Decode the prompts; with ``-o FILE``, write-then-rename (FILE is replaced only when every prompt is done)."""
    from .._files import ReplaceOnSuccess, check_not_input, check_output, replaceable_output
    from .._schema import load_yaml
    from ..config import RunConfig, merge_flags
    from ..eval.results import is_results_file

    if args.output:
        check_output(args.output, "output file")
    data = merge_flags(load_yaml(args.config) if args.config else {}, args)
    if args.output:
        check_not_input(args.output, [("--config", args.config), ("prompts file", data.get("prompts_file"))])
        if is_results_file(args.output):
            raise TQStarError(f"output file {args.output!r} holds tqstar eval results, which generate would replace;"
                              " give another -o")
        if not replaceable_output(args.output):
            raise TQStarError(f"output file {args.output!r} exists and was not written by tqstar generate, which would"
                              " replace it; give another -o, or move that file away first")
    config = RunConfig.from_dict(data)
    if not config.prompts:
        raise TQStarError("no prompts given; pass --prompt TEXT (repeatable) or --prompts-file FILE")
    if config.sft is None:
        print("tqstar: no --sft given: using the built-in tiny random models and the sentiment reward"
              " (they show the machinery, not alignment)", file=sys.stderr)
    if config.decode.trace and not config.decode.is_token_level:
        print(f"tqstar: --trace shows the candidates of each token-level step; method {config.decode.method!r} decodes"
              " without them, so no table is printed", file=sys.stderr)
    engine = config.build()
    if config.decode.trace:  # the trace shows which candidates were skipped: say when none can be, and why
        from ..decoder import pruning_off_reason

        reason = pruning_off_reason(engine.models.reward, config.decode)
        if reason is not None:
            print(f"tqstar: {reason}", file=sys.stderr)
    out = ReplaceOnSuccess(args.output) if args.output else sys.stdout
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
                        progress=progress(args), on_response=emit)
    except BaseException:
        if isinstance(out, ReplaceOnSuccess):
            kept = out.abort()
            if kept is not None:
                print(f"tqstar: {args.output} is unchanged; the responses finished before the error are in {kept}",
                      file=sys.stderr)
        raise
    else:
        if isinstance(out, ReplaceOnSuccess):
            out.commit()
    finally:
        print_server_stats(engine)
    return 0


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
