"""``tqstar serve``: an OpenAI-compatible server over presets (:mod:`tqstar.serving`)."""

from __future__ import annotations

import argparse
import sys

from .common import models_command


def add_command(sub) -> None:
    s = models_command(sub, "serve", run_serve, "Serve presets (model ids) over the OpenAI chat and completions API.",
                        "YAML: models, rewards, presets, limits, host, port; flags override it",
                        help="an OpenAI-compatible server over presets (continuous batching, streaming)")
    net = s.add_argument_group("server")
    net.add_argument("--host", help="address to bind (127.0.0.1; 0.0.0.0 exposes the server to the network)")
    net.add_argument("--port", type=int, help="port (8000)")
    net.add_argument("--name", help="prefix of the default preset names (default: the SFT model's name)")
    net.add_argument("--max-batch", type=int, help="rows decoded at once over all requests (16)")
    net.add_argument("--max-queue", type=int, help="requests waiting for a row before 429 (64)")
    net.add_argument("--api-keys-env", help="environment variable with comma-separated API keys (TQSTAR_API_KEYS)")


def run_serve(args: argparse.Namespace) -> int:
    from .._schema import load_yaml
    from ..config import merge_model_flags
    from ..serving.config import ServeConfig
    from ..serving.server import serve

    data = merge_model_flags(load_yaml(args.config) if args.config else {}, args)
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
