"""How many episodes an evaluation keeps in flight when the user does not say: what memory holds."""

from __future__ import annotations

from types import SimpleNamespace

import psutil
import pytest
from glider.clients.evaluate import ENV_RESIDENT_GIB, MAX_DEFAULT_PARALLEL, default_parallel

GIB = 2**30


@pytest.mark.parametrize(("available_gib", "expected"), [
    (1.0, 2),  # nothing to spare still runs two
    (8.0, int((8.0 - 2.0) / ENV_RESIDENT_GIB)),  # 6 GiB past the reserve: one JVM per 0.5 GiB
    (200.0, MAX_DEFAULT_PARALLEL),  # a big machine stops at the ceiling
])
def test_the_default_fits_the_available_memory(monkeypatch, available_gib, expected):
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=available_gib * GIB))
    assert default_parallel(reserve_gib=2.0) == expected


def test_a_config_without_parallel_takes_the_default_and_a_given_one_is_kept(monkeypatch):
    from glider.clients.evaluate import EvalConfig
    from glider.clients.protocols import load_plan

    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=8.0 * GIB))
    plan = load_plan("quick")
    assert EvalConfig(plan=plan).parallel == int((8.0 - 2.0) / ENV_RESIDENT_GIB)
    assert EvalConfig(plan=plan, parallel=3).parallel == 3


def test_an_evaluations_step_timeout_reaches_its_client():
    """A slow backbone needs longer than the SDK's 60 s a step; the evaluation's timeout is the client's."""
    import socket
    import time

    from glider.clients.evaluate import EvalConfig
    from glider.clients.play import make_client
    from glider.clients.protocols import load_plan
    from glider.clients.sdk import DEFAULT_TIMEOUT_S

    assert EvalConfig(plan=load_plan("quick"), parallel=1, timeout=600.0).timeout == 600.0
    assert make_client("grpc", "127.0.0.1:1", timeout=600.0).timeout == 600.0
    assert make_client("grpc", "127.0.0.1:1", timeout=None).timeout == DEFAULT_TIMEOUT_S  # an EvalConfig's default
    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        client = make_client("rest", f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        started = time.monotonic()
        assert client.ready() is None  # the read timed out (ready() reports a transport error as not ready)
        assert 0.4 < time.monotonic() - started < 5  # after the half second asked for, not the SDK's 60
