"""Admin REST API: adapters (list, load a version, rollback, the trainer's "published" notice) and agent
profiles (list, create or change, delete), behind a bearer token.

Clients name adapters and versions, never paths; both are validated by the
registry, so nothing can resolve outside it.  No token configured means the
admin API is off (401 without credentials, 403 with any).  Tokens are compared in constant time.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from glider.server.adapters.manager import AdapterManager
from glider.server.adapters.registry import NAME_PATTERN, VERSION_PATTERN
from glider.server.agent import Agent
from glider.server.errors import Forbidden, Unauthorized
from glider.server.profiles import DEFAULT, GenerationSettings, ProfileSpec
from glider.server.served_profiles import ServedProfile
from glider.v1.rest import PROFILE_PATTERN, ErrorResponse, WireModel
from pydantic import BaseModel, Field, SecretStr, StringConstraints

_bearer = HTTPBearer(auto_error=False, description="GLIDER_ADMIN_TOKEN")
# names and versions are documented with the registry's own patterns, so the contract says what
# the server accepts (and nothing that resolves outside the registry can be asked for)
AdapterName = Annotated[str, Path(pattern=NAME_PATTERN, description="planner | executor | shared | flat")]
ProfileName = Annotated[str, Path(pattern=PROFILE_PATTERN, description="An agent profile; `default` is the server's.")]


class AdapterInfo(BaseModel):
    name: str
    serving: str | None = Field(description="Version the engine serves now.")
    current: str | None = Field(description="Version the registry's current pointer names.")
    previous: str | None = Field(description="Version a rollback would return to.")
    versions: list[str]


class AdapterList(BaseModel):
    adapters: list[AdapterInfo]
    engine_loaded: list[str] = Field(description="Adapter versions resident in the engine.")


class LoadRequest(WireModel):
    version: str | None = Field(None, pattern=VERSION_PATTERN,
                                description="Version to serve; omit for the registry's current.")


class SwapResponse(BaseModel):
    name: str
    version: str
    previous: str | None
    changed: bool
    seconds: float


class PublishedNotice(WireModel):
    adapters: list[Annotated[str, StringConstraints(pattern=NAME_PATTERN)]] | None = Field(
        None, max_length=16, description="The adapters just published; omit for every adapter of the profile.")


class PublishedResponse(BaseModel):
    profile: str
    serving: dict[str, str | None] = Field(description="Adapter -> the version this server serves now.")
    replicas_notified: int = Field(description="Other replicas the notice reached through Redis (0 without "
                                               "GLIDER_STORE=redis; those replicas' polls find it).")


class ProfileInfo(BaseModel):
    name: str
    mode: str
    adapters: bool = Field(description="false: the base model prompted, no adapters")
    generation: GenerationSettings
    state: str = Field(description="ready | loading | broken (its episodes are refused with 503)")
    error: str | None = None
    serving: dict[str, str | None] = Field(description="Adapter -> the version the engine serves for it.")


class ProfileList(BaseModel):
    profiles: list[ProfileInfo]


def profile_info(served: ServedProfile) -> ProfileInfo:
    state = served.state()
    return ProfileInfo(name=served.name, mode=state["mode"], adapters=served.profile.adapters,
                       generation=served.profile.generation, state=state["state"], error=state.get("error"),
                       serving=state["adapters"])


def adapter_info(agent: Agent, name: str, manager: AdapterManager | None = None) -> AdapterInfo:
    manager = manager or agent.adapters
    slot = manager.slots[name]
    try:
        current = manager.registry.current_version(name)
    except LookupError:
        current = None
    return AdapterInfo(name=name, serving=slot.serving, current=current,
                       previous=slot.history[-1] if slot.history else None,
                       versions=manager.registry.versions(name))


async def adapter_list(agent: Agent, manager: AdapterManager | None = None) -> AdapterList:
    manager = manager or agent.adapters
    return AdapterList(adapters=[adapter_info(agent, n, manager) for n in manager.names],
                       engine_loaded=await agent.backend.engine_adapters())


def check_admin(token: SecretStr | None, scheme: str | None, credentials: str | None) -> None:
    """The one admin check both transports use (constant-time comparison).  Without credentials the
    answer is 401 (RFC 9110: authentication is what is missing), whether or not the API is enabled;
    credentials on a disabled API or a wrong token are 403."""
    if not credentials or (scheme or "").lower() != "bearer":
        raise Unauthorized("admin calls need 'Authorization: Bearer <GLIDER_ADMIN_TOKEN>'")
    if token is None or not token.get_secret_value():
        raise Forbidden("the admin API is disabled: set GLIDER_ADMIN_TOKEN")
    if not secrets.compare_digest(credentials.encode(), token.get_secret_value().encode()):
        raise Forbidden("invalid admin token")


def admin_router(agent: Agent) -> APIRouter:
    token = agent.settings.admin_token

    async def require_admin(creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        check_admin(token, creds.scheme if creds else None, creds.credentials if creds else None)

    errors = {code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 413, 422, 429, 503)}
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                       responses=errors)

    @router.get("/adapters", response_model=AdapterList)
    async def list_adapters() -> AdapterList:
        return await adapter_list(agent)

    @router.post("/adapters/{name}/load", response_model=SwapResponse)
    async def load(name: AdapterName, body: LoadRequest | None = None) -> SwapResponse:
        r = await agent.adapters.load(name, body.version if body else None, make_current=True)
        return SwapResponse(name=r.name, version=r.version, previous=r.previous, changed=r.changed,
                            seconds=r.seconds)

    async def published(profile: str | None, body: PublishedNotice | None) -> PublishedResponse:
        adapters = tuple(body.adapters) if body is not None and body.adapters is not None else None
        serving, notified = await agent.adapters_published(profile, adapters)
        return PublishedResponse(profile=profile or DEFAULT, serving=serving, replicas_notified=notified)

    @router.post("/adapters/published", response_model=PublishedResponse,
                 summary="The trainer has published: swap now, and tell every replica")
    async def adapters_published(body: PublishedNotice | None = None) -> PublishedResponse:
        return await published(None, body)

    @router.post("/adapters/{name}/rollback", response_model=SwapResponse)
    async def rollback(name: AdapterName) -> SwapResponse:
        r = await agent.adapters.rollback(name)
        return SwapResponse(name=r.name, version=r.version, previous=r.previous, changed=r.changed,
                            seconds=r.seconds)

    # -- agent profiles: each one's definition, and its adapters as above -------------------------
    @router.get("/profiles", response_model=ProfileList)
    async def list_profiles() -> ProfileList:
        return ProfileList(profiles=[profile_info(p) for p in agent.profiles.served.values()])

    @router.get("/profiles/{profile}", response_model=ProfileInfo)
    async def get_profile(profile: ProfileName) -> ProfileInfo:
        return profile_info(agent.profiles.get(profile))

    @router.put("/profiles/{profile}", response_model=ProfileInfo,
                summary="Create or change a profile (stored beside its adapters; it survives a restart)")
    async def put_profile(profile: ProfileName, body: ProfileSpec) -> ProfileInfo:
        return profile_info(await agent.profiles.put(profile, body))

    @router.delete("/profiles/{profile}", status_code=204, summary="Delete a profile and its adapters")
    async def delete_profile(profile: ProfileName) -> Response:
        await agent.profiles.delete(profile)
        return Response(status_code=204)

    @router.get("/profiles/{profile}/adapters", response_model=AdapterList)
    async def list_profile_adapters(profile: ProfileName) -> AdapterList:
        return await adapter_list(agent, agent.profiles.get(profile).adapters)

    @router.post("/profiles/{profile}/adapters/{name}/load", response_model=SwapResponse)
    async def load_profile_adapter(profile: ProfileName, name: AdapterName,
                                   body: LoadRequest | None = None) -> SwapResponse:
        r = await agent.profiles.get(profile).adapters.load(name, body.version if body else None, make_current=True)
        return SwapResponse(name=r.name, version=r.version, previous=r.previous, changed=r.changed,
                            seconds=r.seconds)

    @router.post("/profiles/{profile}/adapters/published", response_model=PublishedResponse,
                 summary="The trainer has published this profile's adapters: swap now, and tell every replica")
    async def profile_adapters_published(profile: ProfileName, body: PublishedNotice | None = None
                                         ) -> PublishedResponse:
        return await published(profile, body)

    @router.post("/profiles/{profile}/adapters/{name}/rollback", response_model=SwapResponse)
    async def rollback_profile_adapter(profile: ProfileName, name: AdapterName) -> SwapResponse:
        r = await agent.profiles.get(profile).adapters.rollback(name)
        return SwapResponse(name=r.name, version=r.version, previous=r.previous, changed=r.changed,
                            seconds=r.seconds)

    return router
