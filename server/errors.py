"""Domain errors and the one table that maps them to HTTP and gRPC status codes."""

from __future__ import annotations

from glider.server.adapters.registry import AdapterNotFound, InvalidAdapter
from glider.server.backends.base import BackendError
from glider.server.profiles import InvalidProfile, ProfileNotFound, ProfileProtected
from glider.server.served_profiles import ProfileUnavailable
from glider.server.store.base import (
    EpisodeBusy,
    EpisodeExists,
    EpisodeNotFound,
    StoreFull,
    StoreUnavailable,
)


class GliderError(Exception):
    """Base of errors raised by the Agent service for the transports to map."""


class InvalidInput(GliderError, ValueError):
    pass


class EpisodeFinished(GliderError):
    pass


class StepMismatch(GliderError):
    pass


class ProfileMismatch(GliderError):
    """A later step names another profile than the one its episode started with (it keeps its own)."""


class Unauthorized(GliderError):
    pass


class Forbidden(GliderError):
    pass


class RateLimited(GliderError):
    """The client is over ``GLIDER_RATE_LIMIT``; ``retry_after`` seconds until it has room again."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


# exception type -> (stable error code, HTTP status, gRPC status name)
ERROR_TABLE: list[tuple[type[BaseException], str, int, str]] = [
    (InvalidInput, "invalid_input", 422, "INVALID_ARGUMENT"),
    (InvalidAdapter, "invalid_adapter", 422, "INVALID_ARGUMENT"),
    (InvalidProfile, "invalid_profile", 422, "INVALID_ARGUMENT"),
    (ProfileNotFound, "profile_not_found", 404, "NOT_FOUND"),
    (EpisodeNotFound, "episode_not_found", 404, "NOT_FOUND"),
    (AdapterNotFound, "adapter_not_found", 404, "NOT_FOUND"),
    (EpisodeExists, "episode_exists", 409, "ALREADY_EXISTS"),
    (ProfileProtected, "profile_protected", 409, "FAILED_PRECONDITION"),
    (EpisodeBusy, "episode_busy", 409, "ABORTED"),
    (StepMismatch, "step_mismatch", 409, "FAILED_PRECONDITION"),
    (ProfileMismatch, "profile_mismatch", 409, "FAILED_PRECONDITION"),
    (EpisodeFinished, "episode_finished", 409, "FAILED_PRECONDITION"),
    (StoreFull, "too_many_episodes", 429, "RESOURCE_EXHAUSTED"),
    (RateLimited, "rate_limited", 429, "RESOURCE_EXHAUSTED"),
    (Unauthorized, "unauthorized", 401, "UNAUTHENTICATED"),
    (Forbidden, "forbidden", 403, "PERMISSION_DENIED"),
    (BackendError, "backend_unavailable", 503, "UNAVAILABLE"),
    (ProfileUnavailable, "profile_unavailable", 503, "UNAVAILABLE"),
    (StoreUnavailable, "store_unavailable", 503, "UNAVAILABLE"),
]


def classify(exc: BaseException) -> tuple[str, int, str] | None:
    for etype, code, http, grpc_name in ERROR_TABLE:
        if isinstance(exc, etype):
            return code, http, grpc_name
    return None
