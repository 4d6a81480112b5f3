"""Admin REST API: adapters (list, load a version, rollback), behind a bearer token.

Clients name adapters and versions, never paths; both are validated by the
registry, so nothing can resolve outside it.  No token configured means the
admin API is off (403 for everyone).  Tokens are compared in constant time.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from glider.server.adapters.registry import NAME_PATTERN, VERSION_PATTERN
from glider.server.agent import Agent
from glider.server.errors import Forbidden, Unauthorized
from glider.v1.rest import ErrorResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr

_bearer = HTTPBearer(auto_error=False, description="GLIDER_ADMIN_TOKEN")
# names and versions are documented with the registry's own patterns, so the contract says what
# the server accepts (and nothing that resolves outside the registry can be asked for)
AdapterName = Annotated[str, Path(pattern=NAME_PATTERN, description="planner | executor | shared | flat")]


class AdapterInfo(BaseModel):
    name: str
    serving: str | None = Field(description="Version the engine serves now.")
    current: str | None = Field(description="Version the registry's current pointer names.")
    previous: str | None = Field(description="Version a rollback would return to.")
    versions: list[str]


class AdapterList(BaseModel):
    adapters: list[AdapterInfo]
    engine_loaded: list[str] = Field(description="Adapter versions resident in the engine.")


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = Field(None, pattern=VERSION_PATTERN,
                                description="Version to serve; omit for the registry's current.")


class SwapResponse(BaseModel):
    name: str
    version: str
    previous: str | None
    changed: bool
    seconds: float


def adapter_info(agent: Agent, name: str) -> AdapterInfo:
    manager = agent.adapters
    slot = manager.slots[name]
    try:
        current = manager.registry.current_version(name)
    except LookupError:
        current = None
    return AdapterInfo(name=name, serving=slot.serving, current=current,
                       previous=slot.history[-1] if slot.history else None,
                       versions=manager.registry.versions(name))


async def adapter_list(agent: Agent) -> AdapterList:
    return AdapterList(adapters=[adapter_info(agent, n) for n in agent.adapters.names],
                       engine_loaded=await agent.backend.engine_adapters())


def check_admin(token: SecretStr | None, scheme: str | None, credentials: str | None) -> None:
    """The one admin check both transports use (constant-time comparison)."""
    if token is None or not token.get_secret_value():
        raise Forbidden("the admin API is disabled: set GLIDER_ADMIN_TOKEN")
    if not credentials or (scheme or "").lower() != "bearer":
        raise Unauthorized("admin calls need 'Authorization: Bearer <GLIDER_ADMIN_TOKEN>'")
    if not secrets.compare_digest(credentials.encode(), token.get_secret_value().encode()):
        raise Forbidden("invalid admin token")


def admin_router(agent: Agent) -> APIRouter:
    token = agent.settings.admin_token

    async def require_admin(creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        check_admin(token, creds.scheme if creds else None, creds.credentials if creds else None)

    errors = {code: {"model": ErrorResponse} for code in (401, 403, 404, 413, 422, 429, 503)}
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                       responses=errors)
    manager = agent.adapters

    @router.get("/adapters", response_model=AdapterList)
    async def list_adapters() -> AdapterList:
        return await adapter_list(agent)

    @router.post("/adapters/{name}/load", response_model=SwapResponse)
    async def load(name: AdapterName, body: LoadRequest | None = None) -> SwapResponse:
        r = await manager.load(name, body.version if body else None, make_current=True)
        return SwapResponse(name=r.name, version=r.version, previous=r.previous, changed=r.changed,
                            seconds=r.seconds)

    @router.post("/adapters/{name}/rollback", response_model=SwapResponse)
    async def rollback(name: AdapterName) -> SwapResponse:
        r = await manager.rollback(name)
        return SwapResponse(name=r.name, version=r.version, previous=r.previous, changed=r.changed,
                            seconds=r.seconds)

    return router
