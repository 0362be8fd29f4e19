"""Running the server process: load the models once, check every preset, serve with uvicorn until SIGTERM.

On SIGTERM (or Ctrl-C) the server stops accepting connections and requests, lets in-flight requests finish for
``limits.shutdown_grace_s`` seconds (then ends them with an error event), and exits 0.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from ..errors import ConfigError
from .config import ServeConfig


def build_engine(config: ServeConfig):
    """Load the models and rewards once and check every preset against them (a bad preset names itself)."""
    engine = config.run.build(check=False)
    for name, params in config.presets:
        try:
            engine.check(params)
        except ConfigError as exc:
            raise ConfigError(f"preset {name!r}: {exc}") from exc
    return engine


def serve(config: ServeConfig) -> int:
    """Serve ``config`` on ``config.host:config.port`` until SIGTERM / SIGINT; returns the exit status (0)."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise ConfigError(f"`tqstar serve` needs {exc.name}, which is not installed; install the server's"
                          " dependencies with pip install 'tqstar[serve]'") from exc

    engine = build_engine(config)
    app = create_app(engine, config)
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
    names = ", ".join(name for name, _ in config.presets)
    print(f"tqstar: serving {names} on http://{config.host}:{config.port}/v1", file=sys.stderr, flush=True)
    Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=grace + 5, lifespan="on")).run()
    return 0
