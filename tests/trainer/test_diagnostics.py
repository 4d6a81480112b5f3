"""The executor diagnostics: teacher-forced marker precision/recall, and completion replayed in ScienceWorld."""

from __future__ import annotations

import pytest
from glider.server.policy.controller import HierarchyConfig, PolicyGeneration
from glider.trainer.data.hierarchy import annotate
from glider.trainer.diagnostics import (
    LocalGenerator,
    MarkerMetrics,
    SegmentCompletion,
    completion_share,
    marker_metrics,
)
from glider.trainer.sequences import executor_pairs


class Oracle:
    """Answers each executor prompt with the gold segment's next action: the subgoal line names the
    segment, the Action lines say how far into it the prompt is.  ``done`` decides the marker."""

    def __init__(self, ep, done=lambda i, n: i == n - 1):
        self.by_subgoal = {}
        for seg in ep.segments:
            self.by_subgoal.setdefault(seg.subgoal, [s.action for s in seg.steps(ep.traj)])
        self.done = done

    def complete(self, prompts, max_tokens):
        out = []
        for prompt in prompts:
            subgoal = next(line[len("Subgoal: "):] for line in prompt.split("\n") if line.startswith("Subgoal: "))
            actions = self.by_subgoal[subgoal]
            i = min(prompt.count("\nAction:") - 1, len(actions) - 1)
            out.append(f" {actions[i]}; {'true' if self.done(i, len(actions)) else 'false'}")
        return out

    async def __call__(self, requests):
        return [PolicyGeneration(text=t) for t in self.complete([r.prompt for r in requests], 24)]


def test_marker_metrics_against_an_oracle_and_a_model(gold_trajectory, tiny_model_dir):
    ep = annotate(gold_trajectory)
    cfg = HierarchyConfig()
    perfect = marker_metrics(Oracle(ep), [ep], cfg)
    assert perfect == MarkerMetrics(pairs=10, labelled_true=5, precision=1.0, recall=1.0, action_accuracy=1.0)
    always = marker_metrics(Oracle(ep, done=lambda i, n: True), [ep], cfg)
    assert always.precision == pytest.approx(5 / 10) and always.recall == 1.0
    never = marker_metrics(Oracle(ep, done=lambda i, n: False), [ep], cfg)
    assert never.recall == 0.0
    # the real thing on a real (tiny) model: numbers, within range, from generated text
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gen = LocalGenerator(AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(
        tiny_model_dir))
    texts = gen.complete([p.prompt for p in executor_pairs(ep, cfg)[0]], 8)
    assert len(texts) == 2 and all("\n" not in t for t in texts)
    real = marker_metrics(gen, [ep], cfg)
    assert real.pairs == 10 and 0.0 <= real.action_accuracy <= 1.0


def test_completion_replays_the_gold_path_in_scienceworld(gold_trajectory):
    ep = annotate(gold_trajectory)
    cfg = HierarchyConfig()
    shares = completion_share(Oracle(ep), [ep], cfg, limit=5)
    assert shares == SegmentCompletion(segments=5, reached=1.0, completed=1.0)
    # an executor that never says done reaches the goals but completes none
    lazy = completion_share(Oracle(ep, done=lambda i, n: False), [ep], cfg, limit=5)
    assert lazy.reached == 1.0 and lazy.completed == 0.0
