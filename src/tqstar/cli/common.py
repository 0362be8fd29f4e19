"""What several commands share: the model and reward flags of ``generate`` and ``serve`` (merged over a YAML file by
:func:`tqstar.config.merge_model_flags`), when to show progress bars, and the served models' closing statistics."""

from __future__ import annotations

import argparse
import sys


def progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: in a log file their cursor codes are noise."""
    return not args.no_progress and sys.stderr.isatty()


def models_command(sub, name: str, run, description: str, config_help: str, *, help: str) -> argparse.ArgumentParser:
    """A command that loads models (``generate``, ``serve``): ``--config`` and the model and reward flags (read by
    :func:`tqstar.config.merge_model_flags`)."""
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
