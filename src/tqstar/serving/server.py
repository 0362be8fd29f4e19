"""Running the server process: take the port, load the models once, check every preset, serve with uvicorn until
SIGTERM.

The listening socket is bound before any model loads, so a port in use is one ``tqstar: error:`` line (exit 2) in a
second, not after the models have loaded. On SIGTERM the server refuses new requests (503, and ``/health`` answers
503, so a load balancer moves on), lets in-flight requests finish for ``limits.shutdown_grace_s`` seconds (then ends
them with an error event), stops listening once they are done, and exits 0. Ctrl-C does the same, and a second
Ctrl-C stops at once.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import threading
import time
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

    sock = listen(config.host, config.port)  # before the models: a port in use fails in a second
    engines = build_engines(config)
    app = create_app(engines, config)
    scheduler, grace = app.state.scheduler, config.limits.shutdown_grace_s

    class Server(uvicorn.Server):
        draining = False

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.draining:  # a second signal: stop now
                self.force_exit = self.should_exit = True
                return
            self.draining = True
            scheduler.shutdown(grace)  # refuse new requests at once; in-flight ones finish within the grace
            threading.Thread(target=self._exit_when_drained, daemon=True).start()

        def _exit_when_drained(self) -> None:
            """Keep listening (``/health`` says 503) until the in-flight requests are done, then stop."""
            deadline = time.monotonic() + grace + 5
            while not scheduler.idle and time.monotonic() < deadline:
                time.sleep(0.1)
            self.should_exit = True

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if config.host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get(config.api_keys_env):
        log.warning(f"warning: listening on {config.host} without API keys; anyone who can reach it can use it"
                    f" (set {config.api_keys_env} to comma-separated keys)")
    names = ", ".join(name for name, _ in config.presets)
    port = sock.getsockname()[1]
    log.info(f"serving {names} on http://{config.host}:{port}/v1")
    Server(uvicorn.Config(app, host=config.host, port=port, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=grace + 5, lifespan="on")).run(sockets=[sock])
    return 0


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (uvicorn serves on it); a :class:`ConfigError` naming the address when it
    cannot be had."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)  # as uvicorn binds
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    address = (host, port)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if isinstance(exc, socket.gaierror):
            raise ConfigError(f"`host` {host!r} is not an address this machine can listen on ({exc.strerror}); give"
                              " an IP address such as 127.0.0.1 or 0.0.0.0", param="host") from None
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use (another server?); stop that server or give"
                              " another port with --port (`port:` in the serve config)", param="port") from None
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); give another --host or --port",
                          param="port") from None
    sock.set_inheritable(True)
    return sock
