"""Typed REST client for the GLIDER agent (sync and async, same method names).

    with GliderClient("http://127.0.0.1:8000") as client:
        step = client.act(observation=obs, task=task)          # starts an episode
        step = client.act(observation=obs, episode_id=step.episode_id, reward=r)

Errors come back as ``GliderAPIError`` with the server's status, code and message.

``retries=N`` retries the errors the server gives when it has done nothing (it is overloaded,
over the client's rate limit, between engine or Redis failures, or the episode is busy with
another step) up to N times, after the server's ``Retry-After`` or an exponential backoff. Every
failed step leaves its episode as it was, so such a retry cannot step twice. A lost reply (a
transport error) is not retried: retry it yourself with the same ``step`` index, and the server
answers the step it already took again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from glider.v1.rest import ActRequest, ActResponse, EpisodeCreate, EpisodeView, Health, Sampling


class GliderAPIError(RuntimeError):
    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.retry_after = retry_after  # seconds, when the server said how long to wait


# errors the server answers before changing anything: safe to send again
#: seconds one request may take, unless the caller says otherwise
DEFAULT_TIMEOUT_S = 60.0
RETRYABLE = frozenset({"overloaded", "rate_limited", "backend_unavailable", "store_unavailable", "episode_busy"})
BACKOFF_S, MAX_BACKOFF_S = 0.25, 10.0


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        err = response.json()["error"]
        code, message = err["code"], err["message"]
    except Exception:
        code, message = "http_error", response.text
    try:
        retry_after = float(response.headers["retry-after"])
    except (KeyError, ValueError):
        retry_after = None
    raise GliderAPIError(response.status_code, code, message, retry_after)


def _retry_delay(err: GliderAPIError, attempt: int, retries: int) -> float | None:
    """Seconds to wait before sending again after ``err`` on try ``attempt`` (0-based), or None to give up."""
    if attempt >= retries or err.code not in RETRYABLE:
        return None
    return err.retry_after if err.retry_after is not None else min(MAX_BACKOFF_S, BACKOFF_S * 2 ** attempt)


def _act_body(**kwargs) -> dict:
    # a field left None is not sent: sampling on a continuing step is refused even when null
    return ActRequest(**{k: v for k, v in kwargs.items() if v is not None}).model_dump(exclude_none=True)


class GliderClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout: float = DEFAULT_TIMEOUT_S, *, retries: int = 0,
                 transport: httpx.BaseTransport | None = None):
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport)
        self.retries = retries

    def _send(self, method: str, url: str, **kwargs) -> httpx.Response:
        attempt = 0
        while True:
            try:
                return _check(self._http.request(method, url, **kwargs))
            except GliderAPIError as err:
                delay = _retry_delay(err, attempt, self.retries)
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1

    def __enter__(self) -> GliderClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def act(self, observation: str, *, episode_id: str | None = None, task: str | None = None,
            reward: float = 0.0, done: bool = False, step: int | None = None,
            score: float | None = None, sampling: Sampling | None = None,
            valid_actions: Sequence[str] | None = None, profile: str | None = None) -> ActResponse:
        """``sampling``: the new episode's own sampling settings (only when starting one);
        ``valid_actions``: the environment's admissible commands now (the answer is one of them);
        ``profile``: the agent profile of the episode this step starts (None: the server's default)."""
        body = _act_body(observation=observation, episode_id=episode_id, task=task, reward=reward,
                         done=done, step=step, score=score, sampling=sampling, valid_actions=valid_actions,
                         profile=profile)
        return ActResponse.model_validate(self._send("POST", "/act", json=body).json())

    def create_episode(self, task: str, episode_id: str | None = None,
                       sampling: Sampling | None = None, profile: str | None = None) -> EpisodeView:
        body = EpisodeCreate(task=task, episode_id=episode_id, sampling=sampling,
                             profile=profile).model_dump(exclude_none=True)
        return EpisodeView.model_validate(self._send("POST", "/episodes", json=body).json())

    def get_episode(self, episode_id: str) -> EpisodeView:
        return EpisodeView.model_validate(self._send("GET", f"/episodes/{episode_id}").json())

    def delete_episode(self, episode_id: str) -> None:
        self._send("DELETE", f"/episodes/{episode_id}")

    def load_adapter(self, name: str, version: str | None = None, *, token: str, profile: str | None = None) -> dict:
        """Admin: serve ``version`` of adapter ``name`` (default: the registry's current) of agent ``profile``
        (default: the server's default profile)."""
        body = {"version": version} if version else None
        path = f"/admin/profiles/{profile}/adapters/{name}/load" if profile else f"/admin/adapters/{name}/load"
        return self._send("POST", path, json=body, headers={"Authorization": f"Bearer {token}"}).json()

    def adapters_published(self, adapters: Sequence[str] | None = None, *, token: str,
                           profile: str | None = None) -> dict:
        """Admin, for a trainer: it has published ``adapters`` (None: all) of agent ``profile``; the server
        swaps now and tells its replicas. Its reply: ``serving`` versions, ``replicas_notified``."""
        body = {"adapters": list(adapters)} if adapters is not None else None
        path = f"/admin/profiles/{profile}/adapters/published" if profile else "/admin/adapters/published"
        return self._send("POST", path, json=body, headers={"Authorization": f"Bearer {token}"}).json()

    def ready(self) -> Health | None:
        try:
            r = self._http.get("/readyz")
        except httpx.TransportError:
            return None
        return Health.model_validate(r.json()) if r.status_code == 200 else None

    def wait_ready(self, timeout: float = 300.0, interval: float = 0.5) -> Health:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.ready()
            if health is not None:
                return health
            time.sleep(interval)
        raise TimeoutError(f"server not ready after {timeout:.0f}s")


class AsyncGliderClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout: float = DEFAULT_TIMEOUT_S,
                 max_connections: int = 100, *, retries: int = 0, transport: httpx.AsyncBaseTransport | None = None):
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport,
                                       limits=httpx.Limits(max_connections=max_connections))
        self.retries = retries

    async def _send(self, method: str, url: str, **kwargs) -> httpx.Response:
        attempt = 0
        while True:
            try:
                return _check(await self._http.request(method, url, **kwargs))
            except GliderAPIError as err:
                delay = _retry_delay(err, attempt, self.retries)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    async def __aenter__(self) -> AsyncGliderClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def act(self, observation: str, *, episode_id: str | None = None, task: str | None = None,
                  reward: float = 0.0, done: bool = False, step: int | None = None,
                  score: float | None = None, sampling: Sampling | None = None,
                  valid_actions: Sequence[str] | None = None, profile: str | None = None) -> ActResponse:
        body = _act_body(observation=observation, episode_id=episode_id, task=task, reward=reward,
                         done=done, step=step, score=score, sampling=sampling, valid_actions=valid_actions,
                         profile=profile)
        return ActResponse.model_validate((await self._send("POST", "/act", json=body)).json())

    async def create_episode(self, task: str, episode_id: str | None = None,
                             sampling: Sampling | None = None, profile: str | None = None) -> EpisodeView:
        body = EpisodeCreate(task=task, episode_id=episode_id, sampling=sampling,
                             profile=profile).model_dump(exclude_none=True)
        return EpisodeView.model_validate((await self._send("POST", "/episodes", json=body)).json())

    async def get_episode(self, episode_id: str) -> EpisodeView:
        return EpisodeView.model_validate((await self._send("GET", f"/episodes/{episode_id}")).json())

    async def delete_episode(self, episode_id: str) -> None:
        await self._send("DELETE", f"/episodes/{episode_id}")


