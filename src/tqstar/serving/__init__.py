"""The OpenAI-compatible server (``tqstar serve``), one module per role.

    config.py     ServeConfig: models and rewards (as a run config), presets, limits, address
    protocol.py   the OpenAI request and response shapes (pydantic) and the ``tqstar`` extension
    scheduler.py  continuous batching: the one engine thread that steps every active request
    detok.py      incremental detokenisation for streaming (no broken characters, no leaked stop strings)
    metrics.py    Prometheus metrics
    app.py        the FastAPI routes
    server.py     loading the models once and running uvicorn until SIGTERM

The HTTP side needs the ``serve`` extra (fastapi, uvicorn, prometheus_client); importing this package does not.
"""
