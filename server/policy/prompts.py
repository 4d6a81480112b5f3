"""Prompt formats of the planner, the executor and the flat baseline.

The formats are line-oriented and append-only so that a whole episode (planner)
or a whole subgoal segment (executor) is one growing sequence: training sees
every target of a sequence at once, and vLLM's prefix cache reuses the earlier
turns at serve time.

    <|planner|>                       <|executor|>                 <|flat|>
    Task: boil water ...              Task: boil water ...         Task: ...
    Obs: This room is ...             Subgoal: go to the kitchen   Obs: ...
    Subgoal: go to the kitchen        Obs: This room is ...        Action: open door
    Did: open door to kitchen, ...    Action: open door; false     Obs: ...
    Obs: This room is the kitchen     Obs: The door is open.       Action:
    Subgoal:                          Action:

The model completes the last line; generation stops at the newline.  The
executor's target is ``<action>; true|false`` — ``true`` ends the subgoal (the
authors' format, learned from D^l where a segment's last action is marked true).

Observations, tasks and actions are untrusted text.  ``sanitize`` flattens them
to one line and removes role markers and special tokens, so no observation can
open a new ``Action:``/``Subgoal:`` line or switch the role header.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

from glider.server.policy.modes import Role
from glider.server.policy.state import Segment, Turn

#: role markers: the first line of each prompt; special tokens in the embedded tokenizer
ROLE_MARKERS = {Role.planner: "<|planner|>", Role.executor: "<|executor|>", Role.flat: "<|flat|>"}
#: special tokens of the embedded backbone (role markers + sequence boundaries)
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>", *ROLE_MARKERS.values()]

STOP = "\n"
DONE_TRUE, DONE_FALSE = "true", "false"

# anything that looks like a chat/role/special token: <|...|>, <s>, </s>, [INST] ...
_SPECIAL_RE = re.compile(r"<\|[^|>]{0,40}\|>|</?s>|\[/?INST\]|<<SYS>>|<</SYS>>")
_SPACE_RE = re.compile(r"\s+")
# control characters and U+FFFD (what undecodable bytes become): a tiny model can generate
# them, and an environment's parser may not survive them (TextWorld's frotz segfaulted on \x11)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")
# a line-start keyword cannot be forged because text never contains a newline after
# sanitising; the completion marker is parsed from generated text only.


def sanitize(text: str, limit: int | None = None, extra_tokens: Iterable[str] = ()) -> str:
    """One line of untrusted text, without role markers or special tokens, at most ``limit`` chars."""
    if not extra_tokens:
        return _sanitize_cached(text, limit)
    for token in extra_tokens:
        if token:
            text = text.replace(token, " ")
    return _sanitize(text, limit)


# A prompt re-reads the episode's recent turns at every step (and the trainer the same turns in every
# sequence they appear in): each text is cleaned once, not once per prompt.
@functools.lru_cache(maxsize=16384)
def _sanitize_cached(text: str, limit: int | None) -> str:
    return _sanitize(text, limit)


def _sanitize(text: str, limit: int | None) -> str:
    text = _SPECIAL_RE.sub(" ", text)
    text = _CONTROL_RE.sub(" ", text)
    text = _SPACE_RE.sub(" ", text).strip()
    if limit is not None and len(text) > limit:
        text = text[:limit].rstrip() + " …"
    return text


def planner_prompt(
    task: str, finished: Sequence[Segment], observation: str, *, obs_limit: int | None = None
) -> str:
    """The planner sees the task, each finished subgoal with what was done, and the observation."""
    lines = [ROLE_MARKERS[Role.planner], f"Task: {sanitize(task)}"]
    for seg in finished:
        lines.append(f"Obs: {sanitize(seg.start_observation, obs_limit)}")
        lines.append(f"Subgoal: {sanitize(seg.subgoal)}")
        lines.append("Did: " + ", ".join(sanitize(t.action) for t in seg.turns))
    lines.append(f"Obs: {sanitize(observation, obs_limit)}")
    lines.append("Subgoal:")
    return "\n".join(lines)


def executor_prompt(
    task: str, subgoal: str, turns: Sequence[Turn], observation: str, *, obs_limit: int | None = None
) -> str:
    """The executor sees the subgoal, its own recent (observation, action) turns and the observation."""
    lines = [ROLE_MARKERS[Role.executor], f"Task: {sanitize(task)}", f"Subgoal: {sanitize(subgoal)}"]
    for turn in turns:
        lines.append(f"Obs: {sanitize(turn.observation, obs_limit)}")
        lines.append(f"Action: {format_executor_target(turn.action, turn.done)}")
    lines.append(f"Obs: {sanitize(observation, obs_limit)}")
    lines.append("Action:")
    return "\n".join(lines)


#: the instruction a prompted (untrained) model reads first (``prompt_style="instruct"``)
INSTRUCTIONS = ("You are an agent in a text-based environment. Read the task and what you observe, then "
                "answer with the single next command that gets closer to finishing the task, on one line "
                "after \"Action:\". Commands are short, like \"look around\", \"open door to kitchen\", "
                "\"go to kitchen\", \"pick up thermometer\", \"focus on substance in metal pot\".")
#: ``prompt_style="react"``: the paper's prompted ReAct baseline, a thought in words before each command
REACT_INSTRUCTIONS = ("You are an agent in a text-based environment. Read the task and what you observe. At "
                      "every step, first think in one sentence about what to do next, after \"Thought:\", then "
                      "write the single next command on its own line, after \"Action:\". Commands are short, like "
                      "\"look around\", \"open door to kitchen\", \"go to kitchen\", \"pick up thermometer\", "
                      "\"focus on substance in metal pot\".")
#: a ReAct generation runs from its thought through its action line: it stops where the next observation
#: or thought would begin
REACT_STOP = ("\nObservation", "\nThought")
PROMPT_STYLES = ("glider", "instruct", "react")


def flat_prompt(
    task: str, turns: Sequence[Turn], observation: str, *, obs_limit: int | None = None, style: str = "glider"
) -> str:
    """The no-hierarchy baseline: task, recent (observation, action) turns, observation.

    ``style="instruct"`` is the format for a base model prompted without adapters (the prompted
    baseline of a pretrained backbone): an instruction in plain words instead of the role marker, and
    the words ``Observation`` spelled out; the model still completes the ``Action:`` line.
    ``style="react"`` is ReAct (Yao et al., 2023) as the paper prompts it: each turn carries the thought
    written before its action, and the model completes a ``Thought:`` line, then its ``Action:`` line
    (``parse_react``)."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style is one of {PROMPT_STYLES}, not {style!r}")
    plain = style != "glider"
    obs = "Observation" if plain else "Obs"
    head = {"glider": ROLE_MARKERS[Role.flat], "instruct": INSTRUCTIONS, "react": REACT_INSTRUCTIONS}[style]
    lines = [head, f"Task: {sanitize(task)}"]
    for turn in turns:
        lines.append(f"{obs}: {sanitize(turn.observation, obs_limit)}")
        if style == "react" and turn.thought:
            lines.append(f"Thought: {sanitize(turn.thought)}")
        lines.append(f"Action: {sanitize(turn.action)}")
    lines.append(f"{obs}: {sanitize(observation, obs_limit)}")
    lines.append("Thought:" if style == "react" else "Action:")
    return "\n".join(lines)


