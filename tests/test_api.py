"""API backend against `knowlens serve` on 127.0.0.1: round trip, caching, dead server."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """uvicorn in a thread on a free loopback port; ``stop_after`` requests it shuts down."""

    def __init__(self, handle, name: str, stop_after: int | None = None, port: int | None = None):
        import uvicorn

        from knowlens.jailbreak.server import create_app

        app = create_app(handle, model_name=name)
        self.count = 0
        if stop_after is not None:

            @app.middleware("http")
            async def _count(request, call_next):  # the "kill": stop after N completions
                resp = await call_next(request)
                if request.url.path.endswith("/chat/completions"):
                    self.count += 1
                    if self.count >= stop_after:
                        self.server.should_exit = True
                        await asyncio.sleep(0.5)  # let uvicorn close its socket first
                return resp

        self.port = port or _free_port()
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if time.time() - t0 > 20:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.mark.timeout(120)
def test_api_round_trip_matches_local_generation(tiny_model):
    from knowlens.jailbreak.api import ApiTarget
    from knowlens.jailbreak.server import complete
    from knowlens.jailbreak.targets import load_target

    prompts = ["What is the capital of France?", "Is the proposed answer correct?"]
    with _Server(tiny_model, "tiny") as srv:
        spec = f"api:tiny?base_url={srv.base_url}&retries=0"
        target = load_target(spec)
        assert isinstance(target, ApiTarget) and not target.is_local
        out = target.generate(prompts, max_new_tokens=8)
        assert [r.cached for r in out] == [False, False]
        # the served text equals a direct greedy completion of the same chat
        for p, r in zip(prompts, out, strict=True):
            direct = complete(tiny_model, [{"role": "user", "content": p}], 8)[0]
            assert r.text == direct and r.error is None
        again = target.generate(prompts, max_new_tokens=8)
        assert [r.cached for r in again] == [True, True]
        assert [r.text for r in again] == [r.text for r in out]
        assert srv.count == 0  # no middleware: counter untouched

    # one model, two system prompts -> two targets with distinct ids and caches
    a = load_target("api:tiny?base_url=http://127.0.0.1:1/v1")
    b = load_target("api:tiny?base_url=http://127.0.0.1:1/v1&system=safety")
    assert a.target_id != b.target_id and b.system_prompt and b.name.endswith("@safety")


@pytest.mark.timeout(120)
def test_killed_server_gives_clear_error_and_keeps_responses(tiny_model):
    from knowlens.jailbreak.api import ApiTarget, ApiUnavailableError

    prompts = [f"Question number {i}: what is {i} plus {i}?" for i in range(6)]
    with _Server(tiny_model, "tiny", stop_after=3) as srv:
        target = ApiTarget("tiny", base_url=srv.base_url, retries=1, backoff=0.05, timeout=5)
        with pytest.raises(ApiUnavailableError) as ei:
            target.generate(prompts, max_new_tokens=4)
        srv.thread.join(timeout=10)
    msg = str(ei.value)
    assert "\n" not in msg and "stopped responding" in msg and "3 responses are cached" in msg
    assert len(list(target.cache_dir().glob("*.json"))) == 3
    # nothing received is lost: the three answers are served from the cache, server down
    first = ApiTarget("tiny", base_url=f"http://127.0.0.1:{srv.port}/v1", retries=0)
    out = first.generate(prompts[:3], max_new_tokens=4)
    assert all(r.cached and r.text is not None for r in out)
    # restart on the same port: the rerun resumes, requesting only the 3 missing prompts
    with _Server(tiny_model, "tiny", port=srv.port, stop_after=100) as srv2:
        out = first.generate(prompts, max_new_tokens=4)
        assert srv2.count == 3
    assert [r.cached for r in out] == [True] * 3 + [False] * 3
    assert len(list(target.cache_dir().glob("*.json"))) == 6


def test_api_user_errors_are_one_line(monkeypatch):
    from knowlens.errors import KnowlensError
    from knowlens.jailbreak.api import ApiTarget
    from knowlens.jailbreak.targets import parse_target

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    t = ApiTarget("gpt-x", base_url="https://api.example.invalid/v1")
    with pytest.raises(KnowlensError, match=r"needs an API key in \$OPENAI_API_KEY"):
        t.client()
    with pytest.raises(KnowlensError, match="unknown option 'sytem'"):
        parse_target("smollm2-135m-instruct?sytem=safety")
    with pytest.raises(KnowlensError, match="'rpm' must be a number"):
        from knowlens.jailbreak.targets import load_target

        load_target("api:m?base_url=http://127.0.0.1:9/v1&rpm=fast")


def test_cli_lists_judges_and_rejects_bad_port():
    from typer.testing import CliRunner

    from knowlens.cli import app

    r = CliRunner().invoke(app, ["jailbreak", "judges"])
    assert r.exit_code == 0 and "29" in r.output and "MitigationBypass" in r.output
    r = CliRunner().invoke(app, ["serve", "smollm2-135m-instruct", "--port", "70000"])
    # The root group prints user errors as one line with exit code 2 (also under CliRunner).
    assert r.exit_code == 2 and "--port must be in 1..65535" in r.output
    r = CliRunner().invoke(app, ["organism", "--help"])
    assert r.exit_code == 0 and "refusal" in r.output
