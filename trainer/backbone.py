"""Build the embedded tiny backbone: a BPE tokenizer trained on ScienceWorld text and a small Llama.

No network: the text comes from the real ScienceWorld environment (task
descriptions, observations along gold paths, room descriptions, inventories
and valid actions of train variations), formatted with the server's own prompt
functions so the tokenizer knows the prompt structure.  The model is a
randomly initialised ``LlamaForCausalLM`` saved as an ordinary HF directory,
so vLLM, transformers and peft load it unchanged.  Everything is determined
by the seed and the corpus settings; the corpus is cached next to the model.

Default size (``BackboneConfig()``): 4 layers, hidden 256, 4 heads of 64,
MLP 768, vocabulary 4,096, context 2,048 — about 5.3 M parameters (21 MB in
float32).  The pretrained knowledge a real backbone brings is replaced by the
SFT stage's "backbone warm-up" on collected environment text (trainer, later).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

from glider.server.policy.prompts import (
    SPECIAL_TOKENS,
    executor_prompt,
    flat_prompt,
    format_executor_target,
    planner_prompt,
)
from glider.server.policy.state import Segment, Turn

log = logging.getLogger(__name__)

BUILD_INFO = "glider_backbone.json"


@dataclass
class BackboneConfig:
    seed: int = 0
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    max_position: int = 2048
    # corpus: the first `variations_per_task` train variations of every task family
    variations_per_task: int = 1
    max_gold_steps: int = 60
    tasks: list[str] = field(default_factory=list)  # empty = all task families
    workers: int = 2


# --- corpus --------------------------------------------------------------------
def _collect_task(args: tuple[str, list[int], int]) -> list[str]:
    """Text of one task family's gold paths (runs in a worker process with its own JVM)."""
    from glider.clients.envs.scienceworld import ObservationFormatter, open_env

    task, variations, max_steps = args
    env = open_env(step_limit=max_steps + 5)
    lines: list[str] = []
    try:
        for var in variations:
            env.load(task, var, "", generateGoldPath=True)
            obs, info = env.reset()
            observe = ObservationFormatter()
            desc = env.get_task_description()
            gold = env.get_gold_action_sequence()[:max_steps]
            valid = sorted(env.get_valid_action_object_combinations())
            lines.append(desc)
            lines.extend(valid[:200])
            observation = observe(obs, info)
            turns: list[Turn] = []
            for action in gold:
                turns.append(Turn(observation=observation, action=action, done=False))
                obs, _, done, info = env.step(action)
                observation = observe(obs, info)
                if done:
                    break
            if turns:
                turns[-1] = Turn(observation=turns[-1].observation, action=turns[-1].action, done=True)
            # the three prompt formats around the gold path, so the structure tokenises well
            lines.append(flat_prompt(desc, turns, observation) + " " + gold[0])
            lines.append(executor_prompt(desc, gold[0], turns, observation) + " "
                         + format_executor_target(gold[-1], True))
            seg = Segment(subgoal=" then ".join(gold[:2]), start_observation=turns[0].observation,
                          turns=turns[:3])
            lines.append(planner_prompt(desc, [seg], observation) + " " + " ".join(gold[2:5]))
    finally:
        env.close()
    return lines


def collect_corpus(cfg: BackboneConfig, cache_dir: Path) -> list[str]:
    """Corpus lines from ScienceWorld, cached by the settings that determine them."""
    key = json.dumps({"tasks": cfg.tasks, "vars": cfg.variations_per_task,
                      "steps": cfg.max_gold_steps, "format": 2}, sort_keys=True)
    cache = Path(cache_dir) / f"corpus-{hashlib.sha256(key.encode()).hexdigest()[:12]}.jsonl"
    if cache.is_file():
        return [json.loads(line) for line in cache.read_text().splitlines()]
    from glider.clients.envs.scienceworld import open_env
    from tqdm import tqdm

    env = open_env()
    try:
        tasks = cfg.tasks or list(env.get_task_names())
        jobs = []
        for task in tasks:
            env.load(task, 0)
            train = list(env.get_variations_train()) or list(env.get_variations_dev())
            jobs.append((task, train[: cfg.variations_per_task], cfg.max_gold_steps))
    finally:
        env.close()
    lines: list[str] = []
    with ProcessPoolExecutor(max_workers=max(1, cfg.workers), mp_context=get_context("spawn")) as pool:
        # map keeps task order, so the corpus (and the tokenizer) is deterministic
        for chunk in tqdm(pool.map(_collect_task, jobs), total=len(jobs), desc="corpus", unit="task"):
            lines.extend(chunk)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    os.replace(tmp, cache)
    return lines


# --- tokenizer -----------------------------------------------------------------
def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    # newline is its own token: it ends every generated line (the stop string)
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])


def corpus_words(lines: list[str]) -> list[str]:
    """The sorted set of pre-tokenised words of the corpus (as original text)."""
    pre = _pre_tokenizer()
    words = set()
    for line in lines:
        for _, (start, end) in pre.pre_tokenize_str(line):
            words.add(line[start:end])
    return sorted(words)


def train_tokenizer(lines: list[str], vocab_size: int):
    """BPE over the corpus's *set* of words, each counted once.

    ScienceWorld's simulator has unseeded randomness (bees fly, plants grow),
    so the same gold paths give slightly different observations from run to
    run: word counts drift, the set of words does not.  Training on the sorted
    word set makes the tokenizer a function of the seed and the corpus settings.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_words(lines), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


# --- model ---------------------------------------------------------------------
def build_model(cfg: BackboneConfig, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def build_backbone(out: Path, cfg: BackboneConfig | None = None, *, cache_dir: Path | None = None) -> Path:
    """Build tokenizer + model into ``out`` (an ordinary HF model directory)."""
    cfg = cfg or BackboneConfig()
    out = Path(out)
    cache_dir = Path(cache_dir) if cache_dir else out.parent / "cache"
    lines = collect_corpus(cfg, cache_dir)
    tokenizer = train_tokenizer(lines, cfg.vocab_size)
    model = build_model(cfg, tokenizer)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    n_params = sum(p.numel() for p in model.parameters())
    info = {"config": asdict(cfg), "parameters": n_params, "corpus_lines": len(lines),
            "words_sha256": hashlib.sha256("\n".join(corpus_words(lines)).encode()).hexdigest()}
    (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    log.info("backbone: %d parameters, vocabulary %d -> %s", n_params, len(tokenizer), out)
    return out


def is_backbone(path: Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


def is_embedded(path: Path) -> bool:
    """Whether ``path`` is the embedded backbone (built here from its corpus), the only one the recipes
    warm up: a pretrained model (imported, or any HF directory a user names) is a language model already,
    and a full fine-tune of it would rewrite weights its users chose."""
    info = Path(path) / BUILD_INFO
    if not info.is_file():
        return False
    record = json.loads(info.read_text())
    return "words_sha256" in record and "imported" not in record
