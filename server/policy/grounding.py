"""Grounded actions: the environment's admissible commands, and the one the executor's model prefers.

An application may send the commands its environment admits now (``valid_actions``).  The executor
still generates freely; then

* a generation that is one of the commands is used as is (the list's entry, byte for byte);
* otherwise the commands most similar to the generation (at most ``grounding_candidates``) go to the
  executor's own model, which chooses among their continuations ``" <command>;"`` (flat:
  ``" <command>\\n"``) after the very prompt the generation answered — by their log-likelihood
  (``grounding_method=score``) or by greedy decoding constrained to them (``constrained``).

Matching is exact after one normalisation (strip, collapse whitespace, case-fold) applied the same
way to the generation and to the list.  The completion marker (``; true``) stays the model's own:
grounding chooses a command, never whether the subgoal is done.

Commands an operator declares *protected* (``grounding_protected``: prefixes such as ScienceWorld's
``focus on``, which ends the episode when aimed at the wrong object) are sent only when the model
generated them: grounding never chooses one while the list holds anything else.  Measured on a ScienceWorld evaluation, 318 of 393
grounded episodes ended on a ``focus on`` that grounding, not the model, had chosen.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from glider.server.policy.prompts import STOP, sanitize

#: the executor's model choosing among continuations of one prompt: (prompt, adapter name, continuations)
#: -> (index of the continuation it prefers, the adapter version that chose)
ChooseFn = Callable[[str, str, Sequence[str]], Awaitable[tuple[int, str | None]]]


def normalize(text: str) -> str:
    """The one form both sides are compared in: stripped, whitespace collapsed, case-folded.

    ``str.split()`` splits on exactly the characters ``\\s`` matches (checked over every code point)
    and is 3-4× faster than the regular expression over ScienceWorld's ~1,700 commands a step."""
    return " ".join(text.split()).casefold()


class ActionSpace:
    """An episode step's admissible commands, looked up by their normalised form.

    Duplicates (after normalisation) are harmless: the first entry stands for them all (a generation
    equal to a later one byte for byte is that one).  The
    normalised index is built on the first miss: a generation that is an entry byte for byte (a
    trained executor's usual case) costs one set lookup, not a pass over thousands of commands.
    """

    def __init__(self, commands: Sequence[str]):
        self.commands = commands
        self._verbatim = frozenset(commands)
        self._by_key: dict[str, str] | None = None

    @property
    def by_key(self) -> dict[str, str]:
        if self._by_key is None:
            self._by_key = {}
            for command in self.commands:
                key = normalize(command)
                if key:
                    self._by_key.setdefault(key, command)
        return self._by_key

    @property
    def keys(self) -> list[str]:
        return list(self.by_key)

    def __len__(self) -> int:
        return len(self.by_key)

    def __bool__(self) -> bool:  # without building the index: any entry that is not blank
        return any(not c.isspace() and c for c in self.commands)

    def match(self, text: str | None) -> str | None:
        """The list's entry equal to ``text``: byte for byte, else after normalisation (the first
        entry of that form), else None."""
        if text is None:
            return None
        if text in self._verbatim and text.strip():
            return text
        return self.by_key.get(normalize(text))

    def nearest(self, text: str, limit: int, exclude: str | None = None,
                protected: Sequence[str] = ()) -> list[str]:
        """At most ``limit`` entries, most similar to ``text`` first (the list's order breaks ties);
        ``exclude`` (a command the guards refuse) and the commands under a ``protected`` prefix (in
        normalised form) are left out."""
        from rapidfuzz import fuzz, process

        banned = normalize(exclude) if exclude else None
        keys = [k for k in self.keys if k != banned]
        if protected:
            keys = list(itertools.filterfalse(protection(protected), keys))
        if len(keys) <= limit:
            return [self.by_key[k] for k in keys]
        # whole-string similarity (normalised Indel): WRatio's partial matching preferred long commands
        # that merely contain the generation's words ("connect door to workshop to greenhouse" for "go to
        # workshop"); on 122 inadmissible generations of a ScienceWorld evaluation the preselection held
        # a command ending in the generation's object 85 times with this scorer, 59 with WRatio
        best = process.extract(normalize(text), keys, scorer=fuzz.ratio, limit=limit)
        # extract orders by score; among equal scores keep the list's own order
        best.sort(key=lambda hit: (-hit[1], hit[2]))
        return [self.by_key[key] for key, _, _ in best]


