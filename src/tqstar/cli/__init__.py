"""The ``tqstar`` command line: a thin layer over the library (every command is one library call).

    tqstar generate [--config run.yaml] [flags]   decode prompts with a method; text or JSONL out
    tqstar serve [--config serve.yaml] [flags]    OpenAI-compatible server over presets (streaming, batching)
    tqstar demo                                   SmolLM2: SFT, DPO baseline, TQ* direct/soft, EFT side by side
    tqstar eval --config eval.yaml                run methods over a prompt set (resumable JSONL), then report
    tqstar report results.jsonl                   table (terminal, Markdown, CSV) and plots of a results file
    tqstar testbed  [flags]                       exact TQ*, soft values, EFT, CD, ARGS on tabular instances
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import sysconfig
import traceback
from pathlib import Path
from typing import Any, NoReturn

from ..errors import TQStarError

DECODE_FLAGS = ("method", "k", "alpha", "n_rollouts", "rollout_len", "rollout_temperature", "rollout_seed", "beta",
                "soft_beta", "temperature", "max_new_tokens", "seed", "bon_n", "bon_policy")


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so a bad flag is one ``tqstar: error:`` line like every error."""

    def error(self, message: str) -> NoReturn:
        flag = re.fullmatch(r"argument (--[\w-]+)(?:/-\w)?: expected one argument", message)
        if flag:  # argparse takes a value that starts with '-' (a negative weight, '-1*sentiment') for a flag
            raise UsageError(f"{message}; give it a value, and write one that starts with '-' as"
                             f" {flag.group(1)}=VALUE")
        raise UsageError(f"{message}; see {self.prog} --help")


