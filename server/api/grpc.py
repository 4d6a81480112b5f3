"""gRPC transport (``grpc.aio``): the Agent and AdapterAdmin services of ``protos/glider/v1``.

Runs on the same event loop as the FastAPI app and calls the same Agent
service; errors map through the same table (``server/errors.py``) to gRPC
status codes with the message as details.  Standard health checking reports
SERVING once the engine and adapters are loaded; server reflection lets a
generic client (grpcurl, grpcui) discover the services without stubs.
"""

from __future__ import annotations

import logging
import time

import grpc
from glider.server.agent import Agent, StepResult
from glider.server.api.admin import adapter_list, check_admin
from glider.server.errors import InvalidInput, RateLimited, classify
from glider.server.policy.state import EpisodeState
from glider.server.profiles import DEFAULT
from glider.v1 import agent_pb2 as pb
from glider.v1 import agent_pb2_grpc as pb_grpc
from glider.v1.rest import Sampling
from google.protobuf import message_factory
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

AGENT_SERVICE = pb.DESCRIPTOR.services_by_name["Agent"].full_name
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["AdapterAdmin"].full_name


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, metrics) -> None:
    """End the call with the status the error table gives (counted like REST's errors)."""
    known = classify(exc)
    if known is None:
        log.error("unhandled error in a gRPC call", exc_info=exc)
        metrics.errors.labels("internal").inc()
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    code, _, grpc_name = known
    metrics.errors.labels(code).inc()
    await context.abort(getattr(grpc.StatusCode, grpc_name), str(exc))


def _reply(r: StepResult) -> pb.ActResponse:
    msg = pb.ActResponse(
        episode_id=r.episode_id, step=r.step, new_subgoal=r.new_subgoal, subgoal_done=r.subgoal_done,
        subgoal_index=r.subgoal_index, done=r.done, adapter_versions=r.adapter_versions,
        fallback=r.fallback, grounded=r.grounded, profile=r.profile,
    )
    if r.generated_action is not None:
        msg.generated_action = r.generated_action
    if r.action is not None:
        msg.action = r.action
    if r.subgoal is not None:
        msg.subgoal = r.subgoal
    return msg


def _info(s: EpisodeState) -> pb.EpisodeInfo:
    msg = pb.EpisodeInfo(
        episode_id=s.id, task=s.task, mode=s.mode, status=s.status.value, step=s.step,
        subgoal_count=s.subgoal_count, planner_calls=s.planner_calls,
        executor_calls=s.executor_calls, total_reward=s.total_reward,
        adapter_versions=s.adapter_versions, profile=s.profile,
    )
    if s.subgoal is not None:
        msg.subgoal = s.subgoal
    if s.sampling is not None:
        msg.sampling.CopyFrom(pb.Sampling(**s.sampling.model_dump(exclude_none=True)))
    return msg


def _sampling(message, field: str = "sampling") -> Sampling | None:
    """The contract's Sampling from a message's optional ``sampling``; the Agent checks its ranges."""
    if not message.HasField(field):
        return None
    s = getattr(message, field)
    return Sampling.model_construct(
        temperature=_finite(s.temperature, "sampling.temperature must be a finite number") if s.HasField("temperature") else None,
        top_p=_finite(s.top_p, "sampling.top_p must be a finite number") if s.HasField("top_p") else None,
        seed=s.seed if s.HasField("seed") else None)


def _finite(x: float, message: str = "reward and score must be finite numbers") -> float:
    if x != x or x in (float("inf"), float("-inf")):
        raise InvalidInput(message)
    return x


