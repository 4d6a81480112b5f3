"""Evaluation protocols: which episodes an evaluation plays and how it scores them.

Every agent in a comparison must play the same episodes, so a protocol is a
**plan file** committed in the repository (``clients/plans/``): the list of
(split, task family, variation) episodes plus the scoring rule.  Plans are
built once from the papers' own sources (``clients/plans/sources/``, copied
from GLIDER's and ETO's repositories) and never drawn again at run time.

=========  =======================================================================================
protocol   what
=========  =======================================================================================
glider     GLIDER's evaluator: the 24 families with non-zero counts in ``glider_task_nums.csv``,
           that many variations per family drawn (seed 0) from the dev (*seen*) and test
           (*unseen*) variations — 195 / 211 episodes; no simplification; 50-step cap;
           score = final score clipped at 0; mean per family, then over families (macro).
eto        ETO's: its 194 / 211 ``[task, variation]`` lists; ``simplificationStr="easy"``;
           per-family step caps (10–120); score = best score reached; mean over episodes (micro).
quick      one episode per family and split of the glider plan (48 episodes), glider scoring:
           the demo's table.
quick-ci   three families × two splits of the glider plan with a 10-step cap: the CI smoke run.
tune       4 episodes per family that no reported score and no recipe's training data touch: dev
           variations outside the glider plan, then train variations outside the full recipe's
           1,284, then (for the 9 small families whose every variation the paper uses) train
           variations the recipes hold out of training for early stopping (split ``train``);
           glider scoring.  Settings (guards, sampling, recipes) are chosen here, never on the plan
           whose dev half is the reported *seen* score.
=========  =======================================================================================

``custom`` plans (``Plan.draw``) pick N variations per family from a seed, for
other environments and ad-hoc runs; they are never a reported yardstick.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

PLANS_DIR = Path(__file__).resolve().parent / "plans"
SOURCES_DIR = PLANS_DIR / "sources"

#: the paper's split names and the ScienceWorld splits they mean ("train" only in the tuning plan)
SPLITS = {"seen": "dev", "unseen": "test", "train": "train"}
#: protocols with a committed plan file (quick and quick-ci are cut from glider's)
FILED = ("glider", "eto", "tune")
PROTOCOLS = ("glider", "eto", "quick", "quick-ci", "tune")
#: episodes per family in the tuning plan (fewer where the glider plan left fewer dev variations)
TUNE_PER_TASK = 4
#: the families of the CI smoke plan: short gold paths, scores reachable in a few steps
QUICK_CI_TASKS = ("find-plant", "use-thermometer", "lifespan-longest-lived")


@dataclass(frozen=True, order=True)
class PlannedEpisode:
    split: str  # seen | unseen
    task: str  # the environment's task family name
    variation: int  # ScienceWorld: the variation number; TextWorld: the game's seed offset in its split

    @property
    def key(self) -> str:
        return f"{self.split}/{self.task}/{self.variation}"


@dataclass
class Plan:
    protocol: str
    episodes: list[PlannedEpisode]
    scoring: str = "final"  # final: the last score, clipped at 0 | best: the highest score reached
    aggregate: str = "macro"  # macro: mean per family, then over families | micro: mean over episodes
    simplification: str = ""  # ScienceWorld's simplificationStr
    max_steps: dict[str, int] = field(default_factory=lambda: {"*": 50})  # per family, "*" = the rest
    env: str = "scienceworld"
    seed: int | None = None
    source: str = ""

    def __post_init__(self):
        if self.scoring not in ("final", "best"):
            raise ValueError(f"scoring is final or best, not {self.scoring!r}")
        if self.aggregate not in ("macro", "micro"):
            raise ValueError(f"aggregate is macro or micro, not {self.aggregate!r}")
        keys = [e.key for e in self.episodes]
        if len(set(keys)) != len(keys):
            raise ValueError(f"plan {self.protocol!r} lists an episode twice")

    def steps_for(self, task: str) -> int:
        return self.max_steps.get(task, self.max_steps["*"])

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if any(e.split == s for e in self.episodes)]

    def counts(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for e in self.episodes:
            out[(e.split, e.task)] = out.get((e.split, e.task), 0) + 1
        return out

    def describe(self) -> str:
        sizes = " / ".join(f"{sum(1 for e in self.episodes if e.split == s)} {s}" for s in self.splits)
        caps = sorted(set(self.max_steps.values()))
        cap = f"{caps[0]}" if len(caps) == 1 else f"{caps[0]}–{caps[-1]}"
        return (f"protocol {self.protocol}: {sizes} episodes, {len({e.task for e in self.episodes})} families, "
                f"{cap}-step cap, {self.scoring} score, {self.aggregate} mean"
                + (f", simplification {self.simplification!r}" if self.simplification else ""))

    # -- files ------------------------------------------------------------------------
    def to_json(self) -> str:
        body = {k: v for k, v in asdict(self).items() if k != "episodes"}
        lines = ",\n".join("    " + json.dumps([e.split, e.task, e.variation]) for e in self.episodes)
        head = json.dumps(body, indent=2)[:-2]  # the metadata, then one episode a line (readable diffs)
        return f'{head},\n  "episodes": [\n{lines}\n  ]\n}}\n'

    @classmethod
    def from_json(cls, text: str) -> Plan:
        body = json.loads(text)
        episodes = [PlannedEpisode(split, task, int(variation)) for split, task, variation in body.pop("episodes")]
        return cls(episodes=episodes, **body)

    def cut(self, protocol: str, tasks: Sequence[str] | None = None, per_cell: int = 1,
            max_steps: int | None = None) -> Plan:
        """A smaller plan of this one's first ``per_cell`` episodes per (split, family), same scoring."""
        seen: dict[tuple[str, str], int] = {}
        kept = []
        for e in self.episodes:
            if tasks is not None and e.task not in tasks:
                continue
            n = seen.get((e.split, e.task), 0)
            if n < per_cell:
                kept.append(e)
            seen[(e.split, e.task)] = n + 1
        caps = {"*": max_steps} if max_steps is not None else dict(self.max_steps)
        return Plan(protocol=protocol, episodes=kept, scoring=self.scoring, aggregate=self.aggregate,
                    simplification=self.simplification, max_steps=caps, env=self.env, seed=self.seed,
                    source=f"cut from the {self.protocol} plan")

    def only(self, splits: Sequence[str]) -> Plan:
        """This plan's episodes of ``splits`` alone, same scoring, named ``<protocol>-<split>...``: a
        comparison that needs one split (e.g. unseen) costs that split's episodes, not the whole plan's."""
        unknown = [s for s in splits if s not in self.splits]
        if unknown or not splits:
            raise ValueError(f"plan {self.protocol!r} has the splits {self.splits}, not {list(splits)}")
        if set(splits) == set(self.splits):
            return self
        return replace(self, protocol="-".join([self.protocol, *(s for s in SPLITS if s in splits)]),
                       episodes=[e for e in self.episodes if e.split in splits],
                       source=f"the {'/'.join(splits)} episodes of the {self.protocol} plan")

    @classmethod
    def draw(cls, tasks: Sequence[str], counts: Mapping[tuple[str, str], Sequence[int]], per_task: int,
             seed: int, splits: Sequence[str] = ("seen", "unseen"), *, protocol: str = "custom",
             env: str = "scienceworld", max_steps: int = 50) -> Plan:
        """``per_task`` variations per family and split, drawn from ``seed`` out of ``counts[(split, task)]``
        (the split's variation numbers), sorted; glider scoring."""
        episodes = []
        for split in splits:
            for task in tasks:
                pool = list(counts[(split, task)])
                k = min(per_task, len(pool))
                picked = random.Random(f"{seed}/{split}/{task}").sample(pool, k)
                episodes += [PlannedEpisode(split, task, v) for v in sorted(picked)]
        return cls(protocol=protocol, episodes=episodes, env=env, seed=seed, max_steps={"*": max_steps})


