"""Asking the model: the Zero-Shot Classifier (Kapoor et al.) and P(True) (Kadavath et al.).

Both read only the *text* of a question and an answer, so they judge any model's answers
(cross-model use, FIGURES.md section 2, needs nothing extra: the judging model is ``model``).

    zsc = ZeroShotClassifier(model=handle).fit(gens_train)   # no training; fit validates
    p = zsc.predict_proba(gens_test)                          # (n,) P(correct) = p("ii")

Answer-token ids are chosen robustly across tokenizers: for a label such as ``"ii"`` every
variant among ``"ii"`` and ``" ii"`` that encodes to exactly one token counts, and the label's
logit is the logsumexp over its variants (BPE tokenizers usually continue ``"Answer:"`` with
``" ii"``, chat templates start the assistant turn with ``"ii"``). The two labels' variant
sets must be disjoint and non-empty, else a ``KnowlensError`` names the tokenizer.

**Shared reads** (:class:`QueryReads`, one per analysis run, owned by ``EstimatorBench``).
The frozen reader's forward pass over a query yields at once what several estimators read:
the next-token label probabilities (Zero-Shot Classifier, P(True)), the last token's hidden
states (the MLP probe read on the query, as calibration-tuning's ``with_query`` classifier)
and the final-norm states at the answer tokens (LoRA + Prompt's frozen distribution for its
JS term). ``QueryReads.read`` runs each distinct (reader, token ids) once and keeps all of
it; later requests for the same query are served from memory::

    reads = QueryReads()
    zsc = ZeroShotClassifier(model=m, reads=reads).fit()
    p = zsc.predict_proba(gens)                          # one forward per query
    acts = query_activations(reads, m, gens)             # the probe's features: no forward
    reads.rows_run                                       # sequences the model read

Values equal the separate passes (same batches: bit for bit; other batches: ~1e-7): the
hidden states are read by the activations stage's hooks (``Trace`` at ``hook_points``,
the same modules ``extract`` reads) during the pass that computes the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from knowlens._cache import stable_hash
from knowlens._types import ActivationSet, GenerationSet
from knowlens.errors import ConfigError, KnowlensError
from knowlens.estimators._base import Estimator, Features, Labels, check_gens
from knowlens.estimators._registry import generations, register_estimator
from knowlens.estimators._text import encode, questions_for

if TYPE_CHECKING:
    import torch

    from knowlens.models import ModelHandle

__all__ = [
    "PTRUE_TEMPLATE",
    "QUERY_READS_VERSION",
    "ZSC_LABELS",
    "ZSC_TEMPLATE",
    "PTrue",
    "Query",
    "QueryRead",
    "QueryReads",
    "ZeroShotClassifier",
    "answer_token_span",
    "batched_label_probs",
    "label_probs",
    "label_token_ids",
    "queries",
    "query_activations",
    "zsc_queries",
    "zsc_texts",
]

#: part of the key of query-read features (bump when what a read returns changes)
QUERY_READS_VERSION = "2"  # 2: shared prompt prefixes run once (ulps)

#: FIGURES.md section 1, "Zero-Shot Classifier" (verbatim).
ZSC_TEMPLATE = (
    "{question} {answer}\n\nIs the proposed answer correct?\nChoices:\n(i): no\n(ii): yes\nAnswer:"
)

#: the Zero-Shot Classifier's answer labels: "i" = no (wrong), "ii" = yes (correct)
ZSC_LABELS = ("i", "ii")

#: Kadavath et al. (2022) P(True) prompt; ``{first}`` / ``{second}`` are "True" / "False"
#: (and swapped for the order-reversed query).
PTRUE_TEMPLATE = (
    "Question: {question}\nProposed Answer: {answer}\nIs the proposed answer:\n"
    " (A) {first}\n (B) {second}\nThe proposed answer is:"
)


def label_token_ids(tokenizer: Any, labels: Sequence[str]) -> list[list[int]]:
    """Single-token ids of each label's variants (``label`` and ``" " + label``)."""
    out: list[list[int]] = []
    for label in labels:
        ids: list[int] = []
        for variant in (label, " " + label):
            enc = tokenizer.encode(variant, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(int(enc[0]))
        out.append(ids)
    flat = [i for ids in out for i in ids]
    if any(not ids for ids in out) or len(flat) != len(set(flat)):
        raise KnowlensError(
            f"The tokenizer ({type(tokenizer).__name__}) has no distinct single-token encoding "
            f"of the answer labels {list(labels)} (got {out}); this query-based estimator "
            "cannot be used with it. Use a probe or a logit baseline instead."
        )
    return out


def label_probs(logits: torch.Tensor, label_ids: list[list[int]]) -> torch.Tensor:
    """Softmax over the labels, each label's logit = logsumexp of its variants' logits.
    ``logits``: (B, V) tensor -> (B, n_labels)."""
    import torch

    per_label = torch.stack([torch.logsumexp(logits[:, ids], dim=-1) for ids in label_ids], -1)
    return torch.softmax(per_label.float(), dim=-1)


def batched_label_probs(
    handle: ModelHandle,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    batch_size: int,
    max_length: int | None,
    progress: bool,
    description: str,
) -> np.ndarray:
    """P(label) for every text under ``handle.model`` (inference mode), (n, n_labels).
    Batches are formed in length order (less padding) and results returned in input order."""
    import torch
    from rich.progress import Progress

    from knowlens.generation import SharedPrefixes

    tok = handle.tokenizer
    label_ids = label_token_ids(tok, labels)
    seqs = [encode(tok, t) for t in texts]
    if max_length is not None:  # longer ones keep their last tokens
        seqs = [s[-max_length:] for s in seqs]
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = np.empty((len(seqs), len(labels)))
    with (
        torch.inference_mode(),
        Progress(disable=not progress, transient=True) as bar,
    ):
        shared = SharedPrefixes(handle, [seqs[j] for j in order])  # a few-shot block once
        task = bar.add_task(description, total=len(seqs))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            logits = shared.forward(range(i, i + len(idx)))[0].logits[:, -1, :]
            out[idx] = label_probs(logits, label_ids).double().cpu().numpy()
            bar.advance(task, len(idx))
    return out


def zsc_texts(
    handle: ModelHandle,
    gens: GenerationSet,
    questions: Sequence[str] | None = None,
    *,
    use_chat_template: bool = True,
) -> list[str]:
    """The Zero-Shot Classifier query of every row, rendered for ``handle`` (chat template
    applied for chat models)."""
    qs = questions_for(gens, questions)
    return [
        handle.format_prompt(
            ZSC_TEMPLATE.format(question=q, answer=g.answer.strip()),
            use_chat_template=use_chat_template,
        )
        for g, q in zip(gens.rows, qs, strict=True)
    ]


def answer_token_span(tokenizer: Any, query: str, answer: str, ids: list[int]) -> tuple[int, int]:
    """[s, e) token indices of ``answer`` inside the encoded ZSC ``query`` (``ids``).

    The answer is located by characters (it precedes "\\n\\nIs the proposed answer
    correct?"), then mapped to tokens as the common prefix of ``ids`` with the encodings of
    the text before and after it, which is robust to BPE merges at the boundaries.
    """
    marker = f" {answer}\n\nIs the proposed answer correct?"
    start = query.rfind(marker) + 1
    if start == 0 or not answer:
        return (0, 0)
    end = start + len(answer)

    def common(prefix: str) -> int:
        enc = encode(tokenizer, prefix)
        n = 0
        while n < min(len(enc), len(ids)) and enc[n] == ids[n]:
            n += 1
        return n

    s = common(query[:start])
    e = max(common(query[:end]), s)
    return (s, e)


# -- shared reads ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """One query as the reader reads it.

    Attributes:
        ids: token ids, left-truncated to the reader's ``max_length`` (the end of a query is
            what the next token depends on).
        span: ``[s, e)`` of the answer's tokens inside ``ids`` (``s >= 1``; empty when the
            answer was not located or was cut off): positions ``s-1 .. e-2`` predict them.
    """

    ids: tuple[int, ...]
    span: tuple[int, int] = (1, 0)


def queries(
    handle: ModelHandle, texts: Sequence[str], *, max_length: int | None = None
) -> list[Query]:
    """``Query`` of every text (no answer span), encoded as the query estimators encode."""
    tok = handle.tokenizer
    out = []
    for t in texts:
        ids = encode(tok, t)
        out.append(Query(tuple(ids[-max_length:] if max_length else ids)))
    return out


def zsc_queries(
    handle: ModelHandle,
    gens: GenerationSet,
    questions: Sequence[str] | None = None,
    *,
    use_chat_template: bool = True,
    max_length: int | None = None,
) -> list[Query]:
    """The Zero-Shot Classifier query of every row as ``handle`` reads it, with the answer's
    token span (LoRA + Prompt's JS positions); left truncation shifts the span."""
    tok = handle.tokenizer
    texts = zsc_texts(handle, gens, questions, use_chat_template=use_chat_template)
    out = []
    for q, g in zip(texts, gens.rows, strict=True):
        ids = encode(tok, q)
        s, e = answer_token_span(tok, q, g.answer.strip(), ids)
        cut = max(0, len(ids) - max_length) if max_length else 0
        out.append(Query(tuple(ids[cut:]), (max(s - cut, 1), e - cut)))
    return out


@dataclass
class QueryRead:
    """What :meth:`QueryReads.read` returns, rows in request order.

    Attributes:
        probs: ``(n, n_labels)`` float64 label probabilities of the next token.
        last: ``{layer: (n, d_model) float32}`` hidden state at each query's last token.
        answer: per row, ``(e - s, d_model)`` float32 final-norm states at positions
            ``s-1 .. e-2`` (those that predict the answer tokens; empty for an empty span).
    """

    probs: np.ndarray
    last: dict[int, np.ndarray]
    answer: list[np.ndarray]


@dataclass
class _Entry:
    probs: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict)
    last: dict[int, np.ndarray] = field(default_factory=dict)
    answer: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)