class AgentServicer(pb_grpc.AgentServicer):
    def __init__(self, agent: Agent):
        self.agent = agent

    async def Act(self, request: pb.ActRequest, context) -> pb.ActResponse:
        try:
            result = await self.agent.act(
                observation=request.observation,
                episode_id=request.episode_id or None,
                task=request.task or None,
                reward=_finite(request.reward),
                done=request.done,
                step=request.step if request.HasField("step") else None,
                score=_finite(request.score) if request.HasField("score") else None,
                sampling=_sampling(request),
                valid_actions=list(request.valid_actions),
                profile=request.profile or None,
            )
        except Exception as exc:
            await _abort(context, exc, self.agent.metrics)
        return _reply(result)

    async def Episode(self, request_iterator, context):
        episode_id = None
        try:
            async for event in request_iterator:
                kind = event.WhichOneof("event")
                if episode_id is None:
                    if kind != "start":
                        raise InvalidInput("an episode stream starts with a `start` event")
                    start = event.start
                    if start.episode_id:
                        await self.agent.create_episode(start.task, start.episode_id, _sampling(start),
                                                        start.profile or None)
                        try:
                            result = await self.agent.act(observation=start.observation,
                                                          episode_id=start.episode_id,
                                                          valid_actions=list(start.valid_actions))
                        except Exception:  # refused or failed: leave nothing behind, as REST does
                            await self.agent.delete_episode(start.episode_id)
                            raise
                    else:
                        result = await self.agent.act(observation=start.observation, task=start.task,
                                                      sampling=_sampling(start),
                                                      valid_actions=list(start.valid_actions),
                                                      profile=start.profile or None)
                    episode_id = result.episode_id
                elif kind == "step":
                    result = await self.agent.act(observation=event.step.observation,
                                                  episode_id=episode_id,
                                                  reward=_finite(event.step.reward),
                                                  done=event.step.done,
                                                  score=_finite(event.step.score)
                                                  if event.step.HasField("score") else None,
                                                  valid_actions=list(event.step.valid_actions))
                else:
                    raise InvalidInput("only `step` events may follow `start`")
                yield _reply(result)
                if result.done:
                    return  # the episode is over: close the stream
        except Exception as exc:
            # the episode keeps its last committed state: resumable with Act, or expired by TTL
            await _abort(context, exc, self.agent.metrics)

    async def CreateEpisode(self, request, context) -> pb.EpisodeInfo:
        try:
            return _info(await self.agent.create_episode(request.task, request.episode_id or None,
                                                         _sampling(request), request.profile or None))
        except Exception as exc:
            await _abort(context, exc, self.agent.metrics)

    async def GetEpisode(self, request, context) -> pb.EpisodeInfo:
        try:
            return _info(await self.agent.get_episode(request.episode_id))
        except Exception as exc:
            await _abort(context, exc, self.agent.metrics)

    async def DeleteEpisode(self, request, context) -> pb.DeleteEpisodeResponse:
        try:
            await self.agent.delete_episode(request.episode_id)
        except Exception as exc:
            await _abort(context, exc, self.agent.metrics)
        return pb.DeleteEpisodeResponse()


class AdminServicer(pb_grpc.AdapterAdminServicer):
    def __init__(self, agent: Agent):
        self.agent = agent

    def _authorize(self, context) -> None:
        value = dict(context.invocation_metadata()).get("authorization", "")
        scheme, _, credentials = value.partition(" ")
        check_admin(self.agent.settings.admin_token, scheme, credentials.strip())

    @staticmethod
    def _swap(r) -> pb.SwapResponse:
        msg = pb.SwapResponse(name=r.name, version=r.version, changed=r.changed, seconds=r.seconds)
        if r.previous is not None:
            msg.previous = r.previous
        return msg

    def _manager(self, request):
        """The adapters of the request's agent profile (empty: the default's)."""
        return self.agent.profiles.get(self.agent.check_profile(request.profile)).adapters

    async def ListAdapters(self, request, context) -> pb.ListAdaptersResponse:
        try:
            self._authorize(context)
            listing = await adapter_list(self.agent, self._manager(request))
        except Exception as exc:
            await _abort(context, exc, self.agent.metrics)
        return pb.ListAdaptersResponse(
            adapters=[pb.AdapterInfo(**{k: v for k, v in a.model_dump().items() if v is not None})
                      for a in listing.adapters],
            engine_loaded=listing.engine_loaded)

    async def LoadAdapter(self, request, context) -> pb.SwapResponse:
        try:
            self._authorize(context)
            result = await self._manager(request).load(request.name, request.version or None, make_current=True)
        except Exception as exc:
            await _abort(context, exc, self.agent.metrics)
        return self._swap(result)

    async def RollbackAdapter(self, request, context) -> pb.SwapResponse:
        try:
            self._authorize(context)
            result = await self._manager(request).rollback(request.name)
        except Exception as exc:
            await _abort(context, exc, self.agent.metrics)
        return self._swap(result)


    async def AdaptersPublished(self, request, context) -> pb.AdaptersPublishedResponse:
        try:
            self._authorize(context)
            serving, notified = await self.agent.adapters_published(request.profile or None,
                                                                    tuple(request.adapters) or None)
        except Exception as exc:
            await _abort(context, exc, self.agent.metrics)
        return pb.AdaptersPublishedResponse(profile=request.profile or DEFAULT, replicas_notified=notified,
                                            serving={k: v for k, v in serving.items() if v is not None})


class _Malformed:
    """What a frame that does not parse as its message type becomes (instead of an exception that
    grpc would report as UNKNOWN, with a traceback in the log)."""

    def __init__(self, type_name: str, error: Exception):
        self.message = f"malformed {type_name}: {error}"


