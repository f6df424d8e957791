"""ferry's dashboards, as code. `make generate` writes dashboards/*.json from them."""

from __future__ import annotations

from builder import Annotation, Dashboard, Panel, Query, Row

# A release's series: its namespace and job (the service's scope), then the pods and tracks picked.
SCOPE = 'namespace="$namespace",job="$job"'
PODS = 'pod=~"$pod",track=~"$track"'
SEL = f"{SCOPE},{PODS}"
FIVE_XX = 'status_class="5xx"'
RI = "$__rate_interval"
# Async jobs run in API pods and in `ferry worker` pods, whose job label is "<job>-worker".
JOBS = f'namespace="$namespace",job=~"$job|$job-worker",{PODS}'
BREAKER_STATES = ((0, "closed", "green"), (1, "half-open", "orange"), (2, "open", "red"))
# Error budget remaining: overspent is red, under a quarter left orange, under half yellow.
BUDGET_STEPS = ((0.0, "orange"), (0.25, "yellow"), (0.5, "green"))


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


def annotations() -> tuple[Annotation, ...]:
    # A series that is there now but was not 10 minutes ago marks a change for those 10 minutes.
    return (
        Annotation(
            "Model version changes",
            f"max by (model, version, sha256) (ferry_model_info{{{SCOPE}}})\n"
            f"unless\nmax by (model, version, sha256) (ferry_model_info{{{SCOPE}}} offset 10m)",
            "purple",
            "model {{model}} {{version}} live",
            "sha256 {{sha256}}",
            "model,version",
        ),
        Annotation(
            "Pods started",
            f"count by (pod, track) (ferry_workers{{{SCOPE}}} unless ferry_workers{{{SCOPE}}} offset 10m)",
            "blue",
            "pod {{pod}} started",
            "track {{track}}: a deploy, a rollout step, a reschedule or a crash",
            "track",
        ),
        # Alerts whose expression keeps the job label (burn rates, breaker, shedding, saturation, model,
        # targets); the job alerts aggregate per namespace and show on the job panels instead.
        Annotation(
            "Firing alerts",
            'ALERTS{alertstate="firing",namespace="$namespace",job=~"$job|$job-worker"}',
            "red",
            "{{alertname}} ({{severity}})",
            "firing; the runbook is docs/runbooks/{{alertname}}.md",
            "alertname,severity",
        ),
    )


def _budget_remaining(objective: str, window: str) -> Query:
    return Query(
        f'min(slo:period_error_budget_remaining:ratio{{{SCOPE},slo="{objective}"}})',
        f"remaining of {window}",
    )