# --- gRPC ---------------------------------------------------------------------------
def _from_pb(reply) -> ActResponse:
    return ActResponse(
        episode_id=reply.episode_id, step=reply.step,
        action=reply.action if reply.HasField("action") else None,
        subgoal=reply.subgoal if reply.HasField("subgoal") else None,
        new_subgoal=reply.new_subgoal, subgoal_done=reply.subgoal_done,
        subgoal_index=reply.subgoal_index, done=reply.done,
        adapter_versions=dict(reply.adapter_versions), fallback=reply.fallback, grounded=reply.grounded,
        generated_action=reply.generated_action if reply.HasField("generated_action") else None,
        profile=reply.profile or "default",
    )


def _sampling_pb(sampling: Sampling | None):
    from glider.v1 import agent_pb2 as pb

    return None if sampling is None else pb.Sampling(**sampling.model_dump(exclude_none=True))


def _act_pb(observation, episode_id, task, reward, done, step, score=None, sampling=None, valid_actions=None,
            profile=None):
    from glider.v1 import agent_pb2 as pb

    request = pb.ActRequest(observation=observation, episode_id=episode_id or "", task=task or "",
                            reward=reward, done=done, sampling=_sampling_pb(sampling),
                            valid_actions=valid_actions or (), profile=profile or "")
    if step is not None:
        request.step = step
    if score is not None:
        request.score = score
    return request


class GliderGrpcError(GliderAPIError):
    def __init__(self, err):
        super().__init__(0, err.code().name, err.details() or "")
        self.grpc_code = err.code()


