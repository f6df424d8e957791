"""ferry's dashboards, as code. `make generate` writes dashboards/*.json from them."""

from __future__ import annotations

from builder import Dashboard, Panel, Query, Row

SEL = 'namespace="$namespace",job="$job"'
FIVE_XX = 'status_class="5xx"'
RI = "$__rate_interval"
# Async jobs run in API pods and in `ferry worker` pods, whose job label is "<job>-worker".
JOBS = 'namespace="$namespace",job=~"$job|$job-worker"'


def _rate(metric: str, extra: str = "", by: str = "") -> str:
    labels = SEL + ("," + extra if extra else "")
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{labels}}}[{RI}]))"


def _quantiles(metric: str, extra: str = "") -> tuple[Query, ...]:
    labels = SEL + ("," + extra if extra else "")
    return tuple(
        Query(f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{labels}}}[{RI}])))", f"p{round(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    )


def service_overview(slo: dict, routes: str) -> Dashboard:
    predict = f'route=~"{routes}"'
    availability = slo["objectives"]["availability"]
    latency = slo["objectives"]["latency"]
    budget = round(1 - availability["target"], 10)
    latency_budget = round(1 - latency["target"], 10)
    window = availability["window"]
    return Dashboard(
        uid="ferry-service",
        title="ferry / service overview",
        description="RED metrics, SLOs and resilience of the ferry inference service.",
        rows=(
            Row(
                "Traffic, errors, latency",
                (
                    Panel(
                        "Requests by route",
                        "Requests per second answered, by route template.",
                        "reqps",
                        (Query(_rate("ferry_http_requests_total", by="route"), "{{route}}"),),
                        width=8,
                    ),
                    Panel(
                        "5xx ratio by route",
                        "Share of requests answered with a 5xx, by route template.",
                        "percentunit",
                        (
                            Query(
                                f"({_rate('ferry_http_requests_total', FIVE_XX, 'route')}\n"
                                f" or 0 * {_rate('ferry_http_requests_total', by='route')})\n/\n"
                                f"{_rate('ferry_http_requests_total', by='route')}",
                                "{{route}}",
                            ),
                        ),
                        width=8,
                    ),
                    Panel(
                        "Errors by code",
                        "Error answers per second by stable error code (see the README).",
                        "reqps",
                        (Query(_rate("ferry_errors_total", by="code"), "{{code}}"),),
                        width=8,
                    ),
                    Panel(
                        "Predict latency percentiles",
                        "p50/p95/p99 of the predict routes, first byte to last.",
                        "s",
                        _quantiles("ferry_http_request_duration_seconds", predict),
                        width=12,
                        thresholds=((latency["threshold_s"], "red"),),
                    ),
                    Panel(
                        "Predict latency heatmap",
                        "Distribution of predict request durations.",
                        "s",
                        (
                            Query(
                                f"sum by (le) (increase(ferry_http_request_duration_seconds_bucket{{{SEL},{predict}}}"
                                f"[{RI}]))",
                                "{{le}}",
                                fmt="heatmap",
                            ),
                        ),
                        kind="heatmap",
                        width=12,
                    ),
                ),
            ),
            Row(
                "SLOs",
                (
                    Panel(
                        "Availability error budget remaining",
                        f"Share of the {window} availability budget ({budget:.2%} of requests may fail) not yet spent.",
                        "percentunit",
                        (
                            Query(
                                f"1 - (\n  (sum(increase(ferry_http_requests_total{{{SEL},{predict},{FIVE_XX}}}"
                                f"[{window}]))\n   or 0 * sum(increase(ferry_http_requests_total{{{SEL},{predict}}}"
                                f"[{window}])))\n  /\n"
                                f"  sum(increase(ferry_http_requests_total{{{SEL},{predict}}}[{window}]))"
                                f"\n) / {budget}",
                                "remaining",
                            ),
                        ),
                        kind="stat",
                        width=6,
                        thresholds=((0.25, "orange"), (0.0, "red")),
                    ),
                    Panel(
                        "Availability burn rate",
                        "Error-budget burn rate per window (1 = spends the budget exactly "
                        "over the SLO window); the fast page fires above 14.4 (1h) and 6 (6h).",
                        "none",
                        tuple(
                            Query(f"sum(ferry:sli_errors:ratio_rate{w}{{{SEL}}}) / {budget}", w)
                            for w in ("5m", "1h", "6h", "1d")
                        ),
                        width=9,
                    ),
                    Panel(
                        "Latency burn rate",
                        f"Burn rate of the latency budget (share of predict requests slower "
                        f"than {latency['threshold_s']} s, budget {latency_budget:.0%}).",
                        "none",
                        tuple(
                            Query(f"sum(ferry:sli_latency_slow:ratio_rate{w}{{{SEL}}}) / {latency_budget}", w)
                            for w in ("5m", "1h", "6h", "1d")
                        ),
                        width=9,
                    ),
                ),
            ),
            Row(
                "Resilience and capacity",
                (
                    Panel(
                        "Circuit breaker state",
                        "Worst breaker state over workers: 0 closed, 1 half-open, 2 open.",
                        "none",
                        (Query(f"max(ferry_breaker_state{{{SEL}}})", "state"),),
                        kind="stat",
                        width=4,
                        thresholds=((1, "orange"), (2, "red")),
                    ),
                    Panel(
                        "Shed and timed-out requests",
                        "Requests refused at once (overloaded, circuit_open) or ended at their deadline, per second.",
                        "reqps",
                        (
                            Query(
                                _rate(
                                    "ferry_errors_total", 'code=~"overloaded|circuit_open|deadline_exceeded"', "code"
                                ),
                                "{{code}}",
                            ),
                        ),
                        width=8,
                    ),
                    Panel(
                        "In flight vs capacity",
                        "Inference requests admitted (running or queued) against the "
                        "capacity (threads + queue) of all workers.",
                        "short",
                        (
                            Query(f"sum(ferry_inference_in_flight{{{SEL}}})", "in flight"),
                            Query(f"sum(ferry_inference_capacity{{{SEL}}})", "capacity"),
                            Query(f"sum(ferry_inference_queue_depth{{{SEL}}})", "queued"),
                        ),
                        width=6,
                    ),
                    Panel(
                        "Requests per model call",
                        "Micro-batching: mean requests merged into one model call.",
                        "short",
                        (
                            Query(
                                f"{_rate('ferry_inference_batch_requests_sum')}\n/\n"
                                f"{_rate('ferry_inference_batch_requests_count')}",
                                "requests per call",
                            ),
                        ),
                        width=6,
                    ),
                    Panel(
                        "Replicas and workers",
                        "Scraped pods that are up, and live gunicorn workers.",
                        "short",
                        (
                            Query(f"count(up{{{SEL}}} == 1)", "pods up"),
                            Query(f"sum(ferry_workers{{{SEL}}})", "workers"),
                        ),
                        width=6,
                    ),
                    Panel(
                        "Queue wait p99",
                        "99th percentile of the time requests wait for an inference thread.",
                        "s",
                        (
                            Query(
                                f"histogram_quantile(0.99, sum by (le) (rate(ferry_inference_queue_wait_seconds_bucket"
                                f"{{{SEL}}}[{RI}])))",
                                "p99",
                            ),
                        ),
                        width=6,
                    ),
                    Panel(
                        "Worker memory",
                        "Resident memory of live workers (summed).",
                        "bytes",
                        (Query(f"sum(ferry_process_resident_memory_bytes{{{SEL}}})", "rss"),),
                        width=6,
                    ),
                    Panel(
                        "Worker starts",
                        "Worker processes started (restarts and recycling) per interval.",
                        "short",
                        (Query(f"sum(increase(ferry_worker_starts_total{{{SEL}}}[{RI}]))", "starts"),),
                        width=6,
                    ),
                ),
            ),
            Row(
                "Async jobs, callbacks and streams",
                (
                    Panel(
                        "Job queue",
                        "Jobs waiting for a runner (store-wide, hence max over pods) and jobs being run now. "
                        "The autoscaler of `ferry worker` scales on the queue depth.",
                        "short",
                        (
                            Query(f"max(ferry_jobs_queue_depth{{{JOBS}}})", "queued"),
                            Query(f"sum(ferry_jobs_running{{{JOBS}}})", "running"),
                        ),
                        width=6,
                    ),
                    Panel(
                        "Oldest queued job",
                        "How long the oldest queued job has waited for a runner (FerryJobBacklogStale).",
                        "s",
                        (Query(f"max(ferry_jobs_oldest_queued_age_seconds{{{JOBS}}})", "oldest"),),
                        width=6,
                        thresholds=((slo["causes"]["job_oldest_queued_s"], "red"),),
                    ),
                    Panel(
                        "Jobs finished",
                        "Jobs reaching a terminal state per second, by outcome, and runs started by kind "
                        "(a reclaim is a job whose runner died).",
                        "ops",
                        (
                            Query(f"sum by (outcome) (rate(ferry_jobs_total{{{JOBS}}}[{RI}]))", "{{outcome}}"),
                            Query(f'sum(rate(ferry_job_runs_total{{{JOBS},kind="reclaim"}}[{RI}]))', "reclaimed"),
                        ),
                        width=6,
                    ),
                    Panel(
                        "Job duration",
                        "Time from submission to the terminal state.",
                        "s",
                        tuple(
                            Query(
                                f"histogram_quantile({q}, sum by (le) "
                                f"(rate(ferry_job_duration_seconds_bucket{{{JOBS}}}[{RI}])))",
                                f"p{round(q * 100)}",
                            )
                            for q in (0.5, 0.95, 0.99)
                        ),
                        width=6,
                    ),
                    Panel(
                        "Callback deliveries",
                        "Callback attempts per second by outcome (delivered, retry, rejected, forbidden), and "
                        "callbacks given up (FerryCallbackDeadLetters).",
                        "ops",
                        (
                            Query(
                                f"sum by (outcome) (rate(ferry_callback_attempts_total{{{JOBS}}}[{RI}]))",
                                "{{outcome}}",
                            ),
                            Query(f"sum(rate(ferry_callback_dead_letters_total{{{JOBS}}}[{RI}]))", "dead letters"),
                        ),
                        width=8,
                    ),
                    Panel(
                        "Open event streams",
                        "Server-Sent Events streams open now: streamed predictions and job event streams.",
                        "short",
                        (Query(f"sum by (stream) (ferry_sse_streams_open{{{SEL}}})", "{{stream}}"),),
                        width=8,
                    ),
                    Panel(
                        "Streamed chunks",
                        "Chunks of streamed predictions sent, and skipped because the client left or the "
                        "server stopped.",
                        "ops",
                        (Query(f"sum by (outcome) (rate(ferry_stream_chunks_total{{{SEL}}}[{RI}]))", "{{outcome}}"),),
                        width=8,
                    ),
                ),
            ),
        ),
    )


def model_dashboard(slo: dict, routes: str) -> Dashboard:
    return Dashboard(
        uid="ferry-model",
        title="ferry / model",
        description="What the served model predicts, how fast, and which version is live.",
        rows=(
            Row(
                "Model",
                (
                    Panel(
                        "Served model",
                        "Model name, version and sha256 of the live workers (ferry_model_info).",
                        "none",
                        (
                            Query(
                                f"max by (model, version, sha256) (ferry_model_info{{{SEL}}})",
                                "",
                                fmt="table",
                                instant=True,
                            ),
                        ),
                        kind="table",
                        width=12,
                        height=5,
                    ),
                    Panel(
                        "Model ready",
                        "1 when every live worker has its model loaded and verified.",
                        "none",
                        (Query(f"min(ferry_model_ready{{{SEL}}})", "ready"),),
                        kind="stat",
                        width=6,
                        height=5,
                        thresholds=((0, "red"), (1, "green")),
                    ),
                    Panel(
                        "Fault injection",
                        "1 while fault injection is active in any worker (game day!).",
                        "none",
                        (Query(f"max(ferry_faults_active{{{SEL}}})", "active"),),
                        kind="stat",
                        width=6,
                        height=5,
                        thresholds=((1, "red"),),
                    ),
                    Panel(
                        "Predicted class mix",
                        "Share of scored rows per predicted class.",
                        "percentunit",
                        (
                            Query(
                                f"{_rate('ferry_predicted_class_total', by='class')}\n/ ignoring(class) group_left\n"
                                f"{_rate('ferry_predicted_class_total')}",
                                "{{class}}",
                            ),
                        ),
                        width=12,
                    ),
                    Panel(
                        "Rows scored",
                        "Rows scored per second.",
                        "rowsps",
                        (Query(_rate("ferry_predicted_rows_total"), "rows/s"),),
                        width=12,
                    ),
                    Panel(
                        "Inference latency",
                        "Wall time of one model call in the inference thread.",
                        "s",
                        _quantiles("ferry_inference_duration_seconds"),
                        width=12,
                    ),
                    Panel(
                        "Model calls by outcome",
                        "Model calls per second that returned or raised.",
                        "ops",
                        (Query(_rate("ferry_model_calls_total", by="outcome"), "{{outcome}}"),),
                        width=12,
                    ),
                ),
            ),
        ),
    )


def all_dashboards(slo: dict, routes: str) -> list[Dashboard]:
    return [service_overview(slo, routes), model_dashboard(slo, routes)]
