"""``tqstar generate``: decode prompts with a method; text or JSONL out.

``-o FILE`` is written, then renamed over FILE (:mod:`tqstar._files`), and only when FILE does not exist, is empty or
was written by tqstar generate: its first row carries tqstar's mark (:func:`is_generate_output`). ``-o -``, a FIFO,
a terminal or ``/dev/stdout`` are written to as streams, as the responses finish.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from typing import Any

from .._files import WRITTEN_BY, written_by
from ..errors import TQStarError
from ..methods import METHODS, help_table
from ..params import FIELDS, DecodeParams
from .common import models_command, print_server_stats, progress


def add_command(sub) -> None:
    g = models_command(sub, "generate", run_generate, "Decode prompts.", "YAML config file; flags override it",
                        help="decode prompts with a method (" + ", ".join(METHODS[:5]) + ", ...)")
    g.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the methods table below as it is
    g.epilog = "methods (--method; tqstar.methods):\n" + help_table()
    add_decoding_flags(g.add_argument_group("decoding (see tqstar.params.DecodeParams)"))
    io = g.add_argument_group("prompts and output")
    io.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    io.add_argument("--prompts-file", help="text file (one prompt per line), JSONL/JSON/CSV with a 'prompt' field")
    io.add_argument("--column", help="the prompt field of a JSONL/JSON/CSV --prompts-file (prompt)")
    io.add_argument("--output", "-o", help="write here instead of stdout (JSONL when it ends in .jsonl; - is stdout;"
                                           " a FIFO or device is written to, a file replaced only if generate wrote"
                                           " it)")
    io.add_argument("--format", choices=["text", "jsonl"], help="output format (text)")
    io.add_argument("--batch-size", type=int, help="prompts decoded together (8)")
    io.add_argument("--concurrency", type=int, help="batches decoded at once, to keep model servers busy (1; needs"
                                                    " served models)")
    io.add_argument("--truncate-prompt", action="store_true", help="keep a too-long prompt's last tokens")
    io.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_decoding_flags(group) -> None:
    """One flag per :class:`~tqstar.params.DecodeParams` field that has one (its metadata: ``--name VALUE`` typed
    like the field, repeated, or a switch), with the field's help and default."""
    hints = typing.get_type_hints(DecodeParams)
    for f in dataclasses.fields(DecodeParams):
        info = FIELDS[f.name]
        flag = "--" + f.name.replace("_", "-")
        if info.flag == "switch":
            group.add_argument(flag, action="store_true", help=info.help)
        elif info.flag == "append":
            group.add_argument(flag, action="append", help=info.help)
        elif info.flag == "value":
            kind = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
            default = info.unset if f.default is None else f.default
            group.add_argument(flag, type=None if kind is str else kind, choices=info.choices,
                               help=f"{info.help} (default: {default})")


def run_generate(args: argparse.Namespace) -> int:
    """Decode the prompts; with ``-o FILE``, write-then-rename (FILE is replaced only when every prompt is done)."""
    from .._files import check_not_input, check_output, open_output
    from .._schema import load_yaml
    from ..config import RunConfig, decode_given, flag_roles, merge_flags

    output = None if args.output in (None, "-") else args.output
    if output:
        check_output(output, "output file")
    data = merge_flags(load_yaml(args.config) if args.config else {}, args)
    if output:
        check_not_input(output, [("--config", args.config), ("prompts file", data.get("prompts_file"))])
    config = RunConfig.from_dict(data, decode_given=decode_given(args))
    config.check_used([config.decode], flags=flag_roles(args) if args.config else None)
    if not config.prompts:
        raise TQStarError("no prompts given; pass --prompt TEXT (repeatable) or --prompts-file FILE")
    fmt = args.format or ("jsonl" if output and output.endswith(".jsonl") else "text")
    out = open_output(output, lambda path: is_generate_output(path), _refusal)  # checked before any model loads
    try:
        _generate(args, config, out, fmt)
    except BaseException:
        kept = out.abort()
        if kept is not None:
            print(f"tqstar: {output} is unchanged; the responses finished before the error are in {kept}",
                  file=sys.stderr)
        raise
    out.commit()
    return 0


