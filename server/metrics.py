"""Prometheus metrics of one server (own registry, so several servers can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram(
            "glider_request_latency_seconds", "Latency of API requests.", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.requests = Counter(
            "glider_requests_total", "API requests by route and status.", ["route", "status"],
            registry=r)
        # gRPC: a unary call's latency, or one step of an Episode stream (event in to reply out)
        self.grpc_latency = Histogram(
            "glider_grpc_latency_seconds", "Latency of gRPC calls, and of each step of an episode stream.",
            ["method"], buckets=_LATENCY_BUCKETS, registry=r)
        self.grpc_requests = Counter(
            "glider_grpc_requests_total", "gRPC calls (a stream once, when it ends) by method and status code.",
            ["method", "code"], registry=r)
        # every figure of the agent's work carries the agent profile that did it
        self.steps = Counter("glider_env_steps_total", "Environment steps answered.", ["profile", "mode"], registry=r)
        self.generations = Counter(
            "glider_generations_total", "Model calls by policy role (planner / executor / flat).",
            ["profile", "role"], registry=r)
        self.generated_tokens = Counter(
            "glider_generated_tokens_total", "Generated tokens by policy role.", ["profile", "role"], registry=r)
        self.prompt_tokens = Counter(
            "glider_prompt_tokens_total", "Prompt tokens sent to the engine by policy role.", ["profile", "role"],
            registry=r)
        # with glider_prompt_tokens_total, the prefix-cache hit rate of each role's prompts
        self.cached_prompt_tokens = Counter(
            "glider_prompt_cached_tokens_total", "Prompt tokens found in the engine's prefix cache, by policy role.",
            ["profile", "role"], registry=r)
        self.fallbacks = Counter(
            "glider_fallbacks_total", "Steps that used a fallback subgoal or action.", ["profile"], registry=r)
        self.subgoals = Counter("glider_subgoals_total", "Subgoals started.", ["profile"], registry=r)
        # steps sent admissible commands: the generation was one ("admissible") or the model's scores
        # chose one instead ("grounded")
        self.grounded_steps = Counter(
            "glider_grounded_steps_total", "Steps with admissible commands, by how the action was found.",
            ["profile", "result"], registry=r)
        self.grounding_seconds = Histogram(
            "glider_grounding_seconds", "Scoring the admissible commands of one grounded step.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.replays = Counter(
            "glider_step_replays_total", "Retries of an answered step, given the same answer again.",
            registry=r)
        self.active_episodes = Gauge("glider_active_episodes", "Episodes in the store.", registry=r)
        self.adapter_swaps = Counter(
            "glider_adapter_swaps_total", "Adapter swaps by result (loaded / rejected / rolled_back).",
            ["profile", "name", "result"], registry=r)
        self.adapter_swap_seconds = Histogram(
            "glider_adapter_swap_seconds", "Validate + load + switch time of an adapter swap.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10), registry=r)
        self.adapter_version = Gauge(
            "glider_adapter_serving", "1 for the version each adapter serves.", ["profile", "name", "version"],
            registry=r)
        self.records_dropped = Counter(
            "glider_records_dropped_total", "Trajectory records lost (writer behind or disk error).",
            registry=r)
        self.errors = Counter("glider_errors_total", "Errors by code.", ["code"], registry=r)
