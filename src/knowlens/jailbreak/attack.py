"""Optional white-box attack search: GCG suffix optimisation (Zou et al. 2023) via nanogcg.

    from knowlens.jailbreak.attack import gcg_prompts
    extra = gcg_prompts(handle, behaviors[:4], steps=250)      # GPU-scale work

Each behaviour gets a suffix optimised so the source model starts its answer with
"Sure, here is ..."; the resulting prompts join the attack pool of ``prompt_transfer``
(template id ``GCGopt-<source>``), so their transfer to other targets is measured like any
template's. Real attacks need hundreds of steps and a GPU; on CPU use a few steps (tests run
2 on a tiny model). Results are cached per (model, behaviour, settings), written atomically.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from knowlens._cache import atomic_write_json, cache_root, stable_hash
from knowlens.errors import KnowlensError

if TYPE_CHECKING:
    from knowlens.models import ModelHandle

__all__ = ["ATTACK_VERSION", "GCGSettings", "gcg_prompts"]

ATTACK_VERSION = "1"


@dataclass(frozen=True)
class GCGSettings:
    steps: int = 250
    search_width: int = 512
    topk: int = 256
    seed: int = 0
    optim_str_init: str = "x x x x x x x x x x x x x x x x x x x x"


def _target_string(behavior: str) -> str:
    return "Sure, here is " + behavior[:1].lower() + behavior[1:].rstrip(".")


def gcg_prompts(
    handle: ModelHandle, behaviors: list[Any], settings: GCGSettings | None = None
) -> list[Any]:
    """Optimise one GCG suffix per behaviour (``Prompt`` list, kind ``jailbreak``)."""
    try:
        import nanogcg
    except ImportError:
        raise KnowlensError(
            "GCG attack search needs nanogcg. Install with: pip install --no-deps nanogcg"
        ) from None
    from knowlens.jailbreak.corpora import Prompt

    s = settings or GCGSettings()
    logging.getLogger("nanogcg").setLevel(logging.WARNING)
    out = []
    for b in behaviors:
        key = stable_hash(
            {
                "model": handle.target_id,
                "behavior": b.behavior,
                "s": asdict(s),
                "code": ATTACK_VERSION,
            }
        )
        entry = cache_root() / "gcg" / f"{key}.json"
        if entry.exists():
            rec = json.loads(entry.read_text())
        else:
            messages = [{"role": "user", "content": b.behavior + " {optim_str}"}]
            if handle.system_prompt:
                messages.insert(0, {"role": "system", "content": handle.system_prompt})
            cfg = nanogcg.GCGConfig(
                num_steps=s.steps,
                search_width=s.search_width,
                topk=s.topk,
                seed=s.seed,
                optim_str_init=s.optim_str_init,
                verbosity="WARNING",
                # nanogcg 0.3's prefix cache indexes the KV cache as a tuple, which
                # transformers >= 4.5x DynamicCache no longer supports
                use_prefix_cache=False,
            )
            res = nanogcg.run(
                handle.model, handle.tokenizer, messages, _target_string(b.behavior), cfg
            )
            rec = {"suffix": res.best_string, "loss": float(res.best_loss), "losses": res.losses}
            atomic_write_json(entry, rec)
        out.append(
            Prompt(
                f"GCGopt-{handle.name}|{b.id}",
                f"{b.behavior} {rec['suffix']}",
                "jailbreak",
                b.behavior,
                f"GCGopt-{handle.name}",
                f"nanogcg on {handle.name} + {b.source}",
                b.licence,
                {"gcg_loss": rec["loss"], "gcg_losses": rec["losses"]},
            )
        )
    return out
