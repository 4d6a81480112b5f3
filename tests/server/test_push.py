"""Publish notices on the replicas' Redis channel: what one carries, and what is not one."""

from __future__ import annotations

import pytest
from glider.server.adapters.push import PublishNotice


def test_a_notice_round_trips_and_anything_else_is_refused():
    for notice in (PublishNotice("default", ("planner", "executor"), "a1"), PublishNotice("textworld", None, "b2")):
        assert PublishNotice.decode(notice.encode()) == notice
    for raw in (b"", b"not json", b"[1, 2]", b'{"adapters": ["planner"]}', b'{"profile": 3}',
                b'{"profile": "default", "adapters": "planner"}', b'{"profile": "default", "adapters": [1]}'):
        with pytest.raises(ValueError):
            PublishNotice.decode(raw)