class EpisodeStream:
    """One episode on a bidirectional ``Episode`` stream: ``start`` sends the task and first
    observation, each ``step`` the next observation, and each returns that step's reply. The server
    ends the stream after the step that finishes the episode. If the stream fails, the episode keeps
    its last answered step: carry on with ``act(episode_id=..., step=...)``.

        async with client.episode("boil water") as episode:
            reply = await episode.start(observation)
            while not reply.done:
                reply = await episode.step(env.step(reply.action), reward=r)
    """

    def __init__(self, stub, task: str, episode_id: str | None = None, sampling: Sampling | None = None,
                 profile: str | None = None):
        self._stub, self.task, self.episode_id, self.sampling = stub, task, episode_id, sampling
        self.profile = profile
        self._queue: asyncio.Queue = asyncio.Queue()
        self._call = None
        self._finished = False

    async def _events(self):
        while (event := await self._queue.get()) is not None:
            yield event

    async def _round_trip(self, event) -> ActResponse:
        import grpc

        if self._finished:
            # Writing to a call the server has ended races grpc-aio's write path, which can report INTERNAL
            # in place of the server's status (grpc/grpc#36066): say what happened without touching the call.
            raise GliderAPIError(0, "stream_closed", "the server closed the episode stream (the episode is done)")
        if self._call is not None and self._call.done():
            raise GliderAPIError(0, "stream_closed", "the episode stream has ended after an error; carry on with "
                                 "act(episode_id=..., step=...)")
        if self._call is None:
            self._call = self._stub.Episode(self._events())  # no deadline: an episode may run for hours
        await self._queue.put(event)
        try:
            reply = await self._call.read()
        except grpc.aio.AioRpcError as err:
            raise GliderGrpcError(err) from None
        if reply is grpc.aio.EOF:
            raise GliderAPIError(0, "stream_closed", "the server closed the episode stream (the episode is done)")
        result = _from_pb(reply)
        self.episode_id, self._finished = result.episode_id, result.done  # the server ends the stream after `done`
        return result

    async def start(self, observation: str, *, valid_actions: Sequence[str] | None = None) -> ActResponse:
        from glider.v1 import agent_pb2 as pb

        return await self._round_trip(pb.EpisodeEvent(start=pb.EpisodeStart(
            task=self.task, observation=observation, episode_id=self.episode_id or "",
            sampling=_sampling_pb(self.sampling), valid_actions=valid_actions or (), profile=self.profile or "")))

    async def step(self, observation: str, *, reward: float = 0.0, done: bool = False,
                   score: float | None = None, valid_actions: Sequence[str] | None = None) -> ActResponse:
        from glider.v1 import agent_pb2 as pb

        step = pb.EpisodeStep(observation=observation, reward=reward, done=done, valid_actions=valid_actions or ())
        if score is not None:
            step.score = score
        return await self._round_trip(pb.EpisodeEvent(step=step))

    async def close(self) -> None:
        """Half-close the stream; the episode stays in the server until deleted or expired."""
        await self._queue.put(None)

    async def __aenter__(self) -> EpisodeStream:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