def _generate(args: argparse.Namespace, config, out, fmt: str) -> None:
    if config.sft is None:
        print("tqstar: no --sft given: using the built-in tiny random models and the sentiment reward"
              " (they show the machinery, not alignment)", file=sys.stderr)
    engine = config.build()
    if config.decode.trace:  # the trace shows which candidates were skipped: say when none can be, and why
        from ..decoder import pruning_off_reason
        from ..tail import describe as describe_tail

        reason = pruning_off_reason(engine.models.reward, config.decode)
        if reason is not None:
            print(f"tqstar: {reason}", file=sys.stderr)
        note = describe_tail(config.decode, engine.decoder(config.decode).value_range)
        if note is not None:
            print(f"tqstar: {note}", file=sys.stderr)
    if fmt == "text" and not out.stream:
        out.write(TEXT_MARK + "\n")

    def emit(response) -> None:
        if fmt == "jsonl":
            out.write(json.dumps(response_row(response)) + "\n")
        else:
            out.write(format_response(response))
            if response.trace:
                out.write(format_trace(response.trace) + "\n")
        out.flush()

    try:
        engine.generate(list(config.prompts), config.decode, batch_size=config.batch_size,
                        concurrency=config.concurrency, truncate_prompt=config.truncate_prompt,
                        progress=progress(args), on_response=emit)
    finally:
        print_server_stats(engine)


#: The first line of generate's text output in a file (an HTML comment: Markdown shows nothing).
TEXT_MARK = f"<!-- {written_by('generate')}: -o replaces a file only when it begins with this line -->"
#: The fields every JSONL row of generate holds (besides :data:`~tqstar._files.WRITTEN_BY`).
ROW_FIELDS = frozenset({"prompt", "method", "text", "token_ids", "finish_reason", "accounting"})


def response_row(response) -> dict[str, Any]:
    """A JSONL row of generate: the response's fields and tqstar's mark."""
    return {WRITTEN_BY: written_by("generate"), **response.to_dict()}


def is_generate_output(path) -> bool:
    """Whether the regular file ``path`` is an output of tqstar generate, by its mark and its shape: text whose
    first line is :data:`TEXT_MARK`, followed by response blocks (``### [method] prompt``), or JSONL whose every
    row is a response row carrying the mark. An output of an older tqstar (before the mark) is not recognised:
    it looked like a user's Markdown or JSON, which is what the mark is for."""
    from .._files import first_line, json_rows

    head = first_line(path)
    if head.rstrip(b"\r\n") == TEXT_MARK.encode():
        with open(path, "rb") as fh:
            fh.readline()
            second = fh.readline()
        return second == b"" or second.startswith(b"### [")
    rows = json_rows(path)
    return bool(rows) and all(isinstance(row, dict) and row.get(WRITTEN_BY) == written_by("generate")
                              and ROW_FIELDS <= set(row) for row in rows)


def _refusal(path: str) -> str:
    from ..eval.results import is_results_file

    if is_results_file(path):
        return f"output file {path!r} holds tqstar eval results, which generate would replace; give another -o"
    return (f"output file {path!r} exists and was not written by tqstar generate (its first line has no tqstar mark),"
            " which would replace it; give another -o, or move that file away first")


def format_response(response) -> str:
    a = response.accounting
    facts = [f"reward={response.reward:.4f}" if response.reward is not None else None,
             (f"kl={response.kl:.3f}" + (" (estimate)" if response.kl_kind == "estimate" else ""))
             if response.kl is not None else None,
             f"tokens={len(response.token_ids)}", f"finish={response.finish_reason}",
             f"rollouts={a.rollouts}", f"reward_calls={a.reward_calls}", f"time={a.wall_time_s:.2f}s"]
    return (f"### [{response.method}] {response.prompt}\n{response.text}\n"
            f"({', '.join(f for f in facts if f)})\n\n")


