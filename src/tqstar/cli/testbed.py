"""``tqstar testbed``: exact TQ*, soft values, EFT, CD and ARGS on random tabular instances (:mod:`tqstar.eval.testbed`),
and the same methods at a top k < V with and without the tail (no truncation, :mod:`tqstar.tail`)."""

from __future__ import annotations

import argparse


def add_command(sub) -> None:
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
    t.add_argument("--tail-k", type=int, default=None,
                   help="top-k of the no-truncation section: every token-level method with and without the tail"
                        " (default: half the vocabulary; 0 leaves the section out)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--blocks", type=float, metavar="ALPHA", default=None,
                   help="only the blockwise-selection table at this alpha: k sampled blocks of m tokens chosen by their"
                        " exact values, k = 1 .. 64 and the k -> infinity limit (tqstar.blocks)")


def run_testbed(args: argparse.Namespace) -> int:
    from ..eval.testbed import (
        average,
        block_rows,
        check_settings,
        exact_report,
        format_block_report,
        format_matched_kl,
        format_report,
        matched_kl,
    )

    check_settings(instances=args.instances, vocab_size=args.vocab_size, horizon=args.horizon,
                   beta_baseline=args.beta_baseline, temperature=args.temperature, k=args.k,
                   alphas=args.alphas if args.blocks is None else [args.blocks], kls=args.kls, draws=args.draws,
                   tail_k=args.tail_k)
    if args.blocks is not None:
        rows = [row for i in range(args.instances) for row in block_rows(
            i, alpha=args.blocks, vocab_size=args.vocab_size, horizon=args.horizon, beta_baseline=args.beta_baseline,
            seed=args.seed)]
        print(f"exact testbed, blockwise selection: {args.instances} random instances, vocab {args.vocab_size},"
              f" horizon {args.horizon}, alpha {args.blocks:g} (soft values at beta = 1/alpha; tq-direct's baseline ="
              f" optimal policy at beta {args.beta_baseline}); k sampled blocks of m tokens (all: the whole response),"
              " chosen softly (T = 1) or by argmax, by exact values; the limit is the optimum for soft values with"
              " soft choice; means over instances")
        print(format_block_report(rows))
        return 0
    tail_k = args.vocab_size // 2 if args.tail_k is None else args.tail_k
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
        if tail_k:
            print_tail_section(args, setting, tail_k)
    return 0


def print_tail_section(args: argparse.Namespace, setting: str, k: int) -> None:
    """The no-truncation section: every token-level method at top-k ``k`` < V with the tail off and on (exact values;
    tq-soft at its exact soft value), at matched KL, and the share of truncation's gap to the optimum each tail closes."""
    from ..eval.testbed import format_gap_closed, format_matched_kl, tail_report

    _, table = tail_report(args.instances, tuple(args.alphas), tuple(args.kls), k=k, vocab_size=args.vocab_size,
                           horizon=args.horizon, beta_baseline=args.beta_baseline, temperature=args.temperature,
                           seed=args.seed, setting=setting)
    print(f"no truncation, {setting} transfer: top-k = {k} of {args.vocab_size}, tail off (truncation) or kept with"
          " pi_sft's shape and one shared value (mean: the candidates' pi_sft-weighted mean; rollout: the value of one"
          " token drawn from the tail; rolling: one token drawn from the rolling model's tail, importance-weighted;"
          " exact: tq-soft's exact soft value of the tail); exact values (tq-soft(N=inf): the soft value at beta ="
          " 1/alpha); matched KL as above")
    print(format_matched_kl(table, args.instances))
    print("\nshare of truncation's gap to the optimum closed by the tail at matched KL (- unless every instance reaches"
          " that KL with and without it)")
    print(format_gap_closed(table, args.instances) + "\n")