class UsageError(TQStarError):
    """A command-line flag that argparse refused."""


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error ends as one ``tqstar: error: ...`` line on stderr and exit status 2.

    Errors tqstar raises on purpose (:class:`TQStarError`) are printed as they are. Anything else -- an
    exception from the user's reward function, a bug -- is turned into one line by :func:`foreign_error`, which
    names the exception and the code that raised it. ``--debug`` (or ``TQSTAR_DEBUG=1``) shows the traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("TQSTAR_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        _quiet_transformers()
        return args.run(args)
    except KeyboardInterrupt:
        print("tqstar: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`tqstar generate ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush cannot fail again
        return 141  # 128 + SIGPIPE, as a shell reports a process that a closed pipe stopped
    except Exception as exc:  # the one boundary where foreign exceptions become one line
        if debug:
            raise
        message = str(exc) if isinstance(exc, TQStarError) else foreign_error(exc)
        print(f"tqstar: error: {' '.join(message.splitlines())}", file=sys.stderr)
        return 2


def foreign_error(exc: BaseException) -> str:
    """One sentence for an exception tqstar did not raise on purpose: what it is and where it came from.

    Raised in user code (a ``module:function`` reward, a module it imports): names the function, file and line
    and says to fix it there. An ``OSError`` on a path: names the path. Otherwise it is a bug in tqstar.
    """
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{what} (in {exc.filename}, line {exc.lineno}); fix that file"
    if isinstance(exc, OSError) and exc.filename:
        return (f"cannot use {str(exc.filename)!r} ({exc.strerror or what}); check that the path exists and is"
                " accessible")
    frame = _user_frame(exc)
    if frame is not None:
        return (f"{what}, raised in your code: {frame.name} ({frame.filename}, line {frame.lineno}); fix it there, or"
                " rerun with --debug (or TQSTAR_DEBUG=1) for the traceback")
    return (f"unexpected {what}; this is a bug in tqstar: please report it with the traceback that --debug (or"
            " TQSTAR_DEBUG=1) shows")


def _user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of ``exc``'s traceback that is neither tqstar's nor an installed library's."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tqstar/, not tqstar/cli/
    library = tuple(sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib"))
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = os.path.abspath(frame.filename)
        if not path.startswith(package) and not path.startswith(library) and not frame.filename.startswith("<"):
            return frame
    return None


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: in a log file their cursor codes are noise."""
    return not args.no_progress and sys.stderr.isatty()


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
    """Decode the prompts; with ``-o FILE``, write-then-rename (FILE is replaced only when every prompt is done)."""
    from .._files import ReplaceOnSuccess, check_not_input, check_output
    from ..config import RunConfig, load_yaml
    from ..eval.run import is_results_file

    if args.output:
        check_output(args.output, "output file")
    data = _merge(load_yaml(args.config) if args.config else {}, args)
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
        from ..reward import pruning_off_reason

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
                        progress=_progress(args), on_response=emit)
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


def replaceable_output(path: str) -> bool:
    """Whether ``-o path`` may be replaced: it does not exist, is empty, or begins like ``tqstar generate``'s own
    output (a text block ``### [method] ...`` or a JSONL response row), so a file tqstar did not write is never
    overwritten."""
    file = Path(path)
    if not file.is_file() or file.stat().st_size == 0:
        return True
    with file.open("rb") as fh:
        first = fh.readline(1 << 20)
    if first.startswith(b"### ["):
        return True
    try:
        row = json.loads(first)
    except ValueError:
        return False
    return isinstance(row, dict) and {"prompt", "method", "token_ids", "accounting"} <= set(row)


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
    data = _merge_models(data, args)
    decode = data.get("decode") or {}
    if not isinstance(decode, dict):
        return data  # refused with its value by RunConfig
    decode = dict(decode)
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
    if args.column:
        data["prompts_column"] = args.column
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


def _merge_models(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Model and reward flags override the YAML file's models and rewards."""
    data = dict(data)
    for role in ("sft", "baseline"):
        path = getattr(args, role)
        system = getattr(args, f"{role}_system_prompt")
        adapter = getattr(args, f"{role}_adapter")
        tokenizer = getattr(args, f"{role}_tokenizer")
        if (path is None and system is None and adapter is None and tokenizer is None and args.dtype is None
                and args.device is None and not args.no_chat_template and not args.parse_special_tokens
                and not args.allow_download):
            continue
        spec = data.get(role)
        if spec is not None and not isinstance(spec, (str, dict)):
            continue  # refused with its value by RunConfig
        spec = {"path": spec} if isinstance(spec, str) else dict(spec or {})
        if path is not None:
            spec["path"] = path
        if not spec.get("path"):
            given = [flag for flag, value in ((f"--{role}-system-prompt", system), (f"--{role}-adapter", adapter),
                                              (f"--{role}-tokenizer", tokenizer)) if value is not None]
            if given:
                raise TQStarError(f"{given[0]} applies to the {role} model, which is not given; give it with --{role}"
                                  f" PATH (or `{role}:` in the YAML config), or drop {given[0]}")
            continue
        for key, value in (("system_prompt", system), ("adapter", adapter), ("tokenizer", tokenizer),
                           ("dtype", args.dtype), ("device", args.device)):
            if value is not None:
                spec[key] = value
        if args.no_chat_template:
            spec["chat_template"] = False
        for key in ("parse_special_tokens", "allow_download"):
            if getattr(args, key):
                spec[key] = True
        data[role] = spec
    if not data.get("sft"):
        generic = [flag for flag, value in (("--dtype", args.dtype), ("--device", args.device),
                                            ("--parse-special-tokens", args.parse_special_tokens),
                                            ("--allow-download", args.allow_download)) if value]
        if generic:
            raise TQStarError(f"{generic[0]} applies to the models given with --sft and --baseline; without --sft the"
                              f" built-in tiny models run as they are, so give --sft PATH or drop {generic[0]}")
    for role in ("reward", "baseline_reward"):
        spec = getattr(args, role)
        if spec is not None:
            data[role] = spec
    reward = data.get("reward")
    options = [flag for flag, value in (("--reward-format", args.reward_format), ("--reward-truncate",
               args.reward_truncate), ("--reward-sigmoid", args.reward_sigmoid)) if value]
    if options and reward is None:
        raise TQStarError(f"{options[0]} applies to a reward model; give the model with --reward DIR")
    if isinstance(reward, (str, dict)) and options:
        reward = {"spec": reward} if isinstance(reward, str) else dict(reward)
        reward.update({k: v for k, v in (("format", unescape(args.reward_format)),
                                         ("truncate", args.reward_truncate or None),
                                         ("sigmoid", args.reward_sigmoid or None)) if v is not None})
        data["reward"] = reward
    return data


def unescape(text: str | None) -> str | None:
    r"""``\n``, ``\t`` and ``\\`` in a flag's value as a newline, a tab and a backslash (shells pass them
    literally); any other backslash stays as it is."""
    if text is None:
        return None
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


# ---- serve --------------------------------------------------------------------------------------------------
def run_serve(args: argparse.Namespace) -> int:
    from ..config import load_yaml
    from ..serving.config import ServeConfig
    from ..serving.server import serve

    data = _merge_models(load_yaml(args.config) if args.config else {}, args)
    for key in ("host", "port", "name", "api_keys_env"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    limits = dict(data.get("limits") or {})
    for key in ("max_batch", "max_queue"):
        if getattr(args, key) is not None:
            limits[key] = getattr(args, key)
    data["limits"] = limits
    config = ServeConfig.from_dict(data)
    if config.run.sft is None:
        print("tqstar: no --sft given: serving the built-in tiny random models and the sentiment reward"
              " (they show the machinery, not alignment)", file=sys.stderr)
    return serve(config)


# ---- demo ---------------------------------------------------------------------------------------------------
def run_demo_command(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(max_new_tokens=args.max_new_tokens, k=args.k, alpha=args.alpha, rollout_len=args.rollout_len,
             n_rollouts=args.n_rollouts)
    return 0


# ---- eval and report ------------------------------------------------------------------------------------------
def run_eval(args: argparse.Namespace) -> int:
    from ..config import EvalConfig, load_yaml

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
    _check_report_flags(args)
    args.reference = _eval_reference(args.reference, config)
    evaluation = config.build(progress=_progress(args))
    try:
        path = evaluation.run()
    finally:
        print_server_stats(evaluation.engine)
    print(f"results: {path}", file=sys.stderr)
    args.file = [str(path)]
    return run_report(args)


def _check_report_flags(args: argparse.Namespace) -> None:
    """The report's flags, checked before an evaluation spends time on models."""
    from .._files import check_output

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
    from ..eval.run import OUTPUT_FIX, scan

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

    _check_report_flags(args)
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
        print(f"table.md, table.csv and plots written to {args.out_dir}", file=sys.stderr)
    return 0


# ---- testbed -------------------------------------------------------------------------------------------------
def run_testbed(args: argparse.Namespace) -> int:
    from ..eval.testbed import average, exact_report, format_matched_kl, format_report, matched_kl

    _check_testbed_flags(args)
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


MAX_TESTBED_SEQUENCES = 10**6


def _check_testbed_flags(args: argparse.Namespace) -> None:
    """Every testbed flag against its range, before any enumeration starts."""
    checks = [("--instances", args.instances, args.instances >= 1, "an integer >= 1"),
              ("--vocab-size", args.vocab_size, args.vocab_size >= 2, "an integer >= 2"),
              ("--horizon", args.horizon, args.horizon >= 1, "an integer >= 1"),
              ("--beta-baseline", args.beta_baseline, math.isfinite(args.beta_baseline) and args.beta_baseline > 0,
               "a finite number > 0"),
              ("--temperature", args.temperature, math.isfinite(args.temperature) and args.temperature > 0,
               "a finite number > 0"),
              ("--k", args.k, args.k is None or 1 <= args.k <= args.vocab_size,
               f"an integer from 1 to --vocab-size ({args.vocab_size})")]
    checks += [("--alphas", alpha, math.isfinite(alpha) and alpha > 0, "finite numbers > 0") for alpha in args.alphas]
    checks += [("--kls", kl, math.isfinite(kl) and kl > 0, "finite numbers > 0") for kl in args.kls]
    checks.append(("--draws", args.draws, args.draws >= 1, "an integer >= 1"))
    for flag, value, ok, constraint in checks:
        if not ok:
            raise TQStarError(f"{flag} must be {constraint}, got {value:g}")
    sequences = args.vocab_size ** args.horizon
    if sequences > MAX_TESTBED_SEQUENCES:
        raise TQStarError(f"--vocab-size {args.vocab_size} with --horizon {args.horizon} enumerates {sequences:.3g}"
                          f" sequences; keep vocab-size ** horizon <= {MAX_TESTBED_SEQUENCES:,}")


def _report_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", help="method label the win rates and normalisation refer to (sft; eval:"
                                            " sft, else the run's first method)")
    parser.add_argument("--out-dir", help="write table.md, table.csv and plots here")
    parser.add_argument("--coherence", default="minilm", help="embedding model directory, 'minilm' (default) or 'none'")
    parser.add_argument("--llm-judge-url", help="OpenAI-compatible server for a pairwise LLM judge (optional)")
    parser.add_argument("--llm-judge-model", help="served model name of the LLM judge")
    parser.add_argument("--title", default="", help="title of the plots")
    parser.add_argument("--kls", type=float, nargs="+", help="target KLs of the matched-KL table (default: ¼, ½, 1 ×"
                        " the smallest mean KL the α-swept methods reach)")


def _models_command(sub, name: str, run, description: str, config_help: str, *, help: str) -> argparse.ArgumentParser:
    """A command that loads models (``generate``, ``serve``): ``--config`` and the model and reward flags (read by
    :func:`_merge_models`)."""
    parser = sub.add_parser(name, help=help, description=description + " With no --sft, the built-in tiny random"
                                                                        " models and the sentiment reward are used.")
    parser.set_defaults(run=run)
    parser.add_argument("--config", help=config_help)
    models = parser.add_argument_group("models")
    models.add_argument("--sft", help="SFT (reference) model directory, hub id, 'smollm2', or a served model"
                                      " openai:<base_url>#<served_name>")
    models.add_argument("--baseline", help="aligned baseline model (same forms as --sft; another tokenizer is bridged"
                                           " through text)")
    models.add_argument("--sft-tokenizer", help="local tokenizer directory of a served --sft (checked against the"
                                                " server's; default: the server's own /tokenize)")
    models.add_argument("--baseline-tokenizer", help="local tokenizer directory of a served --baseline")
    models.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    models.add_argument("--device", help="torch device, e.g. cpu or cuda:0")
    models.add_argument("--no-chat-template", action="store_true", help="format prompts as raw text")
    models.add_argument("--parse-special-tokens", action="store_true",
                        help="let prompt text write control tokens such as <|im_end|> (default: they are text)")
    models.add_argument("--allow-download", action="store_true",
                        help="fetch hub ids not in the local hub cache (default: nothing is downloaded)")
    models.add_argument("--sft-system-prompt", help="system prompt for the SFT model")
    models.add_argument("--baseline-system-prompt", help="system prompt for the baseline (a prompted baseline)")
    models.add_argument("--sft-adapter", help="PEFT (LoRA) adapter directory merged into the SFT model")
    models.add_argument("--baseline-adapter", help="PEFT (LoRA) adapter directory merged into the baseline"
                                                   " (builtin:smollm2-sentiment-dpo is shipped)")
    rewards = parser.add_argument_group("rewards")
    rewards.add_argument("--reward", help="target reward: sentiment, harmless, module:function, a reward-model"
                                          " directory, or a weighted sum like '0.7*sentiment+0.3*harmless'")
    rewards.add_argument("--baseline-reward", help="the reward the baseline was aligned to (tq-indirect)")
    rewards.add_argument("--reward-format", help="reward-model input format with {prompt} and {response}; \\n and"
                                                 " \\t in it are a newline and a tab, e.g."
                                                 " 'Human: {prompt}\\n\\nAssistant: {response}'")
    rewards.add_argument("--reward-truncate", action="store_true", help="truncate over-long reward-model inputs")
    rewards.add_argument("--reward-sigmoid", action="store_true", help="report sigmoid(logit) of the reward model")
    return parser

# ---- parser --------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tqstar", description="Transfer Q* decoding-time alignment. Errors are one line; add"
                                                " --debug (or set TQSTAR_DEBUG=1) to see a traceback.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also TQSTAR_DEBUG=1)")
    sub = parser.add_subparsers(dest="command")

    g = _models_command(sub, "generate", run_generate, "Decode prompts.", "YAML config file; flags override it",
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

    s = _models_command(sub, "serve", run_serve, "Serve presets (model ids) over the OpenAI chat and completions API.",
                        "YAML: models, rewards, presets, limits, host, port; flags override it",
                        help="an OpenAI-compatible server over presets (continuous batching, streaming)")
    net = s.add_argument_group("server")
    net.add_argument("--host", help="address to bind (127.0.0.1; 0.0.0.0 exposes the server to the network)")
    net.add_argument("--port", type=int, help="port (8000)")
    net.add_argument("--name", help="prefix of the default preset names (default: the SFT model's name)")
    net.add_argument("--max-batch", type=int, help="rows decoded at once over all requests (16)")
    net.add_argument("--max-queue", type=int, help="requests waiting for a row before 429 (64)")
    net.add_argument("--api-keys-env", help="environment variable with comma-separated API keys (TQSTAR_API_KEYS)")

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
    e.add_argument("--limit", type=int, help="first N prompts of the set (N >= 1)")
    e.add_argument("--column", help="the prompt field of a JSONL/JSON/CSV file or dataset (prompt)")
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
