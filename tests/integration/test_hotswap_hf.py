"""Hot-swap on the transformers+peft backend (in process): swap under load, rollback, bounded adapters."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from glider.server.app import build_agent
from glider.server.settings import Settings
from glider.trainer.lora import create_adapter
from glider.trainer.publish import publish_adapter

pytestmark = pytest.mark.integration


async def test_hf_backend_swaps_under_load_and_rolls_back(backbone_dir, adapters_dir, tmp_path):
    registry = tmp_path / "adapters"
    shutil.copytree(adapters_dir, registry, symlinks=True)
    agent = build_agent(Settings(backend="hf", model=backbone_dir, adapters=registry, adapter_poll_s=0))
    await agent.start()
    try:
        old = agent.backend.adapter_versions()["executor"]
        src = create_adapter(backbone_dir, tmp_path / "src", seed=3)
        seen, stop = [], asyncio.Event()

        async def episode(k):
            r = await agent.act(observation=f"o{k}", task=f"task {k}")
            while not stop.is_set():
                r = await agent.act(observation=f"o{k}", episode_id=r.episode_id)
                seen.append(r.adapter_versions["executor"])

        tasks = [asyncio.create_task(episode(k)) for k in range(8)]
        while len(seen) < 8:
            await asyncio.sleep(0.05)
        new = publish_adapter(registry, "executor", src, backbone_dir, stage="test").version
        await agent.adapters.check("executor")  # what the watcher does on its next poll
        mark = len(seen)
        while len(seen) < mark + 16:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)  # any failed step would raise here
        assert set(seen) == {old, new} and seen[-1] == new

        result = await agent.adapters.rollback("executor")
        assert (result.version, result.previous) == (old, new)
        r = await agent.act(observation="x", task="t")
        assert r.adapter_versions["executor"] == old
        for i in range(10):  # repeated swaps leave one peft adapter per served name
            await agent.adapters.load("executor", (new, old)[i % 2])
            await agent.act(observation="x", task="t")
        assert sorted(n.split("@")[0] for n in await agent.backend.engine_adapters()) == ["executor", "planner"]
    finally:
        await agent.close()