def protected_prefixes(prefixes: Sequence[str]) -> tuple[str, ...]:
    """Settings' protected command prefixes in the form ``nearest`` compares (blank ones dropped)."""
    return tuple(key for key in map(normalize, prefixes) if key)


def protection(prefixes: Sequence[str]) -> Callable[[str], bool]:
    """Whether a normalised command is one of the normalised ``prefixes`` or starts with one of them as
    whole words (one ``str.startswith`` over a tuple: thousands of commands a grounded step)."""
    exact = frozenset(prefixes)
    starts = tuple(p + " " for p in exact)
    return lambda key: key in exact or key.startswith(starts)



def continuation(command: str, role_is_flat: bool) -> str:
    """What the model would generate to choose ``command``, up to where the command ends: the
    executor's ``" <command>;"`` (the marker after it is the model's own), the flat ``" <command>\\n"``."""
    return f" {sanitize(command)}{STOP if role_is_flat else ';'}"  # a command cannot forge prompt lines


def deciding_prefixes(options: Sequence[str]) -> list[str | None]:
    """Per option, its shortest prefix that no other option contains anywhere (None: there is none).

    Greedy decoding constrained to the options has chosen once it has written one of these: the rest
    of that option is forced, one decode step per token for nothing.  So they are the request's stop
    strings, and the one that stops it names the choice.  Contained *anywhere*, not just at the start,
    because stop strings match anywhere in the text: a prefix of one option inside another option
    would stop that other option's generation and name the wrong one."""
    out: list[str | None] = []
    for i, option in enumerate(options):
        others = [o for j, o in enumerate(options) if j != i]
        # a prefix no longer than the longest common prefix with another option is inside that option
        shared = max((len(os.path.commonprefix([option, o])) for o in others), default=0)
        out.append(next((option[:m] for m in range(shared + 1, len(option))
                         if not any(option[:m] in o for o in others)), None))
    return out


def chosen_option(options: Sequence[str], deciding: Sequence[str | None], text: str,
                  stop_reason: str | None) -> int:
    """Which option a constrained generation chose: the one it wrote whole, the one whose deciding
    prefix stopped it, else the first (the most similar) whose start it wrote (cut off by max_tokens)."""
    if text in options:
        return options.index(text)
    if stop_reason is not None and stop_reason in deciding:
        return deciding.index(stop_reason)
    return next((i for i, o in enumerate(options) if text and o.startswith(text)), 0)


@dataclass(frozen=True)
class Grounding:
    """What grounding did at one step."""

    action: str  # the command sent to the environment: a list entry
    grounded: bool  # chosen among the list by the model's scores (the generation was not in it)
    candidates: int = 0  # how many commands were scored
    adapter_version: str | None = None


async def ground(space: ActionSpace, generated: str | None, *, query: str, prompt: str, adapter: str,
                 flat: bool, limit: int, choose: ChooseFn, banned: str | None = None,
                 protected: Sequence[str] = ()) -> Grounding:
    """The command to send: the generation if admissible, else the best-scored similar command
    other than ``banned`` (the guards' useless repeat) and not under a ``protected`` prefix. When the
    list holds nothing else, the useless repeat comes before a protected command (it wastes a step;
    the other may end the episode), and a protected command before nothing."""
    entry = space.match(generated)
    if entry is not None and (banned is None or normalize(entry) != normalize(banned)):
        return Grounding(action=entry, grounded=False)
    text, protected = generated or query, protected_prefixes(protected)
    candidates = (space.nearest(text, limit, exclude=banned, protected=protected)
                  or space.nearest(text, limit, protected=protected)
                  or space.nearest(text, limit, exclude=banned)
                  or space.nearest(text, limit))
    if len(candidates) == 1:
        return Grounding(action=candidates[0], grounded=True, candidates=1)
    best, version = await choose(prompt, adapter, [continuation(c, flat) for c in candidates])
    return Grounding(action=candidates[best], grounded=True, candidates=len(candidates), adapter_version=version)


def best_scored(scores: Sequence[float]) -> int:
    """The highest score's index (the earliest, most similar candidate on a tie)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))
