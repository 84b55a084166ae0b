"""``knowlens serve``: an OpenAI-compatible chat-completions server for any local model.

    knowlens serve smollm2-135m-instruct --port 8000          # http://127.0.0.1:8000/v1
    curl 127.0.0.1:8000/v1/chat/completions -d '{"model": "smollm2-135m-instruct",
         "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32}'

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (non-streaming), ``GET /health``
(queue and job counters). It binds 127.0.0.1 by default.

Answers are the local path's answers: the prompt is rendered by ``ModelHandle.format_prompt``
(one user turn, the system message as the deployment system prompt; multi-turn chats go
through the same chat template) and decoded by ``knowlens.generation``'s loop: greedy, so a
served model answers exactly as ``load_target(spec).generate(...)`` does, token for token, or
sampled with ``knowlens.sample``'s ``TokenSampler``.

Request fields (any other field, or an unsupported value, is a 400 that names the field, in
the OpenAI body ``{"error": {"message", "type", "param", "code"}}``):

- ``model``, ``messages``; ``max_tokens`` / ``max_completion_tokens`` (default 128, at most
  :data:`SERVE_MAX_TOKENS`; never beyond the model context);
- ``temperature``: 0 or absent decodes greedily; in [:data:`MIN_TEMPERATURE`, 2] it samples
  from softmax(logits / temperature) after ``top_p`` nucleus filtering (``top_p`` in (0, 1],
  HF's ``TopPLogitsWarper``), with ``knowlens.sample``'s ``TokenSampler``;
- ``n`` 1..16: greedy, ``n`` identical choices decoded once; sampled, ``n`` samples that share
  one prefill of the prompt (``knowlens.sample``'s ``k``);
- ``seed`` (any integer): choice ``j`` draws from a ``torch.Generator`` seeded
  ``sample_seed(seed, SAMPLE_ID, j)``, so a seeded request returns the same choices every
  time: the samples ``kl.sample(model, generate_texts(model, [prompt], max_new_tokens=m),
  k=n, temperature=t, top_p=p, seed=seed)`` draws for that prompt. Without ``seed`` every
  request draws a fresh random seed (its samples are not reproducible). Greedy answers ignore
  ``seed`` and ``top_p``;
- ``stop`` (up to 4 strings, cut from the text, ``finish_reason="stop"``); ``logprobs`` (the
  chosen tokens' log-probs under the model's raw distribution, T=1 and no top-p, in the
  OpenAI format; ``top_logprobs`` only 0); ``presence_penalty`` / ``frequency_penalty`` only
  0; ``stream`` only false; ``user`` is accepted and unused.

One request cannot block the others:

- prompts over ``max_prompt_tokens`` are rejected with 413 (bodies over ``max_body_bytes``
  before they are read in full); tokenising runs off the event loop;
- at most ``max_queue`` requests wait; more get 429 (clients such as ``ApiTarget`` retry);
- a request past ``request_timeout`` seconds (queue wait included) gets 504, and a client
  that disconnects is noticed within :data:`POLL_S`; either way its generation stops;
- two worker threads share the model: one runs any job, the other only *short* jobs
  (prompt + max_tokens <= ``short_job_tokens``). The model itself runs one forward at a time
  (:class:`_Turns`); a long job hands the model to a waiting short job between decoder
  layers (after holding it at least :data:`LONG_SLICE_S`) and gets it back afterwards, so
  small requests are answered while a large one runs and the large one still progresses;
- SIGTERM / Ctrl-C cancels queued and running jobs (503) and exits within seconds.

Cancellation works through a forward pre-hook on every decoder layer that raises when the
current job is cancelled: mid-prefill and mid-decode, without changing a single logit.
(``generation._decode_batch`` has no hook of its own; a per-step ``should_stop: Callable[[],
bool]`` argument there would be the supported way to stop and to yield, though only between
decode steps: the prefill is one forward, which the layer hook can still interrupt.) ``stop``
strings are applied after decoding (the loop cannot stop on text), so a stop string saves
no compute; ``usage.completion_tokens`` counts the tokens up to the one completing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from knowlens.errors import KnowlensError

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_PROMPT_CAP",
    "LONG_SLICE_S",
    "MAX_N",
    "MAX_STOP",
    "MIN_TEMPERATURE",
    "POLL_S",
    "SAMPLE_ID",
    "SERVE_MAX_TOKENS",
    "SUPPORTED_FIELDS",
    "ApiError",
    "ChatRequest",
    "Message",
    "Scheduler",
    "complete",
    "create_app",
    "default_max_prompt_tokens",
    "model_context",
    "render_messages",
    "serve",
]

if TYPE_CHECKING:
    from starlette.requests import Request

    from knowlens.models import ModelHandle
else:
    try:  # module level: FastAPI resolves the endpoint's `request: Request` annotation by name
        from starlette.requests import Request
    except ImportError:  # the api extra is missing; create_app's fastapi import says so
        Request = Any

SERVE_MAX_TOKENS = 512  # per-request completion cap
DEFAULT_MAX_TOKENS = 128  # when a request names none (lowered to fit the context)
DEFAULT_PROMPT_CAP = 8192  # default prompt limit for long-context models
MAX_N = 16
MAX_STOP = 4
POLL_S = 0.1  # how often a waiting request checks for a client disconnect
LONG_SLICE_S = 0.05  # a long job keeps the model at least this long before yielding
# Below this, logits / temperature overflow float32 (softmax gives NaN): send 0 for greedy.
MIN_TEMPERATURE = 1e-4
# The example id a request's samples are seeded with (``generation.sample_seed``): the id
# ``generate_texts`` gives its first prompt, so ``kl.sample`` of that prompt draws the same.
SAMPLE_ID = "0"


# -- request schema ---------------------------------------------------------------------
# At module level: FastAPI resolves annotations by name, which fails for classes local to a
# function under `from __future__ import annotations`.
class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    user: str | None = None
    stream: bool | None = None


SUPPORTED_FIELDS = tuple(ChatRequest.model_fields)


class ApiError(Exception):
    """An HTTP error with an OpenAI-style body."""

    TYPES: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        404: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        499: "client_closed_request",
        503: "server_shutting_down",
        504: "timeout",
    }

    def __init__(self, status: int, message: str, param: str | None = None, code: str = ""):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> Any:
        from fastapi.responses import JSONResponse

        body = {
            "error": {
                "message": self.message,
                "type": self.TYPES.get(self.status, "server_error"),
                "param": self.param,
                "code": self.code or None,
            }
        }
        headers = {"Retry-After": "1"} if self.status == 429 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def _validation_error(e: ValidationError) -> ApiError:
    err = e.errors()[0]
    # pydantic puts union members in the location ("stop.list[str].0"); keep field names and
    # indices only, so `param` names what the client sent ("stop.0", "messages.1.role").
    names = set(ChatRequest.model_fields) | set(Message.model_fields)
    last = len(err["loc"]) - 1
    loc = ".".join(
        str(p)
        for i, p in enumerate(err["loc"])
        if isinstance(p, int) or p in names or (i == last and err["type"] == "extra_forbidden")
    )
    if err["type"] == "extra_forbidden":
        if len(err["loc"]) == 1:
            return ApiError(
                400,
                f"unsupported field '{loc}'; this server accepts: {', '.join(SUPPORTED_FIELDS)}. "
                "Remove the field.",
                loc,
                "unsupported_field",
            )
        return ApiError(
            400, f"unsupported field '{loc}'; a message has only 'role' and 'content'.", loc
        )
    return ApiError(400, f"field '{loc}': {err['msg']} (got {err.get('input')!r:.80}).", loc)


# -- prompt rendering (the local path's formatter) --------------------------------------
def render_messages(handle: ModelHandle, messages: list[dict[str, Any]]) -> tuple[str, bool]:
    """(text the model sees, templated?) for a chat, exactly as the local path renders it.

    ``[system?, user]`` is ``format_prompt(user)`` with the system message as the deployment
    system prompt (what ``LocalTarget`` of ``spec?system=...`` does); longer chats need a
    chat template and go through the same ``apply_chat_template`` call.
    """
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        i = roles.index("system", 1)
        raise ApiError(
            400, f"messages[{i}]: a system message is allowed only first.", f"messages.{i}.role"
        )
    if "user" not in roles:
        raise ApiError(400, "messages need at least one user message.", "messages")
    system = messages[0]["content"] if roles[0] == "system" else None
    turns = messages[1:] if system is not None else messages
    if len(turns) == 1 and turns[0]["role"] == "user":
        h = handle if system is None else dataclasses.replace(handle, system_prompt=system)
        return h.format_prompt(turns[0]["content"]), h.has_chat_template
    if not handle.has_chat_template:
        raise ApiError(
            400,
            f"this model has no chat template, so it takes one user message (optionally after "
            f"one system message); got roles {roles}. Send the conversation as one user turn.",
            "messages",
        )
    msgs = list(messages)
    if system is None and handle.system_prompt:
        msgs.insert(0, {"role": "system", "content": handle.system_prompt})
    text = handle.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return text, True


def model_context(handle: ModelHandle) -> int | None:
    """The model's context window in tokens (generation's definition), or None if unknown."""
    try:
        from knowlens.generation import context_limit
    except ImportError:  # older generation module: the config's position limit
        cfg = getattr(handle.config, "text_config", None) or handle.config
        ctx = getattr(cfg, "max_position_embeddings", None)
        return int(ctx) if ctx else None
    limit = context_limit(handle)
    return int(limit[0]) if limit else None


def default_max_prompt_tokens(handle: ModelHandle) -> int:
    ctx = model_context(handle)
    if ctx is None:
        return DEFAULT_PROMPT_CAP // 2
    return max(1, min(ctx - SERVE_MAX_TOKENS, DEFAULT_PROMPT_CAP))


# -- cancellation and turn-taking inside the forward pass --------------------------------
class _Cancelled(Exception):
    pass


_tls = threading.local()  # .job: the server job this thread is decoding (None elsewhere)
_HOOKS: dict[int, list[Any]] = {}  # id(model) -> [refcount, hook handles]
_HOOKS_LOCK = threading.Lock()


def _layer_pre_hook(module: Any, args: Any) -> None:
    job = getattr(_tls, "job", None)
    if job is None:  # not a server worker (e.g. a local generate in the same process)
        return
    if job.cancel_event.is_set():
        raise _Cancelled(job.cancel_reason)
    if not job.short:
        job.turns.maybe_yield(job)
        if job.cancel_event.is_set():
            raise _Cancelled(job.cancel_reason)


def _hook_model(model: Any) -> None:
    from knowlens.models._handle import find_decoder_layers

    with _HOOKS_LOCK:
        ent = _HOOKS.get(id(model))
        if ent is not None:
            ent[0] += 1
            return
        try:
            mods = list(find_decoder_layers(model))
        except TypeError:  # unknown layout: per forward call (per decode step) only
            mods = [model]
        _HOOKS[id(model)] = [1, [m.register_forward_pre_hook(_layer_pre_hook) for m in mods]]


def _unhook_model(model: Any) -> None:
    with _HOOKS_LOCK:
        ent = _HOOKS.get(id(model))
        if ent is None:
            return
        ent[0] -= 1
        if ent[0] <= 0:
            for h in ent[1]:
                h.remove()
            del _HOOKS[id(model)]


class _Turns:
    """The model runs one forward at a time. Short jobs take it before a waiting long job and
    keep it to the end; a long job that has held it ``slice_s`` hands it to a waiting short
    job between two layers. A waiting long job is owed the turn after each short job, so a
    stream of short jobs slows it down but cannot starve it. (Only the "any" worker runs
    long jobs, so at most one long job waits at a time.)"""

    def __init__(self, slice_s: float = LONG_SLICE_S) -> None:
        self._cv = threading.Condition()
        self._owner: Any = None
        self._long_waiting: Any = None  # the long job waiting for the model
        self._owed = False  # a short job ran while it waited: it goes next
        self._short_waiting = 0
        self._since = 0.0
        self.slice_s = slice_s

    def _may_take(self, job: Any) -> bool:
        if self._owner is not None:
            return False
        if self._owed and self._long_waiting is not None:
            return job is self._long_waiting
        return job.short or self._short_waiting == 0

    def acquire(self, job: Any) -> None:
        with self._cv:
            if job.short:
                self._short_waiting += 1
            else:
                self._long_waiting, self._owed = job, False
            try:
                while not self._may_take(job):
                    self._cv.wait()
            finally:
                if job.short:
                    self._short_waiting -= 1
                elif self._long_waiting is job:
                    self._long_waiting, self._owed = None, False
            self._owner, self._since = job, time.monotonic()

    def release(self, job: Any) -> None:
        with self._cv:
            if self._owner is job:
                self._owner = None
                if job.short and self._long_waiting is not None:
                    self._owed = True
                self._cv.notify_all()

    def maybe_yield(self, job: Any) -> None:
        # Unlocked read first: the common case (nobody waiting) costs one attribute load.
        if self._short_waiting and time.monotonic() - self._since >= self.slice_s:
            self.release(job)
            self.acquire(job)


# -- jobs and the scheduler -------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class _Job:
    prompt_ids: list[int]
    max_tokens: int
    short: bool
    stops: list[str]
    logprobs: bool
    loop: Any
    future: Any
    n: int = 1
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    turns: Any = None
    cancel_event: threading.Event = dataclasses.field(default_factory=threading.Event)
    cancel_reason: str = ""

    def resolve(self, outcome: tuple[str, Any]) -> None:
        def _set() -> None:
            if not self.future.done():
                self.future.set_result(outcome)

        # RuntimeError: the event loop is already closed (shutdown); nobody is waiting.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_set)


def _finish(tok: Any, row: dict[str, Any], stops: list[str], logprobs: bool) -> dict[str, Any]:
    """Answer text, finish reason, token count and (optionally) OpenAI logprobs of one row."""
    ids, lps = row["answer_ids"], row["token_logprobs"]
    text = tok.decode(ids, skip_special_tokens=True)  # as generate_examples decodes
    finish = "length" if row["stop_reason"] == "length" else "stop"
    keep = n_tokens = len(ids)
    hits = [(text.find(s), len(s)) for s in stops if s in text]
    if hits:
        cut, length = min(hits)
        # decode-prefix alignment: token k ends at len(decode(ids[:k+1])) (exact for any ids)
        ends = np.maximum.accumulate(
            [
                len(p)
                for p in tok.batch_decode(
                    [ids[: k + 1] for k in range(len(ids))], skip_special_tokens=True
                )
            ]
        )
        keep = int(np.sum(ends <= cut))
        n_tokens = int(np.searchsorted(ends, cut + length)) + 1
        text, finish = text[:cut], "stop"
    content = None
    if logprobs:
        pieces = tok.batch_decode([[i] for i in ids[:keep]], skip_special_tokens=True)
        content = [
            {
                "token": p,
                "logprob": float(lp),
                "bytes": list(p.encode("utf-8")),
                "top_logprobs": [],
            }
            for p, lp in zip(pieces, lps[:keep], strict=True)
        ]
    return {"text": text, "finish": finish, "n_tokens": n_tokens, "logprobs": content}


class Scheduler:
    """Bounded waiting list + two model workers (see module docstring)."""

    def __init__(self, handle: ModelHandle, *, max_queue: int, short_job_tokens: int) -> None:
        self.handle = handle
        self.max_queue = max_queue
        self.short_job_tokens = short_job_tokens
        self.turns = _Turns()
        self.tok_lock = threading.Lock()  # one tokenizer, used by prep and worker threads
        self.counts: Counter[str] = Counter()
        self._cv = threading.Condition()
        self._waiting: list[_Job] = []
        self._running: set[_Job] = set()
        self._threads: list[threading.Thread] = []
        self._idle: set[str] = set()  # lanes whose worker is waiting for a job
        self._closed = False
        _hook_model(handle.model)
        self._hooked = True

    # called on the event loop -------------------------------------------------------
    def submit(self, job: _Job) -> None:
        job.turns = self.turns
        with self._cv:
            if self._closed:
                raise ApiError(503, "the server is shutting down; retry on another server.")
            # A job that an idle worker takes at once (nothing it would pick first is waiting)
            # does not wait, so a full queue of long jobs never turns a short one away.
            starts_now = ("any" in self._idle and not self._waiting) or (
                job.short and "short" in self._idle and not any(j.short for j in self._waiting)
            )
            if len(self._waiting) >= self.max_queue and not starts_now:
                self.counts["rejected_queue_full"] += 1
                raise ApiError(
                    429,
                    f"server busy: {len(self._waiting)} requests are already waiting "
                    f"(--max-queue {self.max_queue}); retry later or raise --max-queue.",
                    code="queue_full",
                )
            self._waiting.append(job)
            if not self._threads:  # started lazily: an app that never serves starts none
                for lane in ("any", "short"):
                    t = threading.Thread(
                        target=self._worker,
                        args=(lane,),
                        name=f"knowlens-serve-{lane}",
                        daemon=True,
                    )
                    t.start()
                    self._threads.append(t)
            self._cv.notify_all()

    def cancel(self, job: _Job, reason: str) -> None:
        with self._cv:
            if job.cancel_event.is_set():
                return
            job.cancel_reason = reason
            job.cancel_event.set()
            queued = job in self._waiting
            if queued:
                self._waiting.remove(job)
            self.counts[f"cancelled_{reason}"] += 1
        if queued:
            job.resolve(("cancelled", reason))

    def stats(self) -> dict[str, Any]:
        with self._cv:
            return {
                "queued": len(self._waiting),
                "running": len(self._running),
                "max_queue": self.max_queue,
                **dict(self.counts),
            }

    def close(self) -> None:
        """Cancel every queued and running job (their requests get 503) and stop the workers."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            jobs = self._waiting + list(self._running)
            self._cv.notify_all()
        for j in jobs:
            self.cancel(j, "shutdown")
        with self._cv:
            self._unhook_if_idle()

    def _unhook_if_idle(self) -> None:
        # Under self._cv. The hooks are what stops a running job, so they stay until the last
        # job of a closed scheduler has ended.
        if self._closed and self._hooked and not self._running:
            self._hooked = False
            _unhook_model(self.handle.model)

    # worker threads ------------------------------------------------------------------
    def _take(self, lane: str) -> _Job | None:
        for j in self._waiting:
            if lane == "any" or j.short:
                self._waiting.remove(j)
                self._running.add(j)
                return j
        return None

    def _worker(self, lane: str) -> None:
        while True:
            with self._cv:
                job = None
                while not self._closed and (job := self._take(lane)) is None:
                    self._idle.add(lane)
                    self._cv.wait()
                self._idle.discard(lane)
                if job is None:
                    return
            try:
                outcome = self._run(job)
            except Exception as e:  # reported to the client as a 500
                outcome = ("error", f"{type(e).__name__}: {e}")
            with self._cv:
                self._running.discard(job)
                if outcome[0] == "ok":
                    self.counts["completed"] += 1
                self._unhook_if_idle()
            job.resolve(outcome)

    def _run(self, job: _Job) -> tuple[str, Any]:
        from knowlens.generation import (
            GenerationSettings,
            TokenSampler,
            _decode_batch,
            sample_seed,
        )

        settings = GenerationSettings(
            max_new_tokens=job.max_tokens, batch_size=1, stop_on_newline=False, task="serve"
        )
        chooser = None  # greedy: one row, repeated n times in the response
        if job.temperature > 0:  # n rows after one prefill, seeded as kl.sample seeds them
            seeds = [sample_seed(job.seed, SAMPLE_ID, j) for j in range(job.n)]
            chooser = TokenSampler(seeds, job.n, job.temperature, job.top_p)
        _tls.job = job
        self.turns.acquire(job)
        try:
            if job.cancel_event.is_set():
                raise _Cancelled(job.cancel_reason)
            rows = _decode_batch(self.handle, [job.prompt_ids], settings, chooser)
        except _Cancelled:
            return ("cancelled", job.cancel_reason)
        finally:
            self.turns.release(job)
            _tls.job = None
        tok = self.handle.tokenizer
        with self.tok_lock:
            return ("ok", [_finish(tok, row, job.stops, job.logprobs) for row in rows])