def format_trace(trace: list[dict[str, Any]]) -> str:
    """The per-step table: every candidate's log π_sft, Q̂, score and decoding probability; * marks the choice.

    A candidate whose Q̂ was never computed (it could not change the choice) shows ``pruned``; one valued from the
    previous step's rollout is marked ``reused``. With the tail on (``tail``, sampled choice) a ``<tail>`` row
    follows: the rest of the vocabulary as one arm, with its mass (log Σ p^(1/T) over it; at T = 1 log π_sft of the
    tail), shared value Q̂_𝒯, score and probability, the token z′ it was valued by (``rollout``, ``rolling``) and the
    tail token drawn when it won. Blockwise decisions (a trace row with ``blocks``) show their k sampled blocks
    instead (:func:`format_block_trace`)."""
    if trace and "blocks" in trace[0]:
        return format_block_trace(trace)
    lines = [f"{'step':>4}  {'token':<14}{'logp_sft':>9}{'Q':>9}{'score':>9}{'p_dec':>7}"]
    for row in trace:
        for j, z in enumerate(row["candidates"]):
            mark = "*" if z == row["chosen"] else " "
            q, s = row["q"][j], row["score"][j]
            note = "  reused" if row.get("reused", [False] * (j + 1))[j] else ""
            lines.append(f"{row['step']:>4}{mark} {row['tokens'][j]!r:<14.14}{row['logp_sft'][j]:>9.3f}"
                         f"{'pruned' if q is None else f'{q:.3f}':>9}{'-inf' if s is None else f'{s:.3f}':>9}"
                         f"{row['p_dec'][j]:>7.3f}{note}")
        if row.get("tail") is not None:
            lines.append(format_tail_row(row["step"], row["tail"]))
    return "\n".join(lines)


def format_tail_row(step: int, tail: dict[str, Any]) -> str:
    """The ``<tail>`` line of one step (:func:`format_trace`)."""
    mass, q, s = tail["log_mass"], tail["q"], tail["score"]
    notes = [f"tail {tail['mode']}"]
    if tail.get("token") is not None:
        notes.append(f"valued by {tail['text']!r}" + (" (reused)" if tail.get("reused") else ""))
    if tail.get("committed") is not None:
        notes.append(f"drew {tail['committed_text']!r}")
    mark = "*" if tail.get("committed") is not None else " "
    return (f"{step:>4}{mark} {'<tail>':<14}{'-inf' if mass is None else f'{mass:.3f}':>9}"
            f"{'-' if q is None else f'{q:.3f}':>9}{'-inf' if s is None else f'{s:.3f}':>9}"
            f"{tail['p_dec']:>7.3f}  {', '.join(notes)}")


def format_block_trace(trace: list[dict[str, Any]]) -> str:
    """Per decision (at response position ``pos``): each sampled block's text, Q̂ and the probability the choice gave
    it (``argmax`` or ``soft``); * marks the chosen one, ``dup`` a block identical to an earlier sample (valued once),
    ``-`` a value the choice did not need (α = 0, k = 1)."""
    lines = [f"{'pos':>4}  {'#':>2}  {'block':<40}{'Q':>9}{'p_dec':>7}"]
    for row in trace:
        for i, text in enumerate(row["texts"]):
            mark = "*" if i == row["chosen"] else " "
            q = row["q"][i]
            notes = [note for note, on in (("dup", row["duplicate"][i]), ("reused", row["reused"][i])) if on]
            lines.append(f"{row['step']:>4}{mark} {i:>2}  {text!r:<40.40}{'-' if q is None else f'{q:.3f}':>9}"
                         f"{row['p_dec'][i]:>7.3f}{'  ' + ' '.join(notes) if notes else ''}")
    return "\n".join(lines)