_REACT_ACTION_LINE_RE = re.compile(r"^[ \t]*Action[ \t]*:", re.IGNORECASE | re.MULTILINE)
_REACT_ACTION_ANYWHERE_RE = re.compile(r"\bAction[ \t]*:", re.IGNORECASE)
_THOUGHT_LABEL_RE = re.compile(r"^\s*Thought\s*:\s*", re.IGNORECASE)


def parse_react(text: str) -> tuple[str, str | None] | None:
    """A ReAct completion (``" <thought>\\nAction: <command>"``) as (action, thought or None); None when it
    holds no usable action (the thought ran out of tokens, or the model skipped the format).  The action is
    the first ``Action:`` line with a command on it; a model that writes ``<thought> Action: <command>`` on
    one line gets its last ``Action:`` read instead."""
    marks = list(_REACT_ACTION_LINE_RE.finditer(text)) or list(_REACT_ACTION_ANYWHERE_RE.finditer(text))[-1:]
    for mark in marks:
        action = parse_action(text[mark.end():].lstrip(" \t"))
        if action is not None:
            thought = sanitize(_THOUGHT_LABEL_RE.sub("", text[: mark.start()], count=1), _MAX_UTTERANCE)
            return action, thought or None
    return None


def format_executor_target(action: str, done: bool) -> str:
    return f"{sanitize(action)}; {DONE_TRUE if done else DONE_FALSE}"


_MARKER_RE = re.compile(r"^(?P<action>.*?)\s*;\s*(?P<done>true|false)\b", re.IGNORECASE)
_MAX_UTTERANCE = 200


def parse_action(text: str) -> str | None:
    """First line of generated text as an action, or None when nothing usable is there."""
    line = text.split(STOP, 1)[0]
    action = sanitize(line, _MAX_UTTERANCE).rstrip(";").strip()
    # an action needs at least one word character ("look around", "go to kitchen", "0")
    return action if re.search(r"\w", action) else None


def parse_executor_output(text: str) -> tuple[str | None, bool]:
    """Split ``"<action>; true|false"`` into (action, subgoal_done).

    A missing marker means "not done"; an empty or symbol-only action means
    the output is unusable (None), and the caller re-samples or falls back.
    """
    line = text.split(STOP, 1)[0].strip()
    match = _MARKER_RE.match(line)
    if match:
        return parse_action(match.group("action")), match.group("done").lower() == DONE_TRUE
    # a trailing ";" or "; tr" cut off by the token budget carries no decision
    return parse_action(line.split(";", 1)[0]), False


def parse_subgoal(text: str) -> str | None:
    """First line as a subgoal; an executor-style ``; true|false`` tail is not part of it."""
    return parse_executor_output(text)[0]
