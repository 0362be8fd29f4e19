"""The server's Prometheus metrics (``GET /metrics``), in a registry of their own (one per app).

    tqstar_requests_total{endpoint, status}    answered requests by HTTP status
    tqstar_queue_depth                         requests waiting for a batch slot
    tqstar_active_rows                         rows being decoded (all groups)
    tqstar_step_rows                           rows advanced together by one decoder step (histogram)
    tqstar_step_seconds                        wall time of one decoder step (histogram)
    tqstar_time_to_first_token_seconds         from a request's arrival to its first committed token
    tqstar_inter_token_latency_seconds         between a request's streamed steps, per token they carried
    tqstar_e2e_request_latency_seconds         from a request's arrival to its last event (answer or error)
    tqstar_queue_time_seconds                  from a request's arrival until it got a row
    tqstar_finished_total{reason}              requests by how they ended: eos, stop, length (answered); timeout,
                                               error, shutdown, cancelled (the client went away)
    tqstar_tokens_total{kind}                  prompt and completion tokens of finished requests
    tqstar_rollouts_total, tqstar_reward_calls_total, tqstar_forward_tokens_total{model}
                                               the decoders' accounting of finished requests
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..state import Accounting

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)


class ServerMetrics:
    """Every metric the server exports; ``render()`` is the body of ``GET /metrics``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: they double the output and no dashboard reads them
        self.registry = r = CollectorRegistry()
        self.requests = Counter("tqstar_requests", "Answered requests by endpoint and HTTP status",
                                ["endpoint", "status"], registry=r)
        self.queue_depth = Gauge("tqstar_queue_depth", "Requests waiting for a batch slot", registry=r)
        self.active_rows = Gauge("tqstar_active_rows", "Rows being decoded, over all groups", registry=r)
        self.step_rows = Histogram("tqstar_step_rows", "Rows advanced together by one decoder step",
                                   buckets=ROW_BUCKETS, registry=r)
        self.step_seconds = Histogram("tqstar_step_seconds", "Wall time of one decoder step",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("tqstar_time_to_first_token_seconds", "From a request's arrival to its first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("tqstar_inter_token_latency_seconds", "Between a request's streamed steps, per token",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("tqstar_e2e_request_latency_seconds", "From a request's arrival to its last event",
                             buckets=E2E_BUCKETS, registry=r)
        self.queue_seconds = Histogram("tqstar_queue_time_seconds", "From a request's arrival until it got a row",
                                       buckets=E2E_BUCKETS, registry=r)
        self.finish_reasons = Counter("tqstar_finished", "Requests by how they ended", ["reason"], registry=r)
        self.tokens = Counter("tqstar_tokens", "Tokens of finished requests", ["kind"], registry=r)
        self.rollouts = Counter("tqstar_rollouts", "Rollouts run for finished requests", registry=r)
        self.reward_calls = Counter("tqstar_reward_calls", "Texts scored by a reward while decoding", registry=r)
        self.forward_tokens = Counter("tqstar_forward_tokens", "Tokens run through each model", ["model"], registry=r)

    def finished(self, prompt_tokens: int, completion_tokens: int, accounting: Accounting) -> None:
        """Count a finished request's tokens and compute."""
        self.tokens.labels("prompt").inc(prompt_tokens)
        self.tokens.labels("completion").inc(completion_tokens)
        self.rollouts.inc(accounting.rollouts)
        self.reward_calls.inc(accounting.reward_calls)
        self.forward_tokens.labels("sft").inc(accounting.sft_forward_tokens)
        self.forward_tokens.labels("baseline").inc(accounting.baseline_forward_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
