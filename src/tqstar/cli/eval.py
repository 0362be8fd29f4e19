"""``tqstar eval`` (run methods over a prompt set, resumable, then report) and ``tqstar report`` (tables and plots of
results files)."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import TQStarError
from .common import print_server_stats, progress


def add_command(sub) -> None:
    e = sub.add_parser("eval", help="run methods over a prompt set; one JSONL row per (prompt, method); resumable")
    e.set_defaults(run=run_eval)
    e.add_argument("--config", required=True, help="YAML: models, rewards, judges, methods, prompts, output")
    e.add_argument("--output", "-o", help="results JSONL (overrides the config's `output`)")
    e.add_argument("--prompts", help="prompt set: rtp, dna, mtbench (optionally :train/:test/:all), a file, hf:NAME")
    e.add_argument("--limit", type=int, help="first N prompts of the set (N >= 1)")
    e.add_argument("--column", help="the prompt field of a JSONL/JSON/CSV file or dataset (prompt)")
    e.add_argument("--no-progress", action="store_true")
    report_flags(e)

    r = sub.add_parser("report", help="table and plots of an evaluation file")
    r.set_defaults(run=run_report)
    r.add_argument("file", nargs="+", help="evaluation JSONL file(s) over the same prompts")
    report_flags(r)


def report_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", help="method label the win rates and normalisation refer to (sft; eval:"
                                            " sft, else the run's first method)")
    parser.add_argument("--out-dir", help="write table.md, table.csv and plots here")
    parser.add_argument("--coherence", default="minilm", help="embedding model directory, 'minilm' (default) or 'none'")
    parser.add_argument("--llm-judge-url", help="OpenAI-compatible server for a pairwise LLM judge (optional)")
    parser.add_argument("--llm-judge-model", help="served model name of the LLM judge")
    parser.add_argument("--title", default="", help="title of the plots")
    parser.add_argument("--kls", type=float, nargs="+", help="target KLs of the matched-KL table (default: ¼, ½, 1 ×"
                        " the smallest mean KL the α-swept methods reach)")


def run_eval(args: argparse.Namespace) -> int:
    from .._schema import load_yaml
    from ..eval.config import EvalConfig

    data = load_yaml(args.config)
    if args.output:
        data["output"] = args.output
    if args.prompts is not None or args.limit is not None or args.column is not None:
        prompts = data.get("prompts") or {}
        prompts = {"source": prompts} if isinstance(prompts, str) else dict(prompts) if isinstance(prompts, dict) \
            else {"source": prompts}
        for key, value in (("source", args.prompts), ("limit", args.limit), ("column", args.column)):
            if value is not None:
                prompts[key] = value
        data["prompts"] = prompts
    config = EvalConfig.from_dict(data)
    check_report_flags(args)
    args.reference = _eval_reference(args.reference, config)
    evaluation = config.build(progress=progress(args))
    try:
        path = evaluation.run()
    finally:
        print_server_stats(evaluation.engine)
    print(f"tqstar: results: {path}", file=sys.stderr)
    args.file = [str(path)]
    return run_report(args)


def check_report_flags(args: argparse.Namespace) -> None:
    """The report's flags, checked before an evaluation spends time on models."""
    from .._checks import check_reals
    from .._files import check_output

    if getattr(args, "kls", None) is not None:
        check_reals(args.kls, "--kls")
    if args.out_dir:
        from ..eval.report import check_out_dir

        check_output(args.out_dir, "--out-dir", directory=True)
        check_out_dir(args.out_dir)
    if bool(args.llm_judge_url) != bool(args.llm_judge_model):
        raise TQStarError("the LLM judge needs both --llm-judge-url and --llm-judge-model; give both or neither")


def _eval_reference(reference: str | None, config) -> str:
    """The method the evaluation's table refers to, checked before anything is decoded: ``--reference`` must be a
    method of the run (or already in its output file); without it, ``sft`` when the run has it, else the run's
    first method (said on stderr)."""
    from ..eval.results import OUTPUT_FIX, scan

    labels = list(dict.fromkeys([m.label for m in config.methods] + [row["method"] for row in
                                                                      scan(config.output, OUTPUT_FIX).rows]))
    if reference is None:
        if "sft" in labels:
            return "sft"
        print(f"tqstar: no sft method in this run; the table compares against {labels[0]!r} (choose with"
              " --reference)", file=sys.stderr)
        return labels[0]
    if reference not in labels:
        raise TQStarError(f"reference method {reference!r} is not among the methods ({', '.join(labels)}); add"
                          f" {{method: {reference}}} to `methods`, or pick one of them with --reference")
    return reference


def run_report(args: argparse.Namespace) -> int:
    from ..eval.judge import LLMJudge
    from ..eval.report import merge_files, report_rows

    check_report_flags(args)
    if args.coherence not in ("none", "minilm") and not os.path.isdir(args.coherence):
        raise TQStarError(f"--coherence {args.coherence!r} is not a directory; give an embedding model directory,"
                          " 'minilm' or 'none'")
    rows = merge_files(args.file)  # every file checked before any model loads
    methods = list(dict.fromkeys(row["method"] for row in rows))
    args.reference = args.reference or "sft"
    if args.reference not in methods:
        raise TQStarError(f"reference method {args.reference!r} is not in the results (methods: {', '.join(methods)});"
                          " pick one of them with --reference")
    llm_judge = None
    if args.llm_judge_url or args.llm_judge_model:
        llm_judge = LLMJudge(args.llm_judge_url or "", args.llm_judge_model or "")
    coherence = None
    if args.coherence != "none":
        from ..eval.metrics import Coherence

        try:
            coherence = Coherence(None if args.coherence == "minilm" else args.coherence)
        except (TQStarError, OSError, ValueError) as exc:  # transformers' own errors for a directory it cannot load
            print(f"tqstar: coherence skipped: {' '.join(str(exc).splitlines())}", file=sys.stderr)
    _, text = report_rows(rows, reference=args.reference, out_dir=args.out_dir, coherence=coherence,
                          title=args.title, llm_judge=llm_judge, kls=getattr(args, "kls", None))
    print(text)
    if args.out_dir:
        print(f"tqstar: table.md, table.csv and plots written to {args.out_dir}", file=sys.stderr)
    return 0
