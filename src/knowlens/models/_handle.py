"""`ModelHandle`: a loaded causal LM + tokenizer and the facts every stage needs about it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["ModelHandle", "find_decoder_layers", "fingerprint_module"]


@dataclass
class ModelHandle:
    """A loaded Hugging Face causal LM and its tokenizer.

    Attributes:
        name: short display name (embedded name, directory name, or hub id).
        model: the ``transformers`` ``PreTrainedModel`` (eval mode).
        tokenizer: its tokenizer; ``padding_side`` is left to the caller.
        fingerprint: hash of weights + config; part of every downstream cache key.
        source: the spec it was loaded from (path, hub id, embedded name).
        system_prompt: optional deployment system prompt used when the chat template is
            applied; two handles of one model with different prompts are different targets.
        info: provenance (GGUF sha256, converted directory, licence, ...).
    """

    name: str
    model: Any
    tokenizer: Any
    fingerprint: str
    source: str = ""
    system_prompt: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    # -- facts -------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks. Hidden-state indices run 0..n_layers (0 = embeddings)."""
        cfg = getattr(self.config, "text_config", None) or self.config
        return int(cfg.num_hidden_layers)

    @property
    def d_model(self) -> int:
        cfg = getattr(self.config, "text_config", None) or self.config
        return int(cfg.hidden_size)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def target_id(self) -> str:
        """Fingerprint plus system prompt: identifies a *deployment* of the model."""
        if not self.system_prompt:
            return self.fingerprint
        sp = hashlib.sha256(self.system_prompt.encode()).hexdigest()[:8]
        return f"{self.fingerprint}+sys{sp}"

    def decoder_layers(self) -> torch.nn.ModuleList:
        """The list of decoder blocks (``model.model.layers`` for Llama/Gemma/Mistral/Qwen)."""
        return find_decoder_layers(self.model)

    def format_prompt(self, user: str, *, use_chat_template: bool = True) -> str:
        """Render one user turn as the text the model sees.

        With a chat template (and ``use_chat_template``) this is the templated conversation
        ending in the assistant header; otherwise the plain text, unchanged, so a task's own
        completion-style template ("Q: ...\\nA:") is what a base model continues.
        """
        if use_chat_template and self.has_chat_template:
            messages = []
            if self.system_prompt:
                messages.append({"role": "system", "content": self.system_prompt})
            messages.append({"role": "user", "content": user})
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        if self.system_prompt:
            return f"{self.system_prompt}\n\n{user}"
        return user

    def describe(self) -> dict[str, Any]:
        """JSON-able record for run manifests."""
        return {
            "name": self.name,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "system_prompt": self.system_prompt,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "chat_template": self.has_chat_template,
            "architecture": type(self.model).__name__,
            "n_params": int(sum(p.numel() for p in self.model.parameters())),
            **{k: v for k, v in self.info.items() if isinstance(v, (str, int, float, bool))},
        }


def find_decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """Locate the decoder block list of a HF causal LM (also through a peft wrapper)."""
    candidates = [
        "model.layers",
        "model.language_model.layers",
        "model.model.layers",
        "base_model.model.model.layers",
        "transformer.h",
        "model.decoder.layers",
        "gpt_neox.layers",
    ]
    for path in candidates:
        obj: Any = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise TypeError(f"Cannot find the decoder layers of {type(model).__name__}.")


def fingerprint_module(model: torch.nn.Module, extra: str = "") -> str:
    """Hash of a model's config and every parameter/buffer (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    if cfg is not None:
        d = cfg.to_dict()
        for volatile in ("_name_or_path", "transformers_version", "quantization_config"):
            d.pop(volatile, None)
        h.update(json.dumps(d, sort_keys=True, default=str).encode())
    h.update(extra.encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]
