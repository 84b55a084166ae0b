"""Model loading: handle facts, fingerprints, and one-line errors (API and CLI)."""

from __future__ import annotations

import struct
import sys

import pytest

from knowlens.errors import KnowlensError, ModelLoadError
from knowlens.models import convert_gguf, handle_from_objects, load_model


def test_tiny_handle_facts(tiny_model, tiny_model_dir):
    assert tiny_model.n_layers == 2 and tiny_model.d_model == 32
    assert tiny_model.has_chat_template and tiny_model.name == "tiny-llama"
    assert str(tiny_model.dtype) == "torch.float32" and tiny_model.device.type == "cpu"
    assert len(tiny_model.decoder_layers()) == 2
    again = load_model(tiny_model_dir, device="cpu")
    assert again.fingerprint == tiny_model.fingerprint  # weights + config, not the path
    wrapped = handle_from_objects(tiny_model.model, tiny_model.tokenizer)
    assert wrapped.fingerprint == tiny_model.fingerprint
    d = tiny_model.describe()
    assert d["n_layers"] == 2 and d["architecture"] == "LlamaForCausalLM" and d["n_params"] > 0


def test_format_prompt_and_target_id(tiny_model):
    assert tiny_model.format_prompt("Hi?") == "<|user|>Hi?<|end|>\n<|assistant|>"
    assert tiny_model.format_prompt("Hi?", use_chat_template=False) == "Hi?"
    sys_handle = handle_from_objects(
        tiny_model.model, tiny_model.tokenizer, system_prompt="Be brief."
    )
    assert sys_handle.format_prompt("Hi?").startswith("<|system|>Be brief.<|end|>")
    assert sys_handle.target_id.startswith(tiny_model.fingerprint + "+sys")
    assert tiny_model.target_id == tiny_model.fingerprint


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


def test_unknown_model_name():
    with pytest.raises(ModelLoadError) as e:
        load_model("smollm3-135m")
    msg = _one_line(e)
    assert "Unknown model 'smollm3-135m'" in msg and "smollm2-135m-instruct" in msg


def test_missing_files(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        load_model(tmp_path / "nope.gguf")
    assert "GGUF file not found" in _one_line(e)
    with pytest.raises(ModelLoadError) as e:
        load_model(str(tmp_path / "no" / "such" / "dir"))
    assert "not found" in _one_line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError) as e:
        load_model(tmp_path / "empty")
    assert "no config.json" in _one_line(e)


def test_corrupt_and_truncated_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file at all, just text")
    with pytest.raises(ModelLoadError) as e:
        load_model(bad)
    assert "not a valid GGUF file" in _one_line(e)
    # a real header (magic, version 3, 5 tensors, 9 metadata entries) cut off right after it
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 5, 9) + b"\x00" * 7)
    with pytest.raises(ModelLoadError) as e:
        load_model(trunc)
    assert "Cannot read GGUF file" in _one_line(e)
    wrong_version = tmp_path / "v9.gguf"
    wrong_version.write_bytes(b"GGUF" + struct.pack("<IQQ", 9, 0, 0))
    with pytest.raises(ModelLoadError) as e:
        load_model(wrong_version)
    assert "unsupported GGUF version 9" in _one_line(e)
    with pytest.raises(ModelLoadError) as e:
        convert_gguf(trunc, expected_sha256="0" * 64)
    assert "corrupt or truncated" in _one_line(e)


