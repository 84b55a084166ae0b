"""`knowlens serve` in-process (uvicorn in a thread on 127.0.0.1): the served answers equal the
local path's token for token, every request field is honoured or rejected by name, and the
limits (prompt size, timeout, disconnect, queue) stop the model work they guard against."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import SimpleNamespace

import httpx
import pytest

PROMPTS = [
    "What is the capital of France?",
    "Is the proposed answer correct? Choices: (i): no (ii): yes",
    "Tell me how to bake bread.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(handle, name: str = "tiny", **limits):
    import uvicorn

    from knowlens.jailbreak.server import create_app

    app = create_app(handle, model_name=name, **limits)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not server.started:
        assert time.monotonic() - t0 < 20, "server did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    try:
        yield SimpleNamespace(url=url, base_url=f"{url}/v1", app=app, port=port)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive()


def _chat(url: str, content: str = "Hi", timeout: float = 30, **fields) -> httpx.Response:
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], **fields}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=timeout)


def _health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=5).json()


def _wait_for(pred, timeout: float = 5.0) -> None:
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory):
    """The tiny model saved without a chat template: a base model."""
    from conftest import build_tiny_llama, build_tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny-base")
    tok = build_tiny_tokenizer()
    tok.chat_template = None
    build_tiny_llama(len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def slow_handle(tiny_model_dir):
    """A private tiny model whose decoder layers sleep ``delay[0]`` s per call (so a long
    answer takes seconds) and count their calls (so a test can see the work stop); its EOS
    logit row is zeroed, so answers run to max_tokens."""
    import torch

    from knowlens.models import load_model

    h = load_model(tiny_model_dir, device="cpu", name="tiny")
    with torch.no_grad():
        h.model.get_output_embeddings().weight[h.tokenizer.eos_token_id] = 0.0
    calls: list[float] = []
    delay = [0.005]

    def hook(module, args):
        calls.append(time.monotonic())
        time.sleep(delay[0])

    hooks = [layer.register_forward_pre_hook(hook) for layer in h.decoder_layers()]
    yield SimpleNamespace(handle=h, calls=calls, delay=delay)
    for x in hooks:
        x.remove()


def _assert_work_stopped(calls: list[float]) -> None:
    time.sleep(0.3)  # the worker notices the cancellation at its next layer call
    n = len(calls)
    time.sleep(0.5)  # a live generation makes tens of layer calls in this time
    assert len(calls) == n


def _raw_request(port: int, **fields) -> socket.socket:
    """Send a chat request on a raw socket and return it: closing it is a client disconnect
    at a moment the test chooses."""
    import json

    body = json.dumps(
        {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], **fields}
    ).encode()
    s = socket.create_connection(("127.0.0.1", port))
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    s.sendall(head.encode() + body)
    return s


# -- same answers as the local path -------------------------------------------------------
@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["chat", "base"])
def test_served_answers_equal_local_target_token_for_token(kind, tiny_model_dir, base_model_dir):
    import openai

    from knowlens.generation import generate_texts
    from knowlens.jailbreak.targets import SYSTEM_PROMPTS, load_target
    from knowlens.models import load_model

    d = tiny_model_dir if kind == "chat" else base_model_dir
    handle = load_model(d, device="cpu", name="tiny")
    assert handle.has_chat_template == (kind == "chat")
    tok = handle.tokenizer
    with serving(handle) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=60)
        for system in (None, "safety"):
            target = load_target(str(d) if system is None else f"{d}?system={system}")
            local = target.generate(PROMPTS, max_new_tokens=12)
            rows = generate_texts(target.handle, PROMPTS, max_new_tokens=12, progress=False).rows
            assert [r.text for r in local] == [g.answer for g in rows]
            assert any(len(g.answer_ids) >= 4 for g in rows)  # answers with substance
            for p, r, g in zip(PROMPTS, local, rows, strict=True):
                sys_msg = [{"role": "system", "content": SYSTEM_PROMPTS[system]}] if system else []
                out = client.chat.completions.create(
                    model="tiny",
                    messages=[*sys_msg, {"role": "user", "content": p}],
                    max_tokens=12,
                    temperature=0,
                    logprobs=True,
                )
                c = out.choices[0]
                assert c.message.content == r.text
                assert [t.token for t in c.logprobs.content] == [
                    tok.decode([i], skip_special_tokens=True) for i in g.answer_ids
                ]
                assert [t.logprob for t in c.logprobs.content] == pytest.approx(
                    g.token_logprobs, abs=1e-5
                )
                assert out.usage.prompt_tokens == len(g.prompt_ids)
                assert out.usage.completion_tokens == len(g.answer_ids)
                assert c.finish_reason == ("length" if g.stop_reason == "length" else "stop")
                if kind == "base":  # format_prompt's rendering, not a "User: ..." transcript
                    want = f"{SYSTEM_PROMPTS[system]}\n\n{p}" if system else p
                    assert g.prompt == want
                    assert out.usage.prompt_tokens == len(tok(want)["input_ids"])


def test_multi_turn_chats(tiny_model, base_model_dir):
    from knowlens.generation import _encode
    from knowlens.jailbreak.server import complete
    from knowlens.models import load_model

    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    with serving(tiny_model) as srv:
        r = httpx.post(
            f"{srv.base_url}/chat/completions",
            json={"model": "tiny", "messages": chat, "max_tokens": 8},
            timeout=30,
        )
    assert r.status_code == 200
    text = tiny_model.tokenizer.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    )
    assert r.json()["usage"]["prompt_tokens"] == len(_encode(tiny_model, text, True))
    assert r.json()["choices"][0]["message"]["content"] == complete(tiny_model, chat, 8)[0]

    base = load_model(base_model_dir, device="cpu", name="tiny")
    with serving(base) as srv:
        r = httpx.post(
            f"{srv.base_url}/chat/completions",
            json={"model": "tiny", "messages": chat, "max_tokens": 8},
            timeout=30,
        )
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "messages"
    assert "no chat template" in err["message"] and "'assistant'" in err["message"]


def test_chat_template_refusals_are_400(tiny_model):
    import copy
    import dataclasses

    from conftest import CHAT_TEMPLATE

    tok = copy.deepcopy(tiny_model.tokenizer)
    tok.chat_template = (
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}" + CHAT_TEMPLATE
    )
    h = dataclasses.replace(tiny_model, tokenizer=tok)
    body = {
        "model": "tiny",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi"}],
    }
    with serving(h) as srv:
        r = httpx.post(f"{srv.base_url}/chat/completions", json=body, timeout=30)
        ok = _chat(srv.url, max_tokens=3)
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "messages"
    assert "System role not supported" in err["message"] and ok.status_code == 200


# -- request fields -----------------------------------------------------------------------
def test_stop_n_and_logprobs(tiny_model):
    from knowlens.generation import GenerationSettings, _decode_batch, _encode

    tok = tiny_model.tokenizer
    text0 = tiny_model.format_prompt("Tell me how to bake bread.")
    ids = _decode_batch(
        tiny_model,
        [_encode(tiny_model, text0, True)],
        GenerationSettings(max_new_tokens=24, stop_on_newline=False),
    )[0]["answer_ids"]
    full = tok.decode(ids, skip_special_tokens=True)
    assert len(full) >= 8
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = full.find(stop)
    with serving(tiny_model) as srv:
        plain = _chat(srv.url, "Tell me how to bake bread.", max_tokens=24).json()
        assert plain["choices"][0]["message"]["content"] == full
        assert plain["choices"][0]["logprobs"] is None
        out = _chat(
            srv.url,
            "Tell me how to bake bread.",
            max_tokens=24,
            stop=[stop, "QQQ"],
            n=3,
            logprobs=True,
        ).json()
        one = _chat(srv.url, "Tell me how to bake bread.", max_tokens=24, stop=stop).json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in out["choices"]} == {full[:cut]}
    assert {c["finish_reason"] for c in out["choices"]} == {"stop"}
    assert one["choices"][0]["message"]["content"] == full[:cut]
    # tokens generated until the stop string was complete, once per choice
    n_stop = min(k for k in range(1, len(ids) + 1) if stop in tok.decode(ids[:k]))
    assert one["usage"]["completion_tokens"] == n_stop
    assert out["usage"]["completion_tokens"] == 3 * n_stop
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + 3 * n_stop
    # logprobs: the tokens that lie wholly before the cut
    n_keep = sum(len(tok.decode(ids[:k], skip_special_tokens=True)) <= cut for k in range(1, 25))
    content = out["choices"][0]["logprobs"]["content"]
    assert len(content) == n_keep and all(t["top_logprobs"] == [] for t in content)
    assert [t["token"] for t in content] == [
        tok.decode([i], skip_special_tokens=True) for i in ids[:n_keep]
    ]
    assert all(t["bytes"] == list(t["token"].encode()) and t["logprob"] <= 0 for t in content)


def test_sampling_equals_kl_sample_and_is_seeded(tiny_model):
    """temperature > 0 samples as kl.sample does for the same prompt (same seeds, tokens,
    log-probs); a seed gives the same choices every time, another seed others, no seed a
    fresh draw per request; temperature 0 stays greedy whatever seed / top_p say."""
    import openai

    from knowlens.generation import (
        GenerationSettings,
        TokenSampler,
        _decode_batch,
        _encode,
        generate_texts,
        sample,
        sample_seed,
    )
    from knowlens.jailbreak.server import SAMPLE_ID

    prompt, m = "Tell me how to bake bread.", 12
    draw = {"temperature": 0.9, "top_p": 0.95}
    gens = generate_texts(tiny_model, [prompt], max_new_tokens=m, cache=False, progress=False)
    ref = sample(tiny_model, gens, k=3, seed=7, cache=False, progress=False, **draw)[0]
    assert len(set(ref.texts)) > 1  # three different samples
    # ... which is the decoder with TokenSampler seeded by (seed, SAMPLE_ID, j)
    ids = _encode(tiny_model, tiny_model.format_prompt(prompt), True)
    rows = _decode_batch(
        tiny_model,
        [ids],
        GenerationSettings(max_new_tokens=m, stop_on_newline=False),
        TokenSampler([sample_seed(7, SAMPLE_ID, j) for j in range(3)], 3, **draw),
    )
    assert [r["answer_ids"] for r in rows] == ref.answer_ids
    with serving(tiny_model) as srv:
        one = _chat(srv.url, prompt, max_tokens=m, n=3, seed=7, logprobs=True, **draw).json()
        again = _chat(srv.url, prompt, max_tokens=m, n=3, seed=7, **draw).json()
        other = _chat(srv.url, prompt, max_tokens=m, n=3, seed=8, **draw).json()
        fresh = [_chat(srv.url, prompt, max_tokens=m, n=3, **draw).json() for _ in range(2)]
        greedy = _chat(srv.url, prompt, max_tokens=m, n=2).json()
        greedy_seeded = _chat(srv.url, prompt, max_tokens=m, n=2, temperature=0, seed=7).json()
        client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=60)
        sdk = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=m,
            n=3,
            seed=7,
            **draw,
        )

    def texts(r: dict) -> list[str]:
        return [c["message"]["content"] for c in r["choices"]]

    tok = tiny_model.tokenizer
    assert texts(one) == ref.texts == texts(again) == [c.message.content for c in sdk.choices]
    for c, a, lp, why in zip(
        one["choices"], ref.answer_ids, ref.token_logprobs, ref.stop_reasons, strict=True
    ):
        assert [t["token"] for t in c["logprobs"]["content"]] == [
            tok.decode([i], skip_special_tokens=True) for i in a
        ]
        assert [t["logprob"] for t in c["logprobs"]["content"]] == lp  # raw, T=1: exact
        assert c["finish_reason"] == ("length" if why == "length" else "stop")
    assert one["usage"]["completion_tokens"] == sum(len(a) for a in ref.answer_ids)
    assert texts(other) != texts(one)
    assert texts(fresh[0]) != texts(fresh[1]) and len(set(texts(fresh[0]))) > 1
    plain = GenerationSettings(max_new_tokens=m, stop_on_newline=False)
    want = tok.decode(
        _decode_batch(tiny_model, [ids], plain)[0]["answer_ids"], skip_special_tokens=True
    )
    assert texts(greedy) == texts(greedy_seeded) == [want, want]


@pytest.mark.parametrize(
    ("fields", "param", "phrase"),
    [
        ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"temperature": 1e-9}, "temperature", "too small to sample with"),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"top_p": 1.5, "temperature": 1}, "top_p", "less than or equal to 1"),
        ({"top_p": "most"}, "top_p", "valid number"),
        ({"seed": 1.5}, "seed", "valid integer"),
        ({"top_logprobs": 2, "logprobs": True}, "top_logprobs", "chosen token"),
        ({"top_logprobs": 0}, "top_logprobs", "needs logprobs=true"),
        ({"tools": []}, "tools", "unsupported field 'tools'"),
        ({"stream": True}, "stream", "stream=false"),
        ({"frequency_penalty": 0.5}, "frequency_penalty", "supported: 0"),
        ({"presence_penalty": -1}, "presence_penalty", "supported: 0"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"n": 17}, "n", "less than or equal to 16"),
        ({"max_tokens": 513}, "max_tokens", "limit of 512"),
        ({"max_tokens": 4, "max_completion_tokens": 5}, "max_tokens", "disagree"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "up to 4"),
        ({"stop": ""}, "stop", "non-empty"),
        ({"stop": [1]}, "stop", "valid string"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role", "'system'"),
        ({"messages": [{"role": "user", "content": "x", "name": "b"}]}, "messages.0.name", "role"),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages.0.content", "string"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
            "messages.1.role",
            "only first",
        ),
        ({"model": "other"}, "model", "not served here"),
    ],
)
def test_unsupported_values_are_rejected_by_name(tiny_model, fields, param, phrase):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], **fields}
    with serving(tiny_model) as srv:
        r = httpx.post(f"{srv.base_url}/chat/completions", json=body, timeout=30)
    err = r.json()["error"]
    assert r.status_code == (404 if param == "model" else 400)
    assert err["param"] == param and phrase in err["message"]
    assert "\n" not in err["message"]  # one line


def test_malformed_bodies_and_accepted_no_op_fields(tiny_model):
    import openai

    url = None
    with serving(tiny_model) as srv:
        url = f"{srv.base_url}/chat/completions"
        bad = httpx.post(url, content=b"{not json", timeout=30)
        arr = httpx.post(url, content=b"[1, 2]", timeout=30)
        missing = httpx.post(url, json={"model": "tiny"}, timeout=30)
        plain = _chat(srv.url, max_tokens=6).json()
        noop = _chat(
            srv.url,
            max_tokens=6,
            temperature=0,
            top_p=0.5,
            seed=7,
            n=1,
            presence_penalty=0,
            frequency_penalty=0,
            logprobs=False,
            stream=False,
            user="u1",
        ).json()
        client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as ei:
            client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Hi"}], top_p=1.2
            )
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    assert arr.status_code == 400 and "JSON object" in arr.json()["error"]["message"]
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    # greedy decoding: top_p and seed cannot change the answer, so they are accepted
    assert noop["choices"][0]["message"] == plain["choices"][0]["message"]
    assert ei.value.param == "top_p" and "less than or equal to 1" in ei.value.message
    assert url.endswith("/v1/chat/completions")


# -- limits -------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_prompt_and_body_limits(tiny_model):
    from knowlens.errors import KnowlensError
    from knowlens.generation import _encode
    from knowlens.jailbreak.server import create_app

    p = "What is the capital of France? " * 4
    n = len(_encode(tiny_model, tiny_model.format_prompt(p), True))
    with serving(tiny_model) as srv:  # defaults: context 1024 - 512 = 512 tokens
        assert _health(srv.url)["max_prompt_tokens"] == 512
        t0 = time.monotonic()
        huge = _chat(srv.url, "word " * 40_000, max_tokens=8)  # a 200 KB prompt
        assert time.monotonic() - t0 < 10
        ok = _chat(srv.url, "Hi", max_tokens=8)  # the server is not stuck
        over = _chat(srv.url, "word " * 200, max_tokens=600)
    err = huge.json()["error"]
    assert huge.status_code == 413 and err["code"] == "prompt_too_long"
    assert "this server accepts at most 512 (--max-prompt-tokens 512)" in err["message"]
    assert ok.status_code == 200
    assert over.status_code == 400 and over.json()["error"]["param"] == "max_tokens"
    with serving(tiny_model, max_prompt_tokens=n) as srv:
        assert _chat(srv.url, p, max_tokens=4).status_code == 200
    with serving(tiny_model, max_prompt_tokens=n - 1, max_body_bytes=4000) as srv:
        r = _chat(srv.url, p, max_tokens=4)
        big = _chat(srv.url, "x" * 5000, max_tokens=4)
    assert r.status_code == 413 and f"prompt is {n} tokens" in r.json()["error"]["message"]
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    assert "exceeds 4000 bytes" in big.json()["error"]["message"]
    for kw, phrase in [
        ({"max_prompt_tokens": 1024}, "model context is 1024 tokens"),
        ({"max_prompt_tokens": 0}, "positive integer"),
        ({"request_timeout": 0}, "request_timeout must be > 0"),
        ({"max_queue": 0}, "max_queue must be a positive integer"),
    ]:
        with pytest.raises(KnowlensError, match=phrase):
            create_app(tiny_model, **kw)


@pytest.mark.timeout(60)
def test_timeout_gives_504_and_stops_the_generation(slow_handle):
    with serving(slow_handle.handle, request_timeout=0.5) as srv:
        t0 = time.monotonic()
        r = _chat(srv.url, max_tokens=512)  # >= 5 s of work at 5 ms per layer call
        dt = time.monotonic() - t0
        _assert_work_stopped(slow_handle.calls)
        stats = _health(srv.url)
    assert r.status_code == 504 and "--request-timeout 0.5 s" in r.json()["error"]["message"]
    assert 0.4 < dt < 4.0
    assert stats["running"] == 0 and stats["cancelled_timeout"] == 1


@pytest.mark.timeout(60)
def test_client_disconnect_stops_the_generation(slow_handle):
    with serving(slow_handle.handle) as srv:
        sock = _raw_request(srv.port, max_tokens=512)
        _wait_for(lambda: _health(srv.url)["running"] == 1)
        sock.close()
        _wait_for(lambda: _health(srv.url).get("cancelled_disconnect") == 1)
        _assert_work_stopped(slow_handle.calls)
        assert _health(srv.url)["running"] == 0
        assert _chat(srv.url, max_tokens=3).status_code == 200  # and it serves on


@pytest.mark.timeout(120)
def test_queue_full_gives_429_and_short_requests_pass_long_ones(slow_handle):
    from knowlens.jailbreak.server import complete

    res: dict[str, object] = {}

    def long_a():
        res["a_start"] = time.monotonic()
        res["a"] = _chat(srv.url, max_tokens=300, timeout=100)
        res["a_done"] = time.monotonic()

    # short_job_tokens=64: a 300-token answer is a long job, a 4-token one is short
    with serving(slow_handle.handle, max_queue=1, request_timeout=100, short_job_tokens=64) as srv:
        a = threading.Thread(target=long_a)
        a.start()
        _wait_for(lambda: _health(srv.url)["running"] == 1)
        b = _raw_request(srv.port, max_tokens=500)  # a second long job: waits
        _wait_for(lambda: _health(srv.url)["queued"] == 1)
        full = _chat(srv.url, max_tokens=500)  # a third: the queue is full
        lat, done = [], []
        for _ in range(3):  # short ones go to the short worker and past the long one
            t0 = time.monotonic()
            r = _chat(srv.url, max_tokens=4)
            lat.append(time.monotonic() - t0)
            done.append(time.monotonic())
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        b.close()  # the queued job leaves the queue when its client goes
        _wait_for(lambda: _health(srv.url).get("cancelled_disconnect") == 1)
        assert _health(srv.url)["queued"] == 0
        a.join()
        stats = _health(srv.url)
    print(f"short-request latency while a long one runs: {[round(x, 3) for x in lat]} s")
    assert full.status_code == 429 and full.headers["retry-after"] == "1"
    assert "--max-queue 1" in full.json()["error"]["message"]
    a_secs = res["a_done"] - res["a_start"]
    assert max(done) < res["a_done"] and max(lat) < a_secs / 2
    assert res["a"].status_code == 200 and res["a"].json()["usage"]["completion_tokens"] == 300
    assert stats["rejected_queue_full"] == 1 and stats["completed"] == 4
    slow_handle.delay[0] = 0.0  # interleaving with short jobs did not change the long answer
    msgs = [{"role": "user", "content": "Hi"}]
    want = complete(slow_handle.handle, msgs, 300)[0]
    assert res["a"].json()["choices"][0]["message"]["content"] == want


def test_cli_serve_checks_limits_before_loading():
    from typer.testing import CliRunner

    from knowlens.cli import app

    for args, phrase in [
        (["--max-queue", "0"], "--max-queue must be >= 1"),
        (["--request-timeout", "0"], "--request-timeout must be > 0"),
        (["--max-prompt-tokens", "0"], "--max-prompt-tokens must be >= 1"),
    ]:
        r = CliRunner().invoke(app, ["serve", "no-such-model", *args])
        assert r.exit_code == 2 and phrase in (r.output + str(r.exception))


def test_turns_give_short_jobs_the_model_without_starving_the_long_one():
    from knowlens.jailbreak.server import _Turns

    turns = _Turns(slice_s=0.0)
    long_job = SimpleNamespace(short=False)
    order: list[str] = []
    inside = [0, 0]  # [now, most at once]
    done = threading.Event()

    def step(tag: str) -> None:
        inside[0] += 1
        inside[1] = max(inside)
        order.append(tag)
        time.sleep(0.001)
        inside[0] -= 1

    def long_loop() -> None:
        turns.acquire(long_job)
        for _ in range(40):  # 40 "layers", yielding between them
            step("L")
            turns.maybe_yield(long_job)
        turns.release(long_job)
        done.set()

    def short_loop() -> None:  # a short job whenever the model could be had
        while not done.is_set():
            j = SimpleNamespace(short=True)
            turns.acquire(j)
            step("S")
            turns.release(j)

    threads = [threading.Thread(target=long_loop), threading.Thread(target=short_loop)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert done.is_set() and order.count("L") == 40  # the long job finished
    assert order.count("S") >= 10 and inside[1] == 1  # shorts ran, one at a time
    # while the long job waits, it is owed the turn after each short job
    first_l, last_l = order.index("L"), len(order) - 1 - order[::-1].index("L")
    assert "SS" not in "".join(order[first_l : last_l + 1])