# --- the papers' sources ---------------------------------------------------------------
def glider_counts(path: Path = SOURCES_DIR / "glider_task_nums.csv") -> dict[str, dict[str, int]]:
    """GLIDER's ``task_nums.csv``: family -> {"train", "seen", "unseen"} episode counts (non-zero families)."""
    out = {}
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            counts = {"train": int(row["train"]), "seen": int(row["dev"]), "unseen": int(row["test"])}
            if counts["seen"] or counts["unseen"]:
                out[row["task-name"]] = counts
    return out


def eto_task_name(name: str) -> str:
    """ETO's family names to ScienceWorld's: ``task-10-measure-melting-point-(known-substance)`` ->
    ``measure-melting-point-known-substance``."""
    return re.sub(r"^task-\d+[a-z]?-", "", name).replace("(", "").replace(")", "")


def build_glider_plan(variations: Mapping[tuple[str, str], Sequence[int]], seed: int = 0) -> Plan:
    """GLIDER's protocol: ``glider_counts()`` episodes per family drawn from each split's variations."""
    counts = glider_counts()
    episodes = []
    for split in ("seen", "unseen"):
        for task, n in counts.items():
            pool = list(variations[(split, task)])
            if n[split] > len(pool):
                raise ValueError(f"{task} has {len(pool)} {split} variations, the protocol wants {n[split]}")
            picked = random.Random(f"glider/{seed}/{split}/{task}").sample(pool, n[split])
            episodes += [PlannedEpisode(split, task, v) for v in sorted(picked)]
    return Plan(protocol="glider", episodes=episodes, seed=seed,
                source="GLIDER env/task_nums.csv counts; variations drawn from ScienceWorld 1.2.3's dev/test lists")


