"""Generation-only targets behind any OpenAI-compatible chat-completions endpoint.

    from knowlens.jailbreak.api import ApiTarget
    t = ApiTarget("gpt-4o-mini", base_url="https://api.openai.com/v1", key_env="OPENAI_API_KEY")
    t = ApiTarget("smollm2", base_url="http://127.0.0.1:8000/v1")    # `knowlens serve`
    responses = t.generate(["How do I bake bread?"], max_new_tokens=64)

Requests go out one at a time, at most ``rpm`` per minute, greedy (``temperature=0``).
Transient failures (connection refused, timeouts, 429, 5xx) are retried with exponential
backoff. Every response is written to the cache (``cache_root()/api_responses/<target>/
<prompt hash>.json``, atomically) the moment it arrives, so a run killed half-way, or a
server that dies mid-run, loses nothing already received: the error is one line naming how
many responses are safe, and a rerun resumes from there.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlparse

from knowlens._cache import atomic_write_json, cache_root, stable_hash
from knowlens.errors import KnowlensError
from knowlens.jailbreak._response import Response

__all__ = ["API_CACHE_VERSION", "DEFAULT_BASE_URL", "ApiTarget", "ApiUnavailableError"]

API_CACHE_VERSION = "1"
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class ApiUnavailableError(KnowlensError):
    """The endpoint stopped answering (after retries); received responses are cached."""


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiTarget:
    """A chat model behind an OpenAI-compatible API (see module docstring).

    Args:
        model: the endpoint's model name.
        base_url: endpoint root ending in ``/v1`` (default ``$OPENAI_BASE_URL`` or OpenAI).
        key_env: environment variable holding the API key (default ``OPENAI_API_KEY``; not
            needed for loopback servers such as ``knowlens serve``).
        system_prompt: deployment system prompt sent as the first message.
        rpm: maximum requests per minute (rate limit; 0 = unlimited).
        retries: retries per request on transient errors (backoff 0.5 s, 1 s, 2 s, ...).
        timeout: seconds per request.
    """

    is_local: ClassVar[Literal[False]] = False

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        key_env: str | None = None,
        system_prompt: str | None = None,
        name: str | None = None,
        rpm: float = 0,
        retries: int = 4,
        timeout: float = 60.0,
        backoff: float = 0.5,
    ) -> None:
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip(
            "/"
        )
        self.key_env = key_env
        self.system_prompt = system_prompt
        self.name = name or f"api:{model}"
        self.rpm = float(rpm)
        self.retries = int(retries)
        self.timeout = float(timeout)
        self.backoff = float(backoff)
        self._last = 0.0
        self._client: Any = None

    @classmethod
    def from_spec(cls, ts: Any) -> ApiTarget:
        o = ts.options

        def num(key: str, default: float) -> float:
            try:
                return float(o.get(key, default))
            except ValueError:
                raise KnowlensError(
                    f"Target '{ts.spec}': option '{key}' must be a number; got '{o[key]}'."
                ) from None

        return cls(
            ts.model,
            base_url=o.get("base_url"),
            key_env=o.get("key_env"),
            system_prompt=ts.system_prompt,
            name=ts.display,
            rpm=num("rpm", 0),
            retries=int(num("retries", 4)),
            timeout=num("timeout", 60),
        )

    # -- identity and cache ------------------------------------------------------------
    @property
    def target_id(self) -> str:
        return "api-" + stable_hash(
            {"base_url": self.base_url, "model": self.model, "system": self.system_prompt}
        )

    def cache_dir(self) -> Path:
        return cache_root() / "api_responses" / self.target_id

    def _entry(self, prompt: str, max_new_tokens: int) -> Path:
        key = stable_hash(
            {"prompt": prompt, "max_tokens": max_new_tokens, "code": API_CACHE_VERSION}, 32
        )
        return self.cache_dir() / f"{key}.json"

    # -- client ------------------------------------------------------------------------
    def _api_key(self) -> str:
        env = self.key_env or "OPENAI_API_KEY"
        key = os.environ.get(env)
        if key:
            return key
        if self.key_env is None and _is_loopback(self.base_url):
            return "not-needed"  # local servers (knowlens serve, vLLM, llama.cpp) ignore it
        raise KnowlensError(
            f"API target '{self.name}' needs an API key in ${env}, which is not set. "
            f"Export it (export {env}=...) or pass key_env=<VAR> in the target spec."
        )

    def client(self) -> Any:
        if self._client is None:
            try:
                import openai
            except ImportError:
                raise KnowlensError(
                    "API targets need the openai package. Install with: pip install openai"
                ) from None
            self._client = openai.OpenAI(
                base_url=self.base_url,
                api_key=self._api_key(),
                max_retries=0,  # we retry ourselves, with our own backoff and messages
                timeout=self.timeout,
            )
        return self._client

    def _throttle(self) -> None:
        if self.rpm > 0:
            wait = self._last + 60.0 / self.rpm - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self._last = time.monotonic()

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*msgs, {"role": "user", "content": prompt}]

    def _request(self, prompt: str, max_new_tokens: int) -> tuple[str | None, str | None]:
        """One completion with retries: (text, None), (None, error) for a per-request
        rejection, or raises on an unreachable endpoint / bad credentials."""
        import openai

        client = self.client()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            self._throttle()
            try:
                out = client.chat.completions.create(
                    model=self.model,
                    messages=self._messages(prompt),
                    max_tokens=max_new_tokens,
                    temperature=0.0,
                )
                text = out.choices[0].message.content if out.choices else None
                return (text or "", None)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise KnowlensError(
                    f"API target '{self.name}' at {self.base_url} rejected the credentials "
                    f"(HTTP {e.status_code}); check ${self.key_env or 'OPENAI_API_KEY'}."
                ) from None
            except openai.NotFoundError:
                raise KnowlensError(
                    f"API target '{self.name}': model '{self.model}' not found at {self.base_url} "
                    "(HTTP 404); check the model name (GET /v1/models lists them)."
                ) from None
            except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
                return (None, f"rejected (HTTP {e.status_code})")
            except (
                openai.APIConnectionError,
                openai.RateLimitError,
                openai.InternalServerError,
            ) as e:
                last = e
                if attempt < self.retries:
                    time.sleep(self.backoff * 2**attempt)
        raise _Unavailable(type(last).__name__ if last else "unknown error")

    # -- public ------------------------------------------------------------------------
    def generate(
        self,
        prompts: list[str],
        *,
        ids: list[str] | None = None,
        max_new_tokens: int = 64,
        progress: bool = False,
        on_response: Callable[[int], None] | None = None,
    ) -> list[Any]:
        """Responses in prompt order (cached ones are not re-requested)."""
        ids = [str(i) for i in (ids if ids is not None else range(len(prompts)))]
        out: list[Any] = []
        n_new = 0
        for i, (pid, prompt) in enumerate(zip(ids, prompts, strict=True)):
            entry = self._entry(prompt, max_new_tokens)
            if entry.exists():
                import json

                rec = json.loads(entry.read_text())
                out.append(Response(pid, rec["text"], rec.get("error"), True))
            else:
                try:
                    text, err = self._request(prompt, max_new_tokens)
                except _Unavailable as e:
                    have = sum(1 for p in prompts if self._entry(p, max_new_tokens).exists())
                    raise ApiUnavailableError(
                        f"API target '{self.name}' at {self.base_url} stopped responding "
                        f"({e}, {self.retries} retries) at prompt {i + 1}/{len(prompts)}; "
                        f"{have} responses are cached in {self.cache_dir()} and will be reused. "
                        "Restart the server and rerun to resume."
                    ) from None
                atomic_write_json(
                    entry,
                    {"model": self.model, "base_url": self.base_url, "text": text, "error": err},
                )
                n_new += 1
                out.append(Response(pid, text, err, False))
            if on_response:
                on_response(i)
        return out


class _Unavailable(Exception):
    pass