# -- the app ----------------------------------------------------------------------------
def _check_semantics(req: ChatRequest) -> None:
    """Reject values this server cannot honour (never ignore them silently)."""
    if req.stream:
        raise ApiError(400, "stream=true is not supported; send stream=false.", "stream")
    if req.temperature and req.temperature < MIN_TEMPERATURE:
        raise ApiError(
            400,
            f"temperature={req.temperature} is too small to sample with (the scaled logits "
            f"overflow); send 0 for greedy answers or a temperature >= {MIN_TEMPERATURE}.",
            "temperature",
        )
    for f in ("presence_penalty", "frequency_penalty"):
        v = getattr(req, f)
        if v not in (None, 0):
            raise ApiError(400, f"{f}={v} is not supported (supported: 0 or absent).", f)
    if req.top_logprobs:
        raise ApiError(
            400,
            f"top_logprobs={req.top_logprobs} is not supported: only the chosen token's "
            "log-prob is available (supported: 0 or absent, with logprobs=true).",
            "top_logprobs",
        )
    if req.top_logprobs is not None and not req.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs=true.", "top_logprobs")
    if (
        req.max_tokens is not None
        and req.max_completion_tokens is not None
        and req.max_tokens != req.max_completion_tokens
    ):
        raise ApiError(
            400,
            f"max_tokens={req.max_tokens} and max_completion_tokens="
            f"{req.max_completion_tokens} disagree; send one of them.",
            "max_tokens",
        )
    mt = req.max_completion_tokens or req.max_tokens
    if mt is not None and mt > SERVE_MAX_TOKENS:
        raise ApiError(
            400,
            f"max_tokens={mt} exceeds this server's limit of {SERVE_MAX_TOKENS}; "
            f"send max_tokens <= {SERVE_MAX_TOKENS}.",
            "max_tokens",
        )
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise ApiError(
            400, f"stop must be up to {MAX_STOP} non-empty strings; got {req.stop!r:.80}.", "stop"
        )


