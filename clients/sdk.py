"""Typed REST client for the GLIDER agent (sync and async, same method names).

    with GliderClient("http://127.0.0.1:8000") as client:
        step = client.act(observation=obs, task=task)          # starts an episode
        step = client.act(observation=obs, episode_id=step.episode_id, reward=r)

Errors come back as ``GliderAPIError`` with the server's status, code and message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from glider.server.api.schemas import ActRequest, ActResponse, EpisodeCreate, EpisodeView, Health


class GliderAPIError(RuntimeError):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        err = response.json()["error"]
        code, message = err["code"], err["message"]
    except Exception:
        code, message = "http_error", response.text
    raise GliderAPIError(response.status_code, code, message)


def _act_body(**kwargs) -> dict:
    return ActRequest(**kwargs).model_dump(exclude_none=True)


class GliderClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout: float = 60.0):
        self._http = httpx.Client(base_url=base_url, timeout=timeout)

    def __enter__(self) -> GliderClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def act(self, observation: str, *, episode_id: str | None = None, task: str | None = None,
            reward: float = 0.0, done: bool = False, step: int | None = None,
            score: float | None = None) -> ActResponse:
        body = _act_body(observation=observation, episode_id=episode_id, task=task, reward=reward,
                         done=done, step=step, score=score)
        return ActResponse.model_validate(_check(self._http.post("/act", json=body)).json())

    def create_episode(self, task: str, episode_id: str | None = None) -> EpisodeView:
        body = EpisodeCreate(task=task, episode_id=episode_id).model_dump(exclude_none=True)
        return EpisodeView.model_validate(_check(self._http.post("/episodes", json=body)).json())

    def get_episode(self, episode_id: str) -> EpisodeView:
        return EpisodeView.model_validate(_check(self._http.get(f"/episodes/{episode_id}")).json())

    def delete_episode(self, episode_id: str) -> None:
        _check(self._http.delete(f"/episodes/{episode_id}"))

    def load_adapter(self, name: str, version: str | None = None, *, token: str) -> dict:
        """Admin: serve ``version`` of adapter ``name`` (default: the registry's current)."""
        body = {"version": version} if version else None
        return _check(self._http.post(f"/admin/adapters/{name}/load", json=body,
                                      headers={"Authorization": f"Bearer {token}"})).json()

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
    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout: float = 60.0,
                 max_connections: int = 100):
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout,
                                       limits=httpx.Limits(max_connections=max_connections))

    async def __aenter__(self) -> AsyncGliderClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def act(self, observation: str, *, episode_id: str | None = None, task: str | None = None,
                  reward: float = 0.0, done: bool = False, step: int | None = None,
                  score: float | None = None) -> ActResponse:
        body = _act_body(observation=observation, episode_id=episode_id, task=task, reward=reward,
                         done=done, step=step, score=score)
        return ActResponse.model_validate(_check(await self._http.post("/act", json=body)).json())

    async def create_episode(self, task: str, episode_id: str | None = None) -> EpisodeView:
        body = EpisodeCreate(task=task, episode_id=episode_id).model_dump(exclude_none=True)
        return EpisodeView.model_validate(_check(await self._http.post("/episodes", json=body)).json())

    async def get_episode(self, episode_id: str) -> EpisodeView:
        return EpisodeView.model_validate(_check(await self._http.get(f"/episodes/{episode_id}")).json())

    async def delete_episode(self, episode_id: str) -> None:
        _check(await self._http.delete(f"/episodes/{episode_id}"))


# --- gRPC ---------------------------------------------------------------------------
def _from_pb(reply) -> ActResponse:
    return ActResponse(
        episode_id=reply.episode_id, step=reply.step,
        action=reply.action if reply.HasField("action") else None,
        subgoal=reply.subgoal if reply.HasField("subgoal") else None,
        new_subgoal=reply.new_subgoal, subgoal_done=reply.subgoal_done,
        subgoal_index=reply.subgoal_index, done=reply.done,
        adapter_versions=dict(reply.adapter_versions), fallback=reply.fallback,
    )


def _act_pb(observation, episode_id, task, reward, done, step, score=None):
    from glider.v1 import agent_pb2 as pb

    request = pb.ActRequest(observation=observation, episode_id=episode_id or "", task=task or "",
                            reward=reward, done=done)
    if step is not None:
        request.step = step
    if score is not None:
        request.score = score
    return request


class GliderGrpcError(GliderAPIError):
    def __init__(self, err):
        super().__init__(0, err.code().name, err.details() or "")
        self.grpc_code = err.code()


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


class GliderGrpcClient:
    """Blocking gRPC client with the REST client's method names (``act``, ``get_episode``, ...)."""

    def __init__(self, target: str = "127.0.0.1:50051", timeout: float = 60.0, *, tls: TLS | None = None):
        import grpc
        from glider.v1 import agent_pb2_grpc

        self._grpc = grpc
        self._channel = (grpc.secure_channel(target, tls.credentials()) if tls is not None
                         else grpc.insecure_channel(target))
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
            score: float | None = None) -> ActResponse:
        return _from_pb(self._call(self._stub.Act,
                                   _act_pb(observation, episode_id, task, reward, done, step, score)))

    def create_episode(self, task: str, episode_id: str | None = None):
        from glider.v1 import agent_pb2 as pb

        return self._call(self._stub.CreateEpisode, pb.CreateEpisodeRequest(task=task, episode_id=episode_id or ""))

    def get_episode(self, episode_id: str):
        from glider.v1 import agent_pb2 as pb

        return self._call(self._stub.GetEpisode, pb.GetEpisodeRequest(episode_id=episode_id))

    def delete_episode(self, episode_id: str) -> None:
        from glider.v1 import agent_pb2 as pb

        self._call(self._stub.DeleteEpisode, pb.DeleteEpisodeRequest(episode_id=episode_id))


class AsyncGliderGrpcClient:
    """asyncio gRPC client: the same method names, plus ``episode()`` for a whole-episode stream."""

    def __init__(self, target: str = "127.0.0.1:50051", timeout: float = 60.0, *, tls: TLS | None = None):
        import grpc
        from glider.v1 import agent_pb2_grpc

        self._grpc = grpc
        self._channel = (grpc.aio.secure_channel(target, tls.credentials()) if tls is not None
                         else grpc.aio.insecure_channel(target))
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
                  score: float | None = None) -> ActResponse:
        return _from_pb(await self._call(self._stub.Act,
                                         _act_pb(observation, episode_id, task, reward, done, step, score)))

    async def create_episode(self, task: str, episode_id: str | None = None):
        from glider.v1 import agent_pb2 as pb

        return await self._call(self._stub.CreateEpisode,
                                pb.CreateEpisodeRequest(task=task, episode_id=episode_id or ""))

    async def get_episode(self, episode_id: str):
        from glider.v1 import agent_pb2 as pb

        return await self._call(self._stub.GetEpisode, pb.GetEpisodeRequest(episode_id=episode_id))

    async def delete_episode(self, episode_id: str) -> None:
        from glider.v1 import agent_pb2 as pb

        await self._call(self._stub.DeleteEpisode, pb.DeleteEpisodeRequest(episode_id=episode_id))