def _lenient(cls):
    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            return _Malformed(cls.DESCRIPTOR.name, exc)

    return parse


def _admit(limiter, context) -> None:
    """Count one request (a unary call, or one event of a stream) against the client's rate limit."""
    if limiter is None:
        return
    wait = limiter.retry_after(limiter.grpc_client(context))
    if wait is not None:
        # grpc-retry-pushback-ms: a client on gRPC's retry policy waits this long before its retry
        context.set_trailing_metadata((("retry-after", str(wait)), ("grpc-retry-pushback-ms", str(wait * 1000))))
        raise RateLimited(limiter.message(wait), wait)


def _count(metrics, method: str, context) -> None:
    code = context.code()  # None unless the call was aborted or a code was set
    if code is None and context.cancelled():
        code = grpc.StatusCode.CANCELLED
    metrics.grpc_requests.labels(method, (code or grpc.StatusCode.OK).name).inc()


def _add_service(server, servicer, service, metrics, limiter=None) -> None:
    """Register ``servicer`` for ``service`` like the generated ``add_*_to_server``, except that a
    malformed frame is answered INVALID_ARGUMENT with what failed to parse, and each request (each
    event of a stream) is counted against the client's rate limit, if one is set: past it the call
    ends RESOURCE_EXHAUSTED with a ``retry-after`` trailer, the episode as its last answered step left it."""
    handlers = {}
    for method in service.methods:
        impl = getattr(servicer, method.name)
        latency = metrics.grpc_latency.labels(method.name)
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        if method.client_streaming and method.server_streaming:
            async def behavior(requests, context, impl=impl, latency=latency, name=method.name):
                # grpc wants an async generator function
                received = 0.0

                async def checked():
                    nonlocal received
                    async for request in requests:
                        if isinstance(request, _Malformed):
                            raise InvalidInput(request.message)
                        _admit(limiter, context)
                        received = time.perf_counter()
                        yield request

                try:
                    async for reply in impl(checked(), context):
                        latency.observe(time.perf_counter() - received)
                        yield reply
                finally:
                    _count(metrics, name, context)

            make = grpc.stream_stream_rpc_method_handler
        elif not method.client_streaming and not method.server_streaming:
            async def behavior(request, context, impl=impl, latency=latency, name=method.name):
                t0 = time.perf_counter()
                try:
                    try:
                        if isinstance(request, _Malformed):
                            raise InvalidInput(request.message)
                        _admit(limiter, context)
                    except Exception as exc:
                        await _abort(context, exc, metrics)
                    return await impl(request, context)
                finally:
                    latency.observe(time.perf_counter() - t0)
                    _count(metrics, name, context)

            make = grpc.unary_unary_rpc_method_handler
        else:  # pragma: no cover - the contract has no such methods
            raise NotImplementedError(f"{method.full_name}: one-sided streaming")
        handlers[method.name] = make(behavior, request_deserializer=_lenient(request_cls),
                                     response_serializer=response_cls.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


class GrpcServer:
    """The gRPC server of one Agent, started and stopped by the app's lifespan."""

    def __init__(self, agent: Agent, host: str, port: int, max_message_bytes: int,
                 tls: tuple[bytes, bytes, bytes | None] | None = None, max_concurrent_rpcs: int | None = None,
                 rate_limiter=None):
        """``tls``: (certificate chain, private key, client CA) in PEM; a client CA makes it mutual TLS."""
        self.agent = agent
        self.address = f"{host}:{port}"
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        # past max_concurrent_rpcs, grpc itself answers RESOURCE_EXHAUSTED
        self.server = grpc.aio.server(options=options, maximum_concurrent_rpcs=max_concurrent_rpcs)
        for servicer, service in ((AgentServicer(agent), "Agent"), (AdminServicer(agent), "AdapterAdmin")):
            _add_service(self.server, servicer, pb.DESCRIPTOR.services_by_name[service], agent.metrics, rate_limiter)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (AGENT_SERVICE, ADMIN_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        if tls is None:
            self.port = self.server.add_insecure_port(self.address)
        else:
            chain, key, client_ca = tls
            credentials = grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca,
                                                      require_client_auth=client_ca is not None)
            self.port = self.server.add_secure_port(self.address, credentials)

    async def start(self) -> None:
        await self.set_serving(False)
        await self.server.start()
        log.info("gRPC listening on %s", self.address)

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", AGENT_SERVICE):
            await self.health.set(service, status)

    async def stop(self, grace: float = 5.0) -> None:
        await self.server.stop(grace)