def create_app(
    handle: ModelHandle,
    *,
    model_name: str | None = None,
    max_prompt_tokens: int | None = None,
    request_timeout: float = 300.0,
    max_queue: int = 16,
    short_job_tokens: int = 512,
    max_body_bytes: int | None = None,
) -> Any:
    """The FastAPI app serving ``handle`` (a ModelHandle) under ``model_name``.

    Args:
        max_prompt_tokens: longest prompt (tokens, after the chat template); default the
            model context minus :data:`SERVE_MAX_TOKENS`, at most :data:`DEFAULT_PROMPT_CAP`.
        request_timeout: seconds from arrival to answer (queue wait included); then 504.
        max_queue: requests allowed to wait for a worker; more get 429.
        short_job_tokens: prompt + max_tokens up to this is a short job (own worker, takes the
            model from a long job between layers).
        max_body_bytes: largest request body; default ``max(1 MiB, 64 * max_prompt_tokens)``.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    name = model_name or handle.name
    ctx = model_context(handle)
    if max_prompt_tokens is None:
        max_prompt_tokens = default_max_prompt_tokens(handle)
    if not isinstance(max_prompt_tokens, int) or max_prompt_tokens < 1:
        raise KnowlensError(
            f"max_prompt_tokens must be a positive integer; got {max_prompt_tokens!r}. "
            f"Use e.g. --max-prompt-tokens {default_max_prompt_tokens(handle)}."
        )
    if ctx is not None and max_prompt_tokens >= ctx:
        raise KnowlensError(
            f"--max-prompt-tokens {max_prompt_tokens} leaves no room to answer: the model "
            f"context is {ctx} tokens. Use at most {ctx - 1} (default "
            f"{default_max_prompt_tokens(handle)})."
        )
    if not request_timeout > 0:
        raise KnowlensError(
            f"request_timeout must be > 0 seconds; got {request_timeout!r}. Use e.g. "
            "--request-timeout 300."
        )
    if not isinstance(max_queue, int) or max_queue < 1:
        raise KnowlensError(
            f"max_queue must be a positive integer; got {max_queue!r}. Use e.g. --max-queue 16."
        )
    body_limit = max_body_bytes or max(1 << 20, 64 * max_prompt_tokens)

    sched = Scheduler(handle, max_queue=max_queue, short_job_tokens=short_job_tokens)
    prep_pool = ThreadPoolExecutor(2, thread_name_prefix="knowlens-serve-prep")
    # Build generation's vocabulary tables now, not concurrently inside a request; only a
    # warm-up (the decode loop builds them anyway), so a failure here is not an error.
    with contextlib.suppress(Exception):
        from knowlens.generation import _vocab_flags

        _vocab_flags(handle.tokenizer, handle.model.get_output_embeddings().weight.shape[0])

    @asynccontextmanager
    async def lifespan(app: Any):
        yield
        sched.close()
        prep_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=f"knowlens serve: {name}", lifespan=lifespan)
    app.state.scheduler = sched
    app.state.limits = {
        "max_prompt_tokens": max_prompt_tokens,
        "request_timeout": request_timeout,
        "max_queue": max_queue,
        "max_body_bytes": body_limit,
        "context": ctx,
    }

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "knowlens"}]}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, **app.state.limits, **sched.stats()}

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        too_big = ApiError(
            413,
            f"request body exceeds {body_limit} bytes (this server's limit, from "
            f"--max-prompt-tokens {max_prompt_tokens}); send a shorter prompt.",
            "messages",
            "body_too_large",
        )
        if declared and declared.isdigit() and int(declared) > body_limit:
            raise too_big
        from starlette.requests import ClientDisconnect

        chunks, n = [], 0
        try:
            async for chunk in request.stream():
                n += len(chunk)
                if n > body_limit:
                    raise too_big
                chunks.append(chunk)
        except ClientDisconnect:
            raise ApiError(499, "client disconnected while sending the request.") from None
        return b"".join(chunks)

    def prepare(messages: list[dict[str, Any]]) -> list[int]:
        from jinja2.exceptions import TemplateError

        from knowlens.generation import _encode

        with sched.tok_lock:
            try:
                text, templated = render_messages(handle, messages)
            except TemplateError as e:  # e.g. Gemma's template refuses a system message
                raise ApiError(
                    400,
                    f"the model's chat template rejected these messages: {e}. The local path "
                    "would fail the same way; change the roles (e.g. no system message).",
                    "messages",
                ) from None
            return _encode(handle, text, templated)

    async def run_chat(request: Request, t0: float) -> dict[str, Any]:
        raw = await read_body(request)
        try:
            payload = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON ({e}).", None) from None
        if not isinstance(payload, dict):
            raise ApiError(
                400, f"the request body must be a JSON object; got {type(payload).__name__}."
            )
        try:
            req = ChatRequest.model_validate(payload)
        except ValidationError as e:
            raise _validation_error(e) from None
        if req.model != name:
            raise ApiError(
                404,
                f"model '{req.model}' not served here; this server has '{name}'.",
                "model",
                "model_not_found",
            )
        _check_semantics(req)
        loop = asyncio.get_running_loop()
        messages = [m.model_dump() for m in req.messages]
        try:
            ids = await loop.run_in_executor(prep_pool, prepare, messages)
        except RuntimeError:  # the pool is shut down: the server is stopping
            raise ApiError(503, "the server is shutting down; retry on another server.") from None
        n_prompt = len(ids)
        if n_prompt == 0:
            raise ApiError(400, "the messages render to an empty prompt.", "messages")
        if n_prompt > max_prompt_tokens:
            sched.counts["rejected_prompt_too_long"] += 1
            raise ApiError(
                413,
                f"prompt is {n_prompt} tokens; this server accepts at most {max_prompt_tokens} "
                f"(--max-prompt-tokens {max_prompt_tokens}). Shorten the prompt or restart the "
                "server with a larger --max-prompt-tokens.",
                "messages",
                "prompt_too_long",
            )
        room = (ctx - n_prompt) if ctx is not None else SERVE_MAX_TOKENS
        asked = req.max_completion_tokens or req.max_tokens
        if asked is not None and asked > room:
            raise ApiError(
                400,
                f"prompt ({n_prompt} tokens) + max_tokens ({asked}) exceeds the model context "
                f"({ctx}); send max_tokens <= {room}.",
                "max_tokens",
                "context_length_exceeded",
            )
        max_tokens = asked or min(DEFAULT_MAX_TOKENS, room)
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        n = req.n or 1
        job = _Job(
            prompt_ids=ids,
            max_tokens=max_tokens,
            short=n_prompt + max_tokens <= short_job_tokens,
            stops=stops,
            logprobs=bool(req.logprobs),
            loop=loop,
            future=loop.create_future(),
            n=n,
            temperature=float(req.temperature or 0.0),
            top_p=float(1.0 if req.top_p is None else req.top_p),
            # no seed: a fresh one per request (63 bits, as sample_seed's)
            seed=int(req.seed) if req.seed is not None else secrets.randbits(63),
        )
        sched.submit(job)
        try:
            while not job.future.done():
                left = t0 + request_timeout - time.monotonic()
                if left <= 0:
                    sched.cancel(job, "timeout")
                    raise ApiError(
                        504,
                        f"no answer within --request-timeout {request_timeout:g} s (prompt "
                        f"{n_prompt} tokens, max_tokens {max_tokens}); the generation was "
                        "stopped. Lower max_tokens or raise --request-timeout.",
                        None,
                        "timeout",
                    )
                await asyncio.wait({job.future}, timeout=min(POLL_S, left))
                if not job.future.done() and await request.is_disconnected():
                    sched.cancel(job, "disconnect")
                    raise ApiError(499, "client disconnected; generation stopped.")
        finally:
            if not job.future.done():  # e.g. this task was cancelled at shutdown
                sched.cancel(job, "abandoned")
        kind, value = job.future.result()
        if kind == "cancelled":
            if value == "shutdown":
                raise ApiError(503, "the server is shutting down; the generation was stopped.")
            raise ApiError(499, f"generation cancelled ({value}).")
        if kind == "error":
            raise ApiError(500, f"generation failed: {value}")
        outs = value if len(value) == n else value * n  # greedy: n identical choices
        n_tokens = sum(o["n_tokens"] for o in outs)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
            "system_fingerprint": f"knowlens-{handle.fingerprint[:12]}",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": o["text"]},
                    "logprobs": (
                        {"content": o["logprobs"], "refusal": None}
                        if o["logprobs"] is not None
                        else None
                    ),
                    "finish_reason": o["finish"],
                }
                for i, o in enumerate(outs)
            ],
            "usage": {
                "prompt_tokens": n_prompt,
                "completion_tokens": n_tokens,
                "total_tokens": n_prompt + n_tokens,
            },
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        try:
            return await run_chat(request, time.monotonic())
        except ApiError as e:
            return e.response()

    return app


# -- helpers for tests and the CLI ------------------------------------------------------
def complete(
    handle: ModelHandle, messages: list[dict[str, Any]], max_tokens: int
) -> tuple[str, int, int, str]:
    """Greedy completion of a chat in-process: (text, prompt tokens, completion tokens,
    finish reason); the same rendering and decoding as a served request."""
    from knowlens.generation import GenerationSettings, _decode_batch, _encode

    text, templated = render_messages(handle, messages)
    ids = _encode(handle, text, templated)
    settings = GenerationSettings(
        max_new_tokens=max_tokens, batch_size=1, stop_on_newline=False, task="serve"
    )
    row = _decode_batch(handle, [ids], settings)[0]
    out = _finish(handle.tokenizer, row, [], False)
    return out["text"], len(ids), out["n_tokens"], out["finish"]


def serve(
    spec: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    name: str | None = None,
    max_prompt_tokens: int | None = None,
    request_timeout: float = 300.0,
    max_queue: int = 16,
) -> None:
    """Load ``spec`` and serve it until SIGTERM / Ctrl-C (blocking)."""
    import uvicorn

    from knowlens.models import load_model

    handle = load_model(spec, device=device)
    app = create_app(
        handle,
        model_name=name or spec,
        max_prompt_tokens=max_prompt_tokens,
        request_timeout=request_timeout,
        max_queue=max_queue,
    )

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            # Stop model work now, so in-flight requests end (503) and uvicorn's graceful
            # wait is short. From a thread: the signal may interrupt the loop while it holds
            # the scheduler lock.
            threading.Thread(target=app.state.scheduler.close, daemon=True).start()

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3
    )
    _Server(config).run()