class QueryReads:
    """The frozen readers' forward passes over query texts, shared for one run.

    Each distinct (reader ``target_id``, token ids) is run once; the pass keeps the label
    probabilities asked for, the last token's hidden state at the requested layers (always
    ``n_layers``, after the final norm: what the LM head reads, and the MLP probe's default
    feature) and the final-norm states at the answer tokens. A later request that needs
    something a pass did not keep (other labels, another layer) runs those queries again.
    Rows are batched longest-last in length order (left padding, ``pad_batch``), as
    ``batched_label_probs``: a request whose queries are all new gets bit-identical
    probabilities. Only the *frozen* model is read: never use it under attached adapters.

    Attributes:
        rows_run: sequences run through a model (tests and benchmarks count them).
        prefixes_run: shared prompt prefixes run once for several of them (their own rows).
        tokens_run, slots_run: real tokens (shared prefixes once) and padded token slots of
            the queries' passes.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, tuple[int, ...]], _Entry] = {}
        self.rows_run = 0
        self.prefixes_run = 0
        self.tokens_run = 0
        self.slots_run = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> QueryReads:
        return self  # a run's shared cache: clones of an estimator share it, as ``model``

    def __len__(self) -> int:
        return len(self._entries)

    def read(
        self,
        handle: ModelHandle,
        items: Sequence[Query],
        labels: Sequence[str],
        *,
        layers: Sequence[int] = (),
        batch_size: int = 8,
        progress: bool = False,
        description: str = "query",
    ) -> QueryRead:
        """Label probabilities, last-token states at ``layers`` (+ ``n_layers``) and answer
        states of ``items`` under ``handle`` (inference mode), running only what is new."""
        labels = tuple(labels)
        label_ids = label_token_ids(handle.tokenizer, labels)
        n = int(handle.n_layers)
        want = tuple(sorted({int(x) for x in layers} | {n}))
        tid = handle.target_id
        todo: dict[Query, None] = {}  # ordered, unique
        for q in items:
            e = self._entries.get((tid, q.ids))
            if (
                e is None
                or labels not in e.probs
                or any(x not in e.last for x in want)
                or (_nonempty(q.span) and q.span not in e.answer)
            ):
                todo[q] = None
        if todo:
            self._run(
                handle, list(todo), labels, label_ids, want, batch_size, progress, description
            )
        rows = [self._entries[(tid, q.ids)] for q in items]
        d = int(handle.d_model)
        return QueryRead(
            probs=np.stack([r.probs[labels] for r in rows]) if rows else np.empty((0, 2)),
            last={
                x: np.stack([r.last[x] for r in rows]) if rows else np.empty((0, d)) for x in want
            },
            answer=[
                r.answer[q.span] if _nonempty(q.span) else np.empty((0, d), np.float32)
                for r, q in zip(rows, items, strict=True)
            ],
        )

    def _run(
        self,
        handle: ModelHandle,
        todo: list[Query],
        labels: tuple[str, ...],
        label_ids: list[list[int]],
        layers: tuple[int, ...],
        batch_size: int,
        progress: bool,
        description: str,
    ) -> None:
        import torch
        from rich.progress import Progress

        from knowlens.activations import Trace, hook_points

        if int(batch_size) < 1:
            raise ConfigError(f"QueryReads: batch_size must be >= 1; got {batch_size}.")
        lm = handle.model
        if any("lora_" in name for name, _ in lm.named_modules()):
            raise KnowlensError(
                f"QueryReads read {handle.name} with LoRA adapters attached; its reads are "
                "of the frozen model. Read before attaching adapters (or without reads=)."
            )
        from knowlens.generation import SharedPrefixes

        points = hook_points(handle, layers)
        final = layers.index(int(handle.n_layers))  # answer states: the final norm's output
        order = np.argsort([len(q.ids) for q in todo], kind="stable")
        ordered = [todo[j] for j in order]
        with (
            torch.inference_mode(),
            Progress(disable=not progress, transient=True) as bar,
        ):
            # queries behind one few-shot block run it once; the positions read (the last
            # token, those predicting the answer) stay in each query's own forward
            cap = [q.span[0] - 1 if _nonempty(q.span) else len(q.ids) for q in ordered]
            shared = SharedPrefixes(handle, [q.ids for q in ordered], cap=cap)
            task = bar.add_task(description, total=len(todo))
            for i in range(0, len(ordered), batch_size):
                batch = ordered[i : i + batch_size]
                held: dict[int, torch.Tensor] = {}

                def keep(k: int, h: torch.Tensor, held: dict[int, torch.Tensor] = held) -> None:
                    held[k] = h.detach().float().cpu()  # copied: the network reuses h

                fed = shared.fed
                with Trace(points, keep):  # the last forward, the queries' own, is kept
                    out, mask, *_ = shared.forward(range(i, i + len(batch)))
                probs = label_probs(out.logits[:, -1, :], label_ids).double().cpu().numpy()
                width = int(mask.shape[1])
                for b, q in enumerate(batch):
                    e = self._entries.setdefault((handle.target_id, q.ids), _Entry())
                    e.probs[labels] = probs[b]
                    for k, layer in enumerate(layers):
                        e.last[layer] = held[k][b, -1].numpy().copy()
                    if _nonempty(q.span):
                        off = width - len(q.ids)  # left padding (after a shared prefix)
                        s, t = q.span
                        e.answer[q.span] = held[final][b, off + s - 1 : off + t - 1].numpy().copy()
                self.rows_run += len(batch)
                self.tokens_run += shared.fed - fed
                self.slots_run += int(mask.numel())
                bar.advance(task, len(batch))
            self.prefixes_run += shared.prefixes_run


def _nonempty(span: tuple[int, int]) -> bool:
    return span[1] > span[0]


def query_activations(
    reads: QueryReads,
    handle: ModelHandle,
    gens: GenerationSet,
    *,
    layer: int | None = None,
    questions: Sequence[str] | None = None,
    use_chat_template: bool = True,
    max_length: int = 1024,
    batch_size: int = 8,
) -> ActivationSet:
    """The reader's hidden state at the last token of each row's Zero-Shot Classifier query
    (the probe read on the query, calibration-tuning's ``with_query``), as an
    ``ActivationSet`` ``(n, 1, 1, d_model)`` float32 at ``layer`` (default ``n_layers``:
    after the final norm). Read through ``reads``: one pass shared with the Zero-Shot
    Classifier and LoRA + Prompt's frozen states; tokens as ``ZeroShotClassifier`` reads them
    (same ``max_length``), so its queries and these are the same passes."""
    layer = int(handle.n_layers if layer is None else layer)
    items = zsc_queries(
        handle, gens, questions, use_chat_template=use_chat_template, max_length=max_length
    )
    got = reads.read(handle, items, ZSC_LABELS, layers=[layer], batch_size=batch_size)
    n = len(items)
    return ActivationSet(
        values=got.last[layer][:, None, None, :],
        mask=np.ones((n, 1), dtype=bool),
        layers=[layer],
        tokens="last",
        example_ids=list(gens.example_ids),
        positions=np.array([[len(q.ids) - 1] for q in items], dtype=np.int64).reshape(n, 1),
        meta={
            "cache_key": stable_hash(
                {
                    "kind": "query_activations",
                    "model": handle.target_id,
                    "ids": gens.example_ids,
                    "queries": stable_hash([list(q.ids) for q in items]),
                    "layer": layer,
                    "code": QUERY_READS_VERSION,
                }
            ),
            "text": "query",
            "model_name": handle.name,
            "target_id": handle.target_id,
            "dtype": "float32",
        },
    )


Q = TypeVar("Q", bound="_QueryEstimator")


class _QueryEstimator(Estimator[GenerationSet]):
    _OBJECT_PARAMS: ClassVar[tuple[str, ...]] = ("model",)

    model: ModelHandle | None
    reads: QueryReads | None
    batch_size: int

    def __init__(
        self,
        *,
        model: ModelHandle | None = None,
        use_chat_template: bool = True,
        batch_size: int = 8,
        max_length: int = 1024,
        progress: bool = True,
        reads: QueryReads | None = None,
    ) -> None:
        self.model = model
        self.use_chat_template = use_chat_template
        self.batch_size = batch_size
        self.max_length = max_length
        self.progress = progress
        self.reads = reads

    def _json_params(self) -> dict[str, Any]:
        # ``reads`` is a run's shared cache (a live object like ``model``): not a setting,
        # so it stays out of saved parameters and cache keys; a loaded estimator reads alone
        return {k: v for k, v in super()._json_params().items() if k != "reads"}

    def _probs(self, items: list[Query], texts: list[str], description: str) -> np.ndarray:
        """Label probabilities of the queries: through the shared ``reads`` when given
        (one pass per query for the whole run), else one batched pass of their own."""
        if self.reads is not None:
            return self.reads.read(
                self._handle,
                items,
                self._labels(),
                batch_size=int(self.batch_size),
                progress=self.progress,
                description=description,
            ).probs
        return batched_label_probs(
            self._handle,
            texts,
            self._labels(),
            batch_size=self.batch_size,
            max_length=self.max_length,
            progress=self.progress,
            description=description,
        )

    @property
    def _handle(self) -> ModelHandle:
        """``model``, required: the handle that is asked."""
        if self.model is None:
            raise ConfigError(
                f"{type(self).__name__} needs model=ModelHandle (the model that is asked)."
            )
        return self.model

    def fit(self: Q, gens: GenerationSet | None = None, y: Labels = None) -> Q:
        """No training: checks the model's tokenizer supports the query and marks fitted."""
        handle = self._handle
        if int(self.batch_size) < 1:
            raise ConfigError(f"{type(self).__name__}: batch_size must be >= 1.")
        if gens is not None:
            check_gens(gens, f"{type(self).__name__}.fit")
        label_token_ids(handle.tokenizer, self._labels())
        self.model_id_ = handle.target_id
        return self

    def _labels(self) -> tuple[str, str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _train_key(self, X: Features, y: Labels = None) -> None:
        return None  # fit learns nothing from data

    def _state(self) -> dict[str, Any]:
        return {"model_id": self.model_id_}

    def _restore(self, state: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
        handle = self._handle
        if state["model_id"] != handle.target_id:
            raise KnowlensError(
                f"This {type(self).__name__} was saved for model {state['model_id']}; got "
                f"{handle.name} ({handle.target_id}). Load it with the same model."
            )
        self.model_id_ = state["model_id"]


@register_estimator(
    "zero_shot",
    display_name="Zero-Shot Classifier",
    inputs=generations(model=True),
    aliases=("zsc",),
)
class ZeroShotClassifier(_QueryEstimator):
    """Kapoor et al. (2024) Zero-Shot Classifier (FIGURES.md section 1).

    Asks ``model`` ``ZSC_TEMPLATE`` (``"{question} {answer}\\n\\nIs the proposed answer
    correct?\\nChoices:\\n(i): no\\n(ii): yes\\nAnswer:"``), in its chat template for chat
    models, and returns P(correct) = softmax(logit["i"], logit["ii"])["ii"].

    Args:
        model: the ``ModelHandle`` that is asked (the judging model; may differ from the
            model that answered).
        use_chat_template: wrap the query in the chat template when the model has one.
        batch_size: queries per forward pass.
        max_length: longest query in tokens (longer ones keep their last tokens).
        progress: show a progress bar.
        reads: a run's shared :class:`QueryReads` (the analyses pass theirs): queries another
            estimator already read (the probe's features, P(True)) are not run again.

    ``predict_proba(gens, questions=None)``: questions default to the user turn of each
    generation's prompt (``knowlens.estimators.user_turn``).
    """

    def _labels(self) -> tuple[str, str]:
        return ZSC_LABELS

    def predict_proba(
        self, gens: GenerationSet, questions: Sequence[str] | None = None
    ) -> np.ndarray:
        """P(correct) = p("ii"), shape (n,)."""
        self._check_fitted()
        check_gens(gens, "ZeroShotClassifier.predict_proba")
        handle = self._handle
        texts = zsc_texts(handle, gens, questions, use_chat_template=self.use_chat_template)
        items = (
            []
            if self.reads is None
            else zsc_queries(
                handle,
                gens,
                questions,
                use_chat_template=self.use_chat_template,
                max_length=self.max_length,
            )
        )
        return self._probs(items, texts, "zero-shot classifier")[:, 1]


@register_estimator(
    "p_true",
    display_name="P(True)",
    inputs=generations(model=True),
    aliases=("ptrue",),
)
class PTrue(_QueryEstimator):
    """Kadavath et al. (2022) P(True) with option-order reversal.

    Asks ``PTRUE_TEMPLATE`` twice, with "(A) True (B) False" and with "(A) False (B) True",
    each followed by an opening parenthesis (``" ("``, or ``"("`` at the start of a chat
    assistant turn) so the next token is the option letter; P(True) from each query is the
    two-way softmax over the letters "A"/"B" (variants as in the module docstring), and
    P(correct) is the mean of the two, cancelling the model's letter bias.

    Args: as ``ZeroShotClassifier``.
    """

    def _labels(self) -> tuple[str, str]:
        return ("A", "B")

    def _texts(self, gens: GenerationSet, questions: Sequence[str] | None, swap: bool) -> list[str]:
        qs = questions_for(gens, questions)
        handle = self._handle
        chat = self.use_chat_template and handle.has_chat_template
        first, second = ("False", "True") if swap else ("True", "False")
        out = []
        for g, q in zip(gens.rows, qs, strict=True):
            body = PTRUE_TEMPLATE.format(
                question=q, answer=g.answer.strip(), first=first, second=second
            )
            rendered = handle.format_prompt(body, use_chat_template=self.use_chat_template)
            out.append(rendered + ("(" if chat else " ("))
        return out

    def predict_proba(
        self, gens: GenerationSet, questions: Sequence[str] | None = None
    ) -> np.ndarray:
        """P(correct) = mean of p(True) over the two option orders, shape (n,)."""
        self._check_fitted()
        check_gens(gens, "PTrue.predict_proba")
        n = len(gens)
        texts = self._texts(gens, questions, False) + self._texts(gens, questions, True)
        items = (
            [] if self.reads is None else queries(self._handle, texts, max_length=self.max_length)
        )
        probs = self._probs(items, texts, "P(True)")
        return 0.5 * (probs[:n, 0] + probs[n:, 1])