def build_tune_plan(variations: Mapping[tuple[str, str], Sequence[int]], glider: Plan,
                    collected: Mapping[str, Sequence[int]], held_out: Mapping[str, Iterable[int]],
                    per_task: int = TUNE_PER_TASK, seed: int = 0) -> Plan:
    """``per_task`` episodes per family to choose settings on: dev variations the glider plan does not
    play, then train variations the full data recipe does not collect (``variations`` needs the
    ``seen`` and ``train`` splits), then train variations the recipes hold out for early stopping.
    ``collected`` and ``held_out`` (per family) come from the trainer
    (``glider.trainer.pipeline.full_recipe_variations``)."""
    taken = {(e.task, e.variation) for e in glider.episodes if e.split == "seen"}
    episodes = []
    for task in glider_counts():
        rng = random.Random(f"tune/{seed}/{task}")
        dev = [v for v in variations[("seen", task)] if (task, v) not in taken]
        picked = sorted(rng.sample(dev, min(per_task, len(dev))))
        episodes += [PlannedEpisode("seen", task, v) for v in picked]
        kept_out = set(held_out.get(task, ()))
        for pool in ([v for v in variations[("train", task)] if v not in set(collected.get(task, ()))],
                     [v for v in collected.get(task, ()) if v in kept_out]):
            more = sorted(rng.sample(pool, min(per_task - len(picked), len(pool))))
            episodes += [PlannedEpisode("train", task, v) for v in more]
            picked += more
    return Plan(protocol="tune", episodes=sorted(episodes), seed=seed,
                source="dev variations outside the glider plan, then train variations outside the full "
                       "recipe's collection, then train variations held out of training (ScienceWorld "
                       "1.2.3); glider scoring")


def build_eto_plan() -> Plan:
    """ETO's protocol from its published lists."""
    episodes = []
    for split, name in (("seen", "eto_dev_indices.json"), ("unseen", "eto_test_indices.json")):
        pairs = json.loads((SOURCES_DIR / name).read_text())
        episodes += sorted(PlannedEpisode(split, eto_task_name(task), int(v)) for task, v in pairs)
    caps = {eto_task_name(t): int(n) for t, n in json.loads((SOURCES_DIR / "eto_max_steps.json").read_text()).items()}
    caps["*"] = max(caps.values())
    return Plan(protocol="eto", episodes=episodes, scoring="best", aggregate="micro", simplification="easy",
                max_steps=caps, source="ETO eval_agent/data/sciworld dev/test_indices.json and max_steps.json")


def scienceworld_variations(tasks: Iterable[str], splits: Sequence[str] = ("seen", "unseen")
                            ) -> dict[tuple[str, str], list[int]]:
    """Each family's variation numbers per split, from a ScienceWorld JVM."""
    from glider.clients.envs.scienceworld import SPLITS as ENV_SPLITS
    from glider.clients.envs.scienceworld import open_env

    world = open_env()
    try:
        out = {}
        for task in tasks:
            world.load(task, 0)
            for split in splits:
                out[(split, task)] = list(getattr(world, ENV_SPLITS[split])())
        return out
    finally:
        world.close()


# --- loading ---------------------------------------------------------------------------
def plan_path(protocol: str) -> Path:
    return PLANS_DIR / f"{protocol}.json"


def load_plan(spec: str | Path) -> Plan:
    """A protocol by name (glider | eto | quick | quick-ci | tune) or a plan file's path."""
    if str(spec) in FILED:
        return Plan.from_json(plan_path(str(spec)).read_text())
    if spec == "quick":
        return load_plan("glider").cut("quick")
    if spec == "quick-ci":
        return load_plan("glider").cut("quick-ci", tasks=QUICK_CI_TASKS, max_steps=10)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"unknown protocol {spec!r}: {' | '.join(PROTOCOLS)} or a plan file")
    return Plan.from_json(path.read_text())
