"""One typed settings object for the whole server (``GLIDER_*`` environment variables).

Every knob the server reads lives here; modules receive the object (or the part
of it they need) instead of reading the environment themselves.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from glider.server.policy.modes import PolicyMode
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path(".glider")


class BackendKind(str, Enum):
    vllm = "vllm"
    hf = "hf"


class GroundingMethod(str, Enum):
    """How the executor's model chooses among admissible commands when its generation is none of them."""

    # greedy decoding constrained to the candidates (vLLM: structured outputs; transformers: the most likely)
    constrained = "constrained"
    # each candidate's log-likelihood after the prompt, the highest wins (vLLM 0.32 cannot compute prompt
    # logprobs on a LoRA engine, vllm-project/vllm#29955: it sums next-token logprobs over a token trie)
    score = "score"


class StoreKind(str, Enum):
    """Where episode state lives: this process (``memory``) or Redis, shared by replicas."""

    memory = "memory"
    redis = "redis"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GLIDER_", extra="ignore")

    # --- model and adapters -------------------------------------------------
    home: Path = Field(DEFAULT_HOME, description="Working directory for built artefacts.")
    model: Path | None = Field(
        None, description="Local HF model directory; default: the embedded backbone under home."
    )
    adapters: Path | None = Field(
        None, description="Adapter registry root; default: <home>/adapters."
    )
    backend: BackendKind = BackendKind.vllm
    mode: PolicyMode = PolicyMode.separate
    dtype: str = "float32"
    max_lora_rank: int = 16
    max_loras: int = 4
    max_model_len: int = 2048
    kv_cache_gib: float = Field(1.0, description="vLLM-CPU KV cache size (VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float = 0.85
    enable_prefix_caching: bool = True
    block_size: int | None = Field(
        None, ge=1, le=1024, description="vLLM: tokens per KV-cache block (None: 32 on CPU machines, vLLM's own "
                                        "on GPUs). The prefix cache reuses whole blocks only, so a prompt "
                                        "shares at most its length rounded down to a block; the CPU kernels "
                                        "prefer multiples of 32.")
    engine_busy_wait_s: float | None = Field(
        None, ge=0.001, description="vLLM: how long the engine's processes spin on their shared-memory queue "
                                    "before they sleep (vLLM's own: 1 s, two spinning cores under load). Default: "
                                    "0.002 on CPU machines, vLLM's own on GPUs; 1 or more keeps vLLM's. At least "
                                    "1 ms: with 0 the engine never answered its first request (2026-12-06).")
    engine_cpus: str = Field(
        "auto", pattern=r"^(auto|all|[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)$",
        description="vLLM-CPU: the cores the engine's worker computes on (VLLM_CPU_OMP_THREADS_BIND). 'auto' "
                    "keeps vLLM's binding, which reserves a core for the engine's scheduler and the server "
                    "(on 2 cores the model runs on one); 'all' computes on every core this process may use; "
                    "or a list such as '0-3,6'. An engine-bound backbone wants 'all' (docs/benchmarks.md).")
    trace_requests: Path | None = Field(
        None, description="vLLM: append one JSON line per engine request (prompt, adapter and its path, "
                          "sampling, token counts, start and end) to this file: a served workload to replay "
                          "against the bare engine (bench/concurrency.py). Off by default: it writes on the "
                          "hot path.")
    hf_max_batch: int = Field(32, description="HF backend: most requests per batched generate.")
    hf_batch_wait_ms: float = Field(2.0, description="HF backend: how long to gather a batch.")

    engine_watchdog_s: float = Field(
        1.0, gt=0, description="How often the server checks that its engine lives. A dead engine (its "
                               "process killed or out of memory) is not restarted in place: the server "
                               "exits with code 1 so that its supervisor (Kubernetes, Docker, systemd) "
                               "restarts it; episodes in Redis carry over.")
    adapter_poll_s: float = Field(
        0.5, ge=0, description="How often the registry's current pointers are checked; 0 = never.")
    swap_push: bool = Field(
        True, description="With GLIDER_STORE=redis: pass the trainer's publish notices (POST "
                          "/admin/adapters/published) to every replica through a Redis channel, so each "
                          "swaps at once; the poll stays on as the fallback.")
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of the admin API; unset = admin API refuses every call.")

    # --- transport ----------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port on the same host.")
    grpc_enabled: bool = True
    grpc_tls_cert: Path | None = Field(
        None, description="PEM certificate chain: serve gRPC over TLS (with grpc_tls_key).")
    grpc_tls_key: Path | None = Field(None, description="PEM private key of grpc_tls_cert.")
    grpc_tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle: require client certificates signed by it (mutual TLS).")
    log_level: str = "info"

    # --- policy -------------------------------------------------------------
    c_max: int = Field(10, ge=1, description="Most executor steps per subgoal before re-planning.")
    history_window: int = Field(6, ge=0, description="(observation, action) pairs the executor sees.")
    plan_window: int = Field(8, ge=0, description="Finished subgoals the planner sees.")
    max_plan_attempts: int = Field(3, ge=1, description="Planner samples per step before fallback.")
    max_action_attempts: int = Field(3, ge=1, description="Executor samples per step before fallback.")
    guard_repeated_subgoal: bool = Field(
        True, description="Re-sample (seeded) a subgoal whose text repeats itself ('get the pot the pot …').")
    guard_repeated_action: bool = Field(
        True, description="Re-sample an action that repeats the previous one when that one changed nothing "
                          "(the same observation came back).")
    guard_repeated_answer: bool = Field(
        False, description="Also re-sample an action that repeats the previous one when it answered the "
                           "same the last time it was taken, with other steps between (a refused move).")
    max_valid_actions: int = Field(
        4096, ge=1, description="Most admissible commands a step may send (`valid_actions`).")
    max_valid_action_chars: int = Field(256, ge=1, description="Longest admissible command a step may send.")
    grounding_candidates: int = Field(
        16, ge=1, le=256, description="Admissible commands the executor's model chooses among when its generation is "
                              "none of them: those most similar to the generation.")
    grounding_protected: list[str] = Field(
        default_factory=list,
        description="Command prefixes grounding never chooses (compared normalised, as whole words): "
                    "irreversible commands, sent only when the executor generated them. For ScienceWorld "
                    "'[\"focus on\"]': a focus on the wrong object ends the episode at score 0.")
    grounding_max_tokens: int = Field(
        128, ge=1, description="constrained grounding: most tokens of a command's continuation.")
    grounding_early_stop: bool = Field(
        True, description="constrained grounding: stop once what the model wrote decides the command (its shortest "
                          "prefix no other candidate contains) instead of decoding the forced rest of it.")
    grounding_method: GroundingMethod = Field(
        GroundingMethod.constrained,
        description="constrained: greedy decoding constrained to the candidates (the transformers backend takes "
                    "the most likely) | score: the candidate with the highest log-likelihood (vLLM: one-token "
                    "requests over the candidates' token trie, batched).")
    planner_max_tokens: int = Field(32, ge=1)
    executor_max_tokens: int = Field(24, ge=1)
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy; retries always sample. An episode may "
                                                        "ask for its own (REST/gRPC `sampling`).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass of sampled generations.")
    episode_max_temperature: float = Field(
        2.0, ge=0.0, description="Highest temperature an episode's own `sampling` may ask for (0: none above "
                                 "greedy; the server's own temperature and its retries still apply).")
    retry_temperature: float = Field(0.8, gt=0.0)
    fallback_action: str = "look around"
    fallback_subgoal: str = "explore the surroundings"
    seed: int = 0

    # --- trajectory recording ------------------------------------------------
    record: bool = Field(True, description="Record every served step for the trainer.")
    record_dir: Path | None = Field(None, description="Where episode logs go; default <home>/episodes.")
    record_max_bytes: int = Field(64 << 20, ge=4096, description="Rotate episode logs at this size.")

    # --- limits and episode store -------------------------------------------
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted.")
    max_observation_chars: int = Field(8192, ge=1)
    max_task_chars: int = Field(4096, ge=1)
    prompt_observation_chars: int = Field(
        600, ge=16, description="Characters of each observation that go into a prompt."
    )
    max_concurrent_requests: int | None = Field(
        None, ge=1, description="Most requests in flight per transport; past it REST answers 503 "
        "overloaded (probes and /metrics exempt) and gRPC RESOURCE_EXHAUSTED. Unset: no limit.")
    rate_limit: str = Field(
        "", description="Per-client request rate over REST and gRPC together, in the `limits` "
        "library's notation (\"20/second;600/minute\"); past it REST answers 429 rate_limited with "
        "Retry-After and gRPC RESOURCE_EXHAUSTED. Counted per replica. Empty: no limit.")
    rate_limit_client_header: str = Field(
        "", description="Header (gRPC: metadata key) naming the client for the rate limit, for "
        "servers behind an ingress that sets it (X-Real-IP); empty: the peer address.")
    episode_ttl_s: float = Field(3600.0, gt=0)
    max_episodes: int = Field(10000, ge=1)
    store: StoreKind = StoreKind.memory
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis of the episode store (may hold a password, so never logged).")
    redis_prefix: str = Field("glider:", description="Key prefix, to share one Redis database.")
    redis_timeout_s: float = Field(5.0, gt=0, description="Redis connect and command timeout.")
    redis_compress: bool = Field(True, description="Store episode states zlib-compressed (a tenth of the bytes "
                                                    "to move and keep); replicas read either form.")
    step_lease_s: float = Field(
        120.0, gt=0, description="Longest a step may hold its episode (Redis store) before "
        "another step may take it, so a replica that dies mid-step blocks no episode for good.")

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_parses(cls, value: str) -> str:
        from limits import parse_many

        if value.strip():
            parse_many(value)  # ValueError names what it could not read
        return value.strip()

    @model_validator(mode="after")
    def _tls_pairs(self) -> Settings:
        if (self.grpc_tls_cert is None) != (self.grpc_tls_key is None):
            raise ValueError("GLIDER_GRPC_TLS_CERT and GLIDER_GRPC_TLS_KEY go together")
        if self.grpc_tls_client_ca is not None and self.grpc_tls_cert is None:
            raise ValueError("GLIDER_GRPC_TLS_CLIENT_CA needs GLIDER_GRPC_TLS_CERT and _KEY (mutual TLS)")
        return self

    def grpc_tls(self) -> tuple[bytes, bytes, bytes | None] | None:
        """(certificate chain, key, client CA or None) read from the configured files, or None."""
        if self.grpc_tls_cert is None or self.grpc_tls_key is None:
            return None
        ca = self.grpc_tls_client_ca.read_bytes() if self.grpc_tls_client_ca else None
        return self.grpc_tls_cert.read_bytes(), self.grpc_tls_key.read_bytes(), ca

    def model_dir(self) -> Path:
        return self.model if self.model is not None else self.home / "backbone"

    def episodes_dir(self) -> Path:
        return self.record_dir if self.record_dir is not None else self.home / "episodes"

    def adapters_dir(self) -> Path:
        return self.adapters if self.adapters is not None else self.home / "adapters"
