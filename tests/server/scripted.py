"""A scripted generator: the model's text under the test's control (unit tests of the state machine only)."""

from __future__ import annotations

from collections import defaultdict, deque

from glider.server.policy.controller import PolicyGeneration, PolicyRequest


class Script:
    """Replies per prompt role from queues; records every request it was given."""

    def __init__(self, **replies: list[str]):
        self.replies = {role: deque(texts) for role, texts in replies.items()}
        self.requests: list[PolicyRequest] = []
        self.counts: dict[str, int] = defaultdict(int)

    async def __call__(self, requests):
        out = []
        for r in requests:
            self.requests.append(r)
            self.counts[r.role.value] += 1
            queue = self.replies.get(r.role.value)
            if not queue:
                raise AssertionError(f"no scripted reply left for {r.role.value}")
            text = queue.popleft()
            out.append(PolicyGeneration(text=text, adapter_version=f"{r.adapter}-v1",
                                        completion_tokens=len(text.split())))
        return out
