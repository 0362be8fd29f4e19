"""The OpenAI-compatible server (``tqstar serve``), one module per role.

    config.py     ServeConfig: models and rewards (as a run config), presets, limits, address
    protocol.py   the OpenAI request and response shapes (pydantic) and the ``tqstar`` extension
    budget.py     what one request may cost (tokens and rows per step, KV memory), checked at admission
    scheduler.py  continuous batching with fair shares: groups of rows step in turn by compute time, split between
                  model forward passes
    detok.py      incremental detokenisation for streaming (no broken characters, no leaked stop strings)
    metrics.py    Prometheus metrics
    completions.py  a request's validation, its row and the relay of its events (OpenAI's and vLLM's conventions)
    app.py        the FastAPI routes
    server.py     loading the models once and running uvicorn until SIGTERM

The HTTP side needs the ``serve`` extra (fastapi, uvicorn, prometheus_client); importing this package does not.
"""