def service_overview(slo: dict, routes: str) -> Dashboard:
    predict = f'route=~"{routes}"'
    availability = slo["objectives"]["availability"]
    latency = slo["objectives"]["latency"]
    budget = round(1 - availability["target"], 10)
    latency_budget = round(1 - latency["target"], 10)
    window = availability["window"]
    fast = max(w["factor"] for w in slo["burn_rates"]["page"]["windows"])
    causes = slo["causes"]
    predict_rate = f"sum by (track) (rate(ferry_http_requests_total{{{SEL},{predict}}}[{RI}]))"
    return Dashboard(
        uid="ferry-service",
        title="ferry / service overview",
        description="RED metrics, SLOs and resilience of the ferry inference service.",
        annotations=annotations(),
        runbook_base_url=slo["runbook_base_url"].rstrip("/"),
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
                        thresholds=((budget, "orange"), (fast * budget, "red")),
                        runbooks=("FerryAvailabilityBudgetBurnFast", "FerryAvailabilityBudgetBurnSlow"),
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
                        runbooks=("FerryLatencyBudgetBurnFast", "FerryLatencyBudgetBurnSlow"),
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
                "Canary vs stable",
                (
                    Panel(
                        "Error ratio by track",
                        "Share of predict requests answered with a 5xx, canary beside stable. Lines: the "
                        f"availability budget ({budget:.2%}) and the fast-burn page level ({fast}x).",
                        "percentunit",
                        (
                            Query(
                                f"(sum by (track) (rate(ferry_http_requests_total{{{SEL},{predict},{FIVE_XX}}}[{RI}]))"
                                f"\n or 0 * {predict_rate})\n/\n{predict_rate}",
                                "{{track}}",
                            ),
                        ),
                        width=8,
                        thresholds=((budget, "orange"), (fast * budget, "red")),
                        runbooks=("FerryAvailabilityBudgetBurnFast",),
                    ),
                    Panel(
                        "Predict p99 by track",
                        "99th percentile latency of the predict routes, canary beside stable. Line: the "
                        f"latency objective's threshold ({latency['threshold_s']} s).",
                        "s",
                        (
                            Query(
                                "histogram_quantile(0.99, sum by (track, le) "
                                f"(rate(ferry_http_request_duration_seconds_bucket{{{SEL},{predict}}}[{RI}])))",
                                "{{track}}",
                            ),
                        ),
                        width=8,
                        thresholds=((latency["threshold_s"], "red"),),
                        runbooks=("FerryLatencyBudgetBurnFast",),
                    ),
                    Panel(
                        "Throughput by track",
                        "Predict requests per second per track: the canary's share of the traffic.",
                        "reqps",
                        (Query(predict_rate, "{{track}}"),),
                        width=8,
                    ),
                ),
            ),
            Row(
                "SLOs",
                (
                    Panel(
                        "Availability error budget remaining",
                        f"Share of the {window} availability budget ({budget:.2%} of predict requests may fail) not "
                        "yet spent (recording rule slo:period_error_budget_remaining:ratio). Below 0 (red): "
                        "overspent. Per service: the pod and track filters do not apply.",
                        "percentunit",
                        (_budget_remaining("availability", window),),
                        kind="stat",
                        width=4,
                        thresholds=BUDGET_STEPS,
                        base="red",
                        runbooks=("FerryAvailabilityBudgetBurnSlow",),
                    ),
                    Panel(
                        "Latency error budget remaining",
                        f"Share of the {latency['window']} latency budget ({latency_budget:.0%} of predict requests "
                        f"may take longer than {latency['threshold_s']} s) not yet spent. Below 0 (red): overspent. "
                        "Per service: the pod and track filters do not apply.",
                        "percentunit",
                        (_budget_remaining("latency", latency["window"]),),
                        kind="stat",
                        width=4,
                        thresholds=BUDGET_STEPS,
                        base="red",
                        runbooks=("FerryLatencyBudgetBurnSlow",),
                    ),
                    Panel(
                        "Availability burn rate",
                        "Error-budget burn rate per window (1 = spends the budget exactly "
                        f"over the SLO window); the fast page fires above {fast} (1h) and 6 (6h). Per service: "
                        "the pod and track filters do not apply.",
                        "none",
                        tuple(
                            Query(f"sum(ferry:sli_errors:ratio_rate{w}{{{SCOPE}}}) / {budget}", w)
                            for w in ("5m", "1h", "6h", "1d")
                        ),
                        width=8,
                        thresholds=((1, "orange"), (fast, "red")),
                        runbooks=("FerryAvailabilityBudgetBurnFast", "FerryAvailabilityBudgetBurnSlow"),
                    ),
                    Panel(
                        "Latency burn rate",
                        f"Burn rate of the latency budget (share of predict requests slower "
                        f"than {latency['threshold_s']} s, budget {latency_budget:.0%}). Per service: the pod and "
                        "track filters do not apply.",
                        "none",
                        tuple(
                            Query(f"sum(ferry:sli_latency_slow:ratio_rate{w}{{{SCOPE}}}) / {latency_budget}", w)
                            for w in ("5m", "1h", "6h", "1d")
                        ),
                        width=8,
                        thresholds=((1, "orange"), (fast, "red")),
                        runbooks=("FerryLatencyBudgetBurnFast", "FerryLatencyBudgetBurnSlow"),
                    ),
                ),
            ),
            Row(
                "Resilience and capacity",
                (
                    Panel(
                        "Circuit breaker state",
                        "Worst breaker state over the selected pods' workers: closed, half-open (one trial call), "
                        "open (predictions fail fast with 503 circuit_open).",
                        "none",
                        (Query(f"max(ferry_breaker_state{{{SEL}}})", "state"),),
                        kind="stat",
                        width=4,
                        thresholds=((1, "orange"), (2, "red")),
                        mappings=BREAKER_STATES,
                        runbooks=("FerryCircuitBreakerOpen",),
                    ),
                    Panel(
                        "Circuit breaker state by pod",
                        "Breaker state of each pod (worst over its workers) over time.",
                        "none",
                        (Query(f"max by (pod) (ferry_breaker_state{{{SEL}}})", "{{pod}}"),),
                        kind="state-timeline",
                        width=10,
                        thresholds=((1, "orange"), (2, "red")),
                        mappings=BREAKER_STATES,
                        runbooks=("FerryCircuitBreakerOpen",),
                    ),
                    Panel(
                        "Circuit breaker transitions",
                        "Breaker transitions per interval, by the state entered: open after repeated model "
                        "failures, half-open after the reset timeout, closed after a good trial call.",
                        "short",
                        (
                            Query(
                                f"sum by (state) (increase(ferry_breaker_transitions_total{{{SEL}}}[{RI}]))",
                                "{{state}}",
                            ),
                        ),
                        width=10,
                        runbooks=("FerryCircuitBreakerOpen",),
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
                        runbooks=("FerryLoadShedding", "FerryDeadlinesExceeded"),
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
                        runbooks=("FerrySaturated",),
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
                        runbooks=("FerryTargetDown",),
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
                        runbooks=("FerryWorkerRestarts",),
                    ),
                ),
            ),
            Row(
                "Per pod",
                (
                    Panel(
                        "Requests by pod",
                        "Requests per second each pod answered: one hot pod hides in the totals.",
                        "reqps",
                        (Query(_rate("ferry_http_requests_total", by="pod"), "{{pod}}"),),
                        width=8,
                    ),
                    Panel(
                        "5xx ratio by pod",
                        "Share of each pod's predict requests answered with a 5xx. Line: the availability budget.",
                        "percentunit",
                        (
                            Query(
                                f"(sum by (pod) (rate(ferry_http_requests_total{{{SEL},{predict},{FIVE_XX}}}[{RI}]))\n"
                                f" or 0 * {_rate('ferry_http_requests_total', predict, 'pod')})\n/\n"
                                f"{_rate('ferry_http_requests_total', predict, 'pod')}",
                                "{{pod}}",
                            ),
                        ),
                        width=8,
                        thresholds=((budget, "orange"), (fast * budget, "red")),
                    ),
                    Panel(
                        "In flight vs capacity by pod",
                        "Each pod's admitted inference requests (running or queued) as a share of its capacity "
                        f"(threads + queue). Line: the saturation ticket level ({causes['saturation']:.0%}); at "
                        "100% requests are shed with 503 overloaded.",
                        "percentunit",
                        (
                            Query(
                                f"sum by (pod) (ferry_inference_in_flight{{{SEL}}})\n/\n"
                                f"sum by (pod) (ferry_inference_capacity{{{SEL}}})",
                                "{{pod}}",
                            ),
                        ),
                        width=8,
                        thresholds=((causes["saturation"], "orange"), (1, "red")),
                        runbooks=("FerrySaturated", "FerryLoadShedding"),
                    ),
                    Panel(
                        "CPU by pod vs limit",
                        "CPU cores each pod's container uses (every process: gunicorn master and workers), and "
                        "its CPU limit (no line without a limit). From the container's own "
                        "cgroup (ferry_container_*).",
                        "short",
                        (
                            Query(_rate("ferry_container_cpu_usage_seconds_total", by="pod"), "{{pod}} used"),
                            Query(f"max by (pod) (ferry_container_cpu_limit_cores{{{SEL}}})", "{{pod}} limit"),
                        ),
                        width=8,
                    ),
                    Panel(
                        "CPU throttling by pod",
                        "Share of CPU scheduler periods in which the pod's container hit its CPU limit and was "
                        "held back. Sustained throttling adds latency long before CPU looks full: raise the "
                        "limit or the replicas. Line: 25%.",
                        "percentunit",
                        (
                            Query(
                                f"{_rate('ferry_container_cpu_throttled_periods_total', by='pod')}\n/\n"
                                f"{_rate('ferry_container_cpu_periods_total', by='pod')}",
                                "{{pod}}",
                            ),
                        ),
                        width=8,
                        thresholds=((0.25, "orange"),),
                        runbooks=("FerryLatencyBudgetBurnFast",),
                    ),
                    Panel(
                        "Memory by pod vs limit",
                        "Each pod's container working set (usage less reclaimable page cache: what the kubelet "
                        "evicts on and the OOM killer approaches), its workers' resident memory, and its memory "
                        "limit (no line without a limit).",
                        "bytes",
                        (
                            Query(
                                f"max by (pod) (ferry_container_memory_working_set_bytes{{{SEL}}})",
                                "{{pod}} working set",
                            ),
                            Query(
                                f"sum by (pod) (ferry_process_resident_memory_bytes{{{SEL}}})", "{{pod}} workers rss"
                            ),
                            Query(f"max by (pod) (ferry_container_memory_limit_bytes{{{SEL}}})", "{{pod}} limit"),
                        ),
                        width=8,
                        runbooks=("FerryWorkerRestarts",),
                    ),
                    Panel(
                        "Rows per model call",
                        "Rows scored per model call by pod: the mean, and the 99th percentile (a batch request "
                        "or micro-batching merges rows into one call).",
                        "short",
                        (
                            Query(
                                f"{_rate('ferry_inference_batch_size_sum', by='pod')}\n/\n"
                                f"{_rate('ferry_inference_batch_size_count', by='pod')}",
                                "{{pod}} mean",
                            ),
                            Query(
                                "histogram_quantile(0.99, sum by (pod, le) "
                                f"(rate(ferry_inference_batch_size_bucket{{{SEL}}}[{RI}])))",
                                "{{pod}} p99",
                            ),
                        ),
                        width=8,
                    ),
                    Panel(
                        "Worker CPU by pod",
                        "CPU cores the gunicorn workers of each pod use (their own /proc figures, summed).",
                        "short",
                        (Query(_rate("ferry_process_cpu_seconds_total", by="pod"), "{{pod}}"),),
                        width=8,
                    ),
                    Panel(
                        "Model readiness by pod",
                        "1 when every worker of the pod has its model loaded and verified; 0 while loading, "
                        "failing verification or draining.",
                        "none",
                        (Query(f"min by (pod) (ferry_model_ready{{{SEL}}})", "{{pod}}"),),
                        kind="state-timeline",
                        width=8,
                        thresholds=((1, "green"),),
                        base="red",
                        mappings=((0, "not ready", "red"), (1, "ready", "green")),
                        runbooks=("FerryModelNotReady",),
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
                        runbooks=("FerryJobBacklogStale",),
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
                        runbooks=("FerryJobsFailing",),
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
                        runbooks=("FerryCallbackDeadLetters",),
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
        annotations=annotations(),
        runbook_base_url=slo["runbook_base_url"].rstrip("/"),
        rows=(
            Row(
                "Model",
                (
                    Panel(
                        "Served model",
                        "Model name, version and sha256 per track of the live workers (ferry_model_info): a canary "
                        "serving a new model shows two rows.",
                        "none",
                        (
                            Query(
                                f"max by (track, model, version, sha256) (ferry_model_info{{{SEL}}})",
                                "",
                                fmt="table",
                                instant=True,
                            ),
                        ),
                        kind="table",
                        width=12,
                        height=5,
                        runbooks=("FerryModelNotReady",),
                    ),
                    Panel(
                        "Model ready",
                        "1 when every live worker has its model loaded and verified.",
                        "none",
                        (Query(f"min(ferry_model_ready{{{SEL}}})", "ready"),),
                        kind="stat",
                        width=6,
                        height=5,
                        thresholds=((1, "green"),),
                        base="red",
                        mappings=((0, "not ready", "red"), (1, "ready", "green")),
                        runbooks=("FerryModelNotReady",),
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
                        runbooks=("FerryLatencyBudgetBurnFast",),
                    ),
                    Panel(
                        "Model calls by outcome",
                        "Model calls per second that returned or raised.",
                        "ops",
                        (Query(_rate("ferry_model_calls_total", by="outcome"), "{{outcome}}"),),
                        width=12,
                        runbooks=("FerryCircuitBreakerOpen",),
                    ),
                ),
            ),
        ),
    )


def all_dashboards(slo: dict, routes: str) -> list[Dashboard]:
    return [service_overview(slo, routes), model_dashboard(slo, routes)]
