"""Running the server process: load the models once, check every preset, serve with uvicorn until SIGTERM.

On SIGTERM (or Ctrl-C) the server stops accepting connections and requests, lets in-flight requests finish for
``limits.shutdown_grace_s`` seconds (then ends them with an error event), and exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

from ..engine import Engine
from ..errors import ConfigError
from ..lm.hf import TransformersLM
from ..lm.spec import Shared, load
from .config import ServeConfig

log = logging.getLogger("tqstar")


def build_engines(config: ServeConfig) -> dict[str | None, Engine]:
    """Load the models and rewards once; one :class:`Engine` per baseline (``None``: the top-level one, then each
    of ``baselines`` by name), all sharing the SFT model and the rewards. Every preset is checked against its
    engine (a bad one names itself)."""
    engine = config.run.build(check=False)
    engines: dict[str | None, Engine] = {None: engine}
    m, sft_spec = engine.models, config.run.sft
    # a named baseline on the SFT model's own weights (a prompted baseline) shares them
    shared: Shared = {sft_spec.weights: m.sft} if sft_spec and isinstance(m.sft, TransformersLM) else {}
    for name, spec in config.baselines:
        baseline = load(spec, f"baseline {name} ({spec.path})", shared=shared)
        engines[name] = Engine(m.sft, baseline, m.reward, m.baseline_reward)
    for name, params in config.presets:
        try:
            engines[config.baseline_of(name)].check(params)
        except ConfigError as exc:
            raise ConfigError(f"preset {name!r}: {exc}") from exc
    return engines


def serve(config: ServeConfig) -> int:
    """Serve ``config`` on ``config.host:config.port`` until SIGTERM / SIGINT; returns the exit status (0)."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise ConfigError(f"`tqstar serve` needs {exc.name}, which is not installed; install the server's"
                          " dependencies with pip install 'tqstar[serve]'") from exc

    engines = build_engines(config)
    app = create_app(engines, config)
    scheduler, grace = app.state.scheduler, config.limits.shutdown_grace_s

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            scheduler.shutdown(grace)  # refuse new requests at once; in-flight ones finish within the grace
            if sig == signal.SIGTERM:  # a requested stop: exit 0 once drained, without re-raising the signal
                self.should_exit = True
                return
            super().handle_exit(sig, frame)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if config.host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get(config.api_keys_env):
        log.warning(f"warning: listening on {config.host} without API keys; anyone who can reach it can use it"
                    f" (set {config.api_keys_env} to comma-separated keys)")
    names = ", ".join(name for name, _ in config.presets)
    log.info(f"serving {names} on http://{config.host}:{config.port}/v1")
    Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=grace + 5, lifespan="on")).run()
    return 0