@dataclass
class TLS:
    """Client side of gRPC over TLS: the CA that signed the server's certificate (None: the system's
    roots) and, for mutual TLS, the client's own certificate chain and key (PEM bytes)."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def from_files(cls, ca: str | None = None, cert: str | None = None, key: str | None = None) -> TLS:
        def read(path):
            return Path(path).read_bytes() if path else None

        return cls(read(ca), read(cert), read(key))

    def credentials(self):
        import grpc

        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)


def _channel_options(retries: int) -> list[tuple[str, object]]:
    """gRPC's own retry policy for the Agent's unary calls (``retries`` > 0): the status codes of the
    REST client's RETRYABLE errors, exponential backoff, and the server's ``grpc-retry-pushback-ms``
    trailer (sent with a rate-limit refusal) honoured by gRPC itself. gRPC caps attempts at 5, and
    retries by status alone, so RESOURCE_EXHAUSTED for too many episodes is retried too (REST's
    429 too_many_episodes is not)."""
    if retries <= 0:
        return []
    policy = {"maxAttempts": min(5, retries + 1), "initialBackoff": f"{BACKOFF_S}s",
              "maxBackoff": f"{MAX_BACKOFF_S}s", "backoffMultiplier": 2,
              "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "ABORTED"]}
    config = {"methodConfig": [{"name": [{"service": "glider.v1.Agent"}], "retryPolicy": policy}]}
    return [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config))]


def _open_channel(channels, target: str, tls: TLS | None, retries: int):
    """``channels``: the ``grpc`` or ``grpc.aio`` module."""
    options = _channel_options(retries)
    if tls is not None:
        return channels.secure_channel(target, tls.credentials(), options=options)
    return channels.insecure_channel(target, options=options)


class GliderGrpcClient:
    """Blocking gRPC client with the REST client's method names (``act``, ``get_episode``, ...)."""

    def __init__(self, target: str = "127.0.0.1:50051", timeout: float = DEFAULT_TIMEOUT_S, *, tls: TLS | None = None,
                 retries: int = 0):
        import grpc
        from glider.v1 import agent_pb2_grpc

        self._grpc = grpc
        self._channel = _open_channel(grpc, target, tls, retries)
        self._stub = agent_pb2_grpc.AgentStub(self._channel)
        self.timeout = timeout

    def __enter__(self) -> GliderGrpcClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except self._grpc.RpcError as err:
            raise GliderGrpcError(err) from None

    def act(self, observation: str, *, episode_id: str | None = None, task: str | None = None,
            reward: float = 0.0, done: bool = False, step: int | None = None,
            score: float | None = None, sampling: Sampling | None = None,
            valid_actions: Sequence[str] | None = None, profile: str | None = None) -> ActResponse:
        return _from_pb(self._call(self._stub.Act, _act_pb(observation, episode_id, task, reward, done, step,
                                                           score, sampling, valid_actions, profile)))

    def create_episode(self, task: str, episode_id: str | None = None, sampling: Sampling | None = None,
                       profile: str | None = None):
        from glider.v1 import agent_pb2 as pb

        return self._call(self._stub.CreateEpisode, pb.CreateEpisodeRequest(
            task=task, episode_id=episode_id or "", sampling=_sampling_pb(sampling), profile=profile or ""))

    def get_episode(self, episode_id: str):
        from glider.v1 import agent_pb2 as pb

        return self._call(self._stub.GetEpisode, pb.GetEpisodeRequest(episode_id=episode_id))

    def delete_episode(self, episode_id: str) -> None:
        from glider.v1 import agent_pb2 as pb

        self._call(self._stub.DeleteEpisode, pb.DeleteEpisodeRequest(episode_id=episode_id))


class AsyncGliderGrpcClient:
    """asyncio gRPC client: the same method names, plus ``episode()`` for a whole-episode stream
    (``retries`` applies to the unary calls: a stream that fails is resumed with ``act``)."""

    def __init__(self, target: str = "127.0.0.1:50051", timeout: float = DEFAULT_TIMEOUT_S, *, tls: TLS | None = None,
                 retries: int = 0):
        import grpc
        from glider.v1 import agent_pb2_grpc

        self._grpc = grpc
        self._channel = _open_channel(grpc.aio, target, tls, retries)
        self._stub = agent_pb2_grpc.AgentStub(self._channel)
        self.timeout = timeout

    async def __aenter__(self) -> AsyncGliderGrpcClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method, request):
        try:
            return await method(request, timeout=self.timeout)
        except self._grpc.aio.AioRpcError as err:
            raise GliderGrpcError(err) from None

    async def act(self, observation: str, *, episode_id: str | None = None, task: str | None = None,
                  reward: float = 0.0, done: bool = False, step: int | None = None,
                  score: float | None = None, sampling: Sampling | None = None,
                  valid_actions: Sequence[str] | None = None, profile: str | None = None) -> ActResponse:
        return _from_pb(await self._call(self._stub.Act, _act_pb(observation, episode_id, task, reward, done,
                                                                 step, score, sampling, valid_actions, profile)))

    async def create_episode(self, task: str, episode_id: str | None = None, sampling: Sampling | None = None,
                             profile: str | None = None):
        from glider.v1 import agent_pb2 as pb

        return await self._call(self._stub.CreateEpisode, pb.CreateEpisodeRequest(
            task=task, episode_id=episode_id or "", sampling=_sampling_pb(sampling), profile=profile or ""))

    async def get_episode(self, episode_id: str):
        from glider.v1 import agent_pb2 as pb

        return await self._call(self._stub.GetEpisode, pb.GetEpisodeRequest(episode_id=episode_id))

    async def delete_episode(self, episode_id: str) -> None:
        from glider.v1 import agent_pb2 as pb

        await self._call(self._stub.DeleteEpisode, pb.DeleteEpisodeRequest(episode_id=episode_id))

    def episode(self, task: str, episode_id: str | None = None, sampling: Sampling | None = None,
                profile: str | None = None) -> EpisodeStream:
        """A new episode on its own stream (see ``EpisodeStream``); ``episode_id`` picks its id,
        ``sampling`` its own sampling settings, ``profile`` its agent profile (None: the default)."""
        return EpisodeStream(self._stub, task, episode_id, sampling, profile)