def test_bad_device_and_dtype(tiny_model_dir):
    with pytest.raises(ModelLoadError) as e:
        load_model(tiny_model_dir, device="tpu")
    assert "Unknown device 'tpu'" in _one_line(e)
    with pytest.raises(ModelLoadError) as e:
        load_model(tiny_model_dir, device="cpu", dtype="int4")
    assert "Unknown dtype 'int4'" in _one_line(e)


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run ``knowlens ARGS`` through the real entry point (errors -> exit 2, one line)."""
    from knowlens.cli import main

    monkeypatch.setattr(sys, "argv", ["knowlens", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "args, words",
    [
        (
            ["extract", "--model", "smollm2-instruct", "--task", "capitals", "--limit", "2"],
            "Did you mean",
        ),
        (["extract", "--model", "{tiny}", "--task", "capitals", "--layers", "9"], "out of range"),
        (["extract", "--model", "{tiny}", "--task", "capitals", "--tokens", "exact"], "selector"),
        (["extract", "--model", "{tiny}", "--task", "capitals", "--dtype", "int8"], "float16"),
        (["generate", "--model", "/no/such/model.gguf", "--task", "capitals"], "not found"),
        (["generate", "--model", "{tiny}", "--task", "capitals", "--limit", "0"], "--limit"),
    ],
)
def test_cli_errors_exit_2_one_line(args, words, tiny_model_dir, monkeypatch, capsys):
    args = [a.replace("{tiny}", str(tiny_model_dir)) for a in args]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 2, (out, err)
    assert "Traceback" not in err and words in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err


def test_cli_generate_and_extract_on_tiny_model(tiny_model_dir, monkeypatch, capsys):
    import numpy as np

    base = ["--model", str(tiny_model_dir), "--task", "capitals", "--limit", "3", "--device", "cpu"]
    code, out, err = run_cli(["generate", *base, "--max-new-tokens", "4"], monkeypatch, capsys)
    assert code == 0, err
    assert out.strip().endswith("generations.parquet") and "accuracy" in err
    args = ["extract", *base, "--max-new-tokens", "4", "--layers", "0,-1", "--tokens", "last"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    path = out.strip().splitlines()[-1]
    values = np.load(f"{path}/values.npy", mmap_mode="r")
    assert values.shape == (3, 2, 1, 32) and values.dtype == np.float16
    assert "(3, 2, 1, 32)" in err


@pytest.mark.real_model
def test_embedded_smollm2_loads_from_cache():
    m = load_model("smollm2")
    assert m.name == "smollm2-135m-instruct"
    assert (m.n_layers, m.d_model, m.has_chat_template) == (30, 576, True)
    assert m.info.get("embedded") == "smollm2-135m-instruct"
    assert m.describe()["n_params"] > 100_000_000
    with pytest.raises(KnowlensError) as e:
        load_model("gemma3-270")
    assert "Did you mean: gemma3-270m?" in _one_line(e)


# -- converted models: checksums, verification, stale temporaries ------------------------------
def _fake_gguf(tmp_path, monkeypatch, tiny_model_dir) -> tuple[object, list[int]]:
    """A file with a valid GGUF header whose "dequantisation" loads the tiny model, so the
    conversion path (lock, verification, atomic publish) runs without a real model."""
    import transformers

    from knowlens.models import _load

    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + b"tiny" * 8)
    calls: list[int] = []

    def read(p):
        calls.append(1)
        tok = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
        model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        return tok, model

    monkeypatch.setattr(_load, "_read_gguf", read)
    return path, calls


def test_conversion_is_checksummed_verified_and_reconverted_when_damaged(
    tmp_path, monkeypatch, tiny_model_dir, tiny_model, caplog
):
    import json
    import logging

    from knowlens._cache import CHECKSUMS, cache_root, verify_entry

    gguf, calls = _fake_gguf(tmp_path, monkeypatch, tiny_model_dir)
    out = convert_gguf(gguf)
    assert out.parent == cache_root() / "models" and len(calls) == 1
    verify_entry(out)
    assert "model.safetensors" in json.loads((out / CHECKSUMS).read_text())
    assert convert_gguf(gguf) == out and len(calls) == 1  # verified, reused
    m = load_model(gguf, device="cpu")
    recorded = json.loads((out / "knowlens.json").read_text())["fingerprint"]
    assert m.fingerprint == recorded == tiny_model.fingerprint  # same weights, same fp

    # same-size garbage in the weights: detected, reported in one line, moved aside, redone
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4096:] = b"\x7f" * 4096
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="knowlens.cache"):
        again = convert_gguf(gguf)
    warned = [r.getMessage() for r in caplog.records if r.name == "knowlens.cache"]
    assert len(warned) == 1 and "\n" not in warned[0] and "model.safetensors" in warned[0]
    assert again == out and len(calls) == 2
    verify_entry(out)
    assert len(list((cache_root() / ".damaged").iterdir())) == 1
    assert load_model(gguf, device="cpu").fingerprint == recorded

    # a conversion written before checksums existed is not trusted either
    (out / CHECKSUMS).unlink()
    assert convert_gguf(gguf) == out and len(calls) == 3
    verify_entry(out)


def test_damaged_converted_directory_loaded_directly(tmp_path, monkeypatch, tiny_model_dir):
    from knowlens._cache import cache_root

    gguf, _ = _fake_gguf(tmp_path, monkeypatch, tiny_model_dir)
    out = convert_gguf(gguf)
    assert load_model(out, device="cpu").n_layers == 2  # verified, fine
    (out / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelLoadError) as e:
        load_model(out, device="cpu")
    msg = _one_line(e)
    assert "damaged" in msg and "tokenizer.json" in msg and "run again" in msg
    assert not out.exists() and len(list((cache_root() / ".damaged").iterdir())) == 1


def test_recorded_fingerprint_depends_on_the_loaded_dtype(tmp_path, monkeypatch, tiny_model_dir):
    """A converted directory's recorded fingerprint is of its float32 weights; loaded in
    bfloat16 the model computes other numbers, so it must not share their cache entries."""
    gguf, _ = _fake_gguf(tmp_path, monkeypatch, tiny_model_dir)
    fp32 = load_model(gguf, device="cpu", dtype="float32").fingerprint
    bf16 = load_model(gguf, device="cpu", dtype="bfloat16").fingerprint
    assert fp32 != bf16 and bf16 == load_model(gguf, device="cpu", dtype="bfloat16").fingerprint
    # a plain directory hashes its loaded tensors: dtype-dependent already, unchanged
    plain = load_model(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert plain.fingerprint != load_model(tiny_model_dir, device="cpu").fingerprint


def test_conversion_temporary_lives_in_the_models_folder(tmp_path, monkeypatch, tiny_model_dir):
    """Where a killed conversion leaves its temporary folder, cache_root() cleans it."""
    import os

    from knowlens._cache import cache_root
    from knowlens.models import _load

    gguf, _ = _fake_gguf(tmp_path, monkeypatch, tiny_model_dir)
    real, seen = _load.atomic_dir, []

    def spy(final, **kw):
        ctx = real(final, **kw)
        tmp = ctx.__enter__()
        seen.append(tmp)
        raise_kill = KeyboardInterrupt("killed mid-conversion")
        ctx.__exit__(type(raise_kill), raise_kill, None)  # atomic_dir's own clean-up
        raise raise_kill

    monkeypatch.setattr(_load, "atomic_dir", spy)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(gguf)
    (tmp,) = seen
    assert tmp.parent == cache_root() / "models"
    assert tmp.name.startswith(".tmp-gguf-") and f"~{os.getpid()}~" in tmp.name


def test_stale_conversion_temporaries_of_dead_processes_are_removed(monkeypatch):
    import os
    import socket
    import subprocess

    from knowlens import _cache
    from knowlens._cache import cache_root

    models = cache_root() / "models"
    dead_proc = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_proc.wait()
    host = socket.gethostname()
    dead = models / f".tmp-gguf-abc-v1~{dead_proc.pid}~{host}~deadbeef"
    live = models / f".tmp-gguf-abc-v1~{os.getpid()}~{host}~cafebabe"
    for d in (dead, live):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"\0" * 1024)
    monkeypatch.setattr(_cache, "_CLEANED", set())  # a fresh process
    cache_root()
    assert not dead.exists() and (live / "model.safetensors").exists()
