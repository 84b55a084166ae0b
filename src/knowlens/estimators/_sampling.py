"""Sample-based uncertainty: the spread of K answers sampled from the model that answered.

Every estimator here reads ``X = SampledGenerations`` (registry input ``samples()``): the
greedy answers (``X.gens``) and, row by row, ``K`` answers sampled for the same prompts
(``X.samples``, ``knowlens.sample``). ``uncertainty(X)`` is the paper's score (higher = less
confident, the value of the LM-Polygraph class of the same name fed the same statistics);
``predict_proba`` maps it to P(correct) by Platt scaling on the training split
(``ScoreEstimator``)::

    S = kl.sample(model, gens, k=5, temperature=1.0)
    X = SampledGenerations.of(gens, S)
    est = MonteCarloSequenceEntropy().fit(X_train)        # Platt on the training labels
    est.uncertainty(X_test)                               # -(1/K) sum_j log p(s_j | x)
    est.predict_proba(X_test)                             # P(correct)

Conventions shared by all of them (and by lm-polygraph's sampler): a sample with no answer
tokens is left out of every statistic (``SamplingGenerationCalculator`` drops it); an
example left with too few samples for the statistic gets NaN uncertainty (one warning per
call). Sequence log-probabilities are sums of ``Sample.token_logprobs``: the model's *raw*
(temperature 1, untruncated) distribution, as lm-polygraph records it, over the answer tokens
*excluding* the stop token (knowlens's convention for greedy answers too; lm-polygraph adds
the EOS token's log-prob to the sum but not to the length).

=========================================  =========================  ===================
class                                       config name                reads
=========================================  =========================  ===================
``MonteCarloSequenceEntropy``               ``mc_entropy``             sample log-probs
``MonteCarloNormalizedSequenceEntropy``     ``mc_normalized_entropy``  sample log-probs
``LexicalSimilarity``                       ``lexical_similarity``     sample texts
``EigenScore``                              ``eigenscore``             reader hidden states
``PTrueSampling``                           ``p_true_sampling``        reader, texts
=========================================  =========================  ===================
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from knowlens._cache import stable_hash
from knowlens._types import Generation, GenerationSet
from knowlens.errors import ConfigError, DataError
from knowlens.estimators._base import Features, Labels, check_nonempty
from knowlens.estimators._query import batched_label_probs, label_token_ids
from knowlens.estimators._registry import register_estimator, samples
from knowlens.estimators._score import ScoreEstimator
from knowlens.estimators._text import questions_for, retokenize

if TYPE_CHECKING:
    from knowlens.models import ModelHandle

__all__ = [
    "PTRUE_SAMPLING_TEMPLATE",
    "EigenScore",
    "LexicalSimilarity",
    "MonteCarloNormalizedSequenceEntropy",
    "MonteCarloSequenceEntropy",
    "PTrueSampling",
    "check_sampled",
    "eigenscore",
    "sample_rows",
    "samples_key",
]

#: Kadavath et al. (2022) P(True) with brainstormed samples in context (their section 3.2
#: format: each sample on its own line), with knowlens's option-order reversal.
PTRUE_SAMPLING_TEMPLATE = (
    "Question: {question}\nHere are some brainstormed ideas: {ideas}\n"
    "Possible Answer: {answer}\nIs the possible answer:\n (A) {first}\n (B) {second}\n"
    "The possible answer is:"
)


# -- inputs -----------------------------------------------------------------------------------
def check_sampled(X: Any, who: str) -> Any:
    """``X`` as a ``SampledGenerations`` whose samples are aligned to its answers."""
    gens, smp = getattr(X, "gens", None), getattr(X, "samples", None)
    if not isinstance(gens, GenerationSet) or smp is None or not hasattr(smp, "rows"):
        raise DataError(
            f"{who} reads sampled answers: pass SampledGenerations.of(gens, samples) "
            f"(samples from knowlens.sample(model, gens, k=...)); got {type(X).__name__}."
        )
    check_nonempty(len(gens), who, "generations")
    ids = [r.example_id for r in smp.rows]
    if ids != gens.example_ids:
        bad = next(
            (i for i, (a, b) in enumerate(zip(ids, gens.example_ids, strict=False)) if a != b),
            min(len(ids), len(gens)),
        )
        raise DataError(
            f"{who}: samples are not aligned to the answers ({len(ids)} sample rows for "
            f"{len(gens)} answers, first mismatch at row {bad}); build the input as "
            "SampledGenerations.of(gens, samples)."
        )
    return X


def samples_key(smp: Any) -> str:
    """Content key of a SampleSet: which model sampled, and every sample's token ids."""
    meta = getattr(smp, "meta", {}) or {}
    return stable_hash(
        {
            "model": meta.get("fingerprint") or meta.get("target_id") or meta.get("model"),
            "settings": {
                k: meta.get(k) for k in ("k", "temperature", "top_p", "seed", "max_new_tokens")
            },
            "ids": [r.example_id for r in smp.rows],
            "answers": stable_hash([r.answer_ids for r in smp.rows], length=32),
        }
    )


def _used(sample: Any) -> list[int]:
    """Indices of the samples that have answer tokens (empty ones are left out)."""
    return [j for j, ids in enumerate(sample.answer_ids) if len(ids) > 0]


def _warn_undefined(u: np.ndarray, who: str, need: str) -> None:
    n = int(np.isnan(u).sum())
    if n:
        warnings.warn(
            f"{who}: {n} of {len(u)} examples have {need}; their uncertainty is NaN.",
            stacklevel=3,
        )


def sample_rows(smp: Any, gens: GenerationSet) -> GenerationSet:
    """The non-empty samples as a GenerationSet (one row per sample, id ``<example>#<j>``),
    with the answering model's fingerprint in ``meta`` so ``retokenize`` / ``extract`` read
    them as that model's answers."""
    rows = []
    for g, s in zip(gens.rows, smp.rows, strict=True):
        for j in _used(s):
            rows.append(
                Generation(
                    example_id=f"{s.example_id}#{j}",
                    task=s.task,
                    prompt=s.prompt,
                    answer=s.texts[j],
                    prompt_ids=list(s.prompt_ids),
                    answer_ids=list(s.answer_ids[j]),
                    token_logprobs=list(s.token_logprobs[j]),
                    token_entropies=list(s.token_entropies[j]),
                    correct=s.correct[j],
                    grader="sample",
                    gold=list(s.gold),
                    stop_reason=s.stop_reasons[j],
                    user_turn=s.user_turn if s.user_turn is not None else g.user_turn,
                )
            )
    meta = dict(getattr(smp, "meta", {}) or {})
    fp = meta.get("fingerprint") or meta.get("target_id") or gens.meta.get("target_id")
    out_meta: dict[str, Any] = {"samples_of": samples_key(smp), "task": gens.meta.get("task")}
    if fp is not None:
        out_meta["fingerprint"] = fp
    return GenerationSet(rows, out_meta)


# -- base -------------------------------------------------------------------------------------
class _SampleScore(ScoreEstimator):
    """A ScoreEstimator over ``SampledGenerations``: checks the input and keys a fit by the
    samples too (two sample draws of the same answers are different training data)."""

    def fit(self, X: Features, y: Labels = None) -> Any:
        check_sampled(X, f"{type(self).__name__}.fit")
        self._check_params()
        return super().fit(X, y)

    def _check_params(self) -> None:
        return None

    def _train_key(self, X: Features, y: Labels = None) -> str | None:
        base = super()._train_key(X, y)
        if base is None:
            return None
        return stable_hash({"answers": base, "samples": samples_key(X.samples)})  # type: ignore[union-attr]


def _sequence_logprobs(sample: Any) -> list[float]:
    return [float(np.sum(sample.token_logprobs[j], dtype=np.float64)) for j in _used(sample)]


@register_estimator(
    "mc_entropy",
    display_name="MC sequence entropy",
    inputs=samples(),
    aliases=("MonteCarloSequenceEntropy",),
)
class MonteCarloSequenceEntropy(_SampleScore):
    """Monte-Carlo sequence (predictive) entropy (Kuhn et al. 2023, "predictive entropy";
    Malinin & Gales 2021; LM-Polygraph ``MonteCarloSequenceEntropy``).

    With ``K'`` non-empty samples ``s_1..s_K'`` of example ``x``::

        u(x) = -(1/K') * sum_j log p(s_j | x),   log p(s_j | x) = sum_t log p(s_jt | x, s_j<t)

    token log-probs under the model's raw distribution (``Sample.token_logprobs``), stop
    token excluded. Equals lm-polygraph's value fed ``sample_log_probs = [sum_t ...]``.

    Args:
        calibrate: Platt scaling on the training split (default); ``False``: P(correct) =
            ``exp(-u)``, the geometric mean of the samples' sequence probabilities.
    """

    def __init__(self, *, calibrate: bool = True) -> None:
        self.calibrate = calibrate

    def uncertainty(self, X: Features) -> np.ndarray:
        check_sampled(X, f"{type(self).__name__}.uncertainty")
        u = np.array(
            [
                -float(np.mean(lp)) if (lp := _sequence_logprobs(s)) else np.nan
                for s in X.samples.rows  # type: ignore[union-attr]
            ]
        )
        _warn_undefined(u, type(self).__name__, "no non-empty sample")
        return u


@register_estimator(
    "mc_normalized_entropy",
    display_name="MC normalised sequence entropy",
    inputs=samples(),
    aliases=("MonteCarloNormalizedSequenceEntropy", "mc_normalised_entropy"),
)
class MonteCarloNormalizedSequenceEntropy(_SampleScore):
    """Length-normalised Monte-Carlo sequence entropy (Kuhn et al. 2023; Malinin & Gales
    2021, "length-normalised predictive entropy"; LM-Polygraph
    ``MonteCarloNormalizedSequenceEntropy``).

    With ``K'`` non-empty samples, sample ``s_j`` of ``L_j`` answer tokens::

        u(x) = -(1/K') * sum_j (1/L_j) * sum_t log p(s_jt | x, s_j<t)

    (the negated mean per-token log-prob, averaged over samples; raw distribution, stop token
    excluded). Equals lm-polygraph's value fed ``sample_log_probs`` = the sums and
    ``sample_tokens`` = the answer ids.

    Args:
        calibrate: as :class:`MonteCarloSequenceEntropy`; ``False``: P = ``exp(-u)``.
    """

    def __init__(self, *, calibrate: bool = True) -> None:
        self.calibrate = calibrate

    def uncertainty(self, X: Features) -> np.ndarray:
        check_sampled(X, f"{type(self).__name__}.uncertainty")
        out = []
        for s in X.samples.rows:  # type: ignore[union-attr]
            used = _used(s)
            per = [
                float(np.sum(s.token_logprobs[j], dtype=np.float64)) / len(s.answer_ids[j])
                for j in used
            ]
            out.append(-float(np.mean(per)) if per else np.nan)
        u = np.array(out)
        _warn_undefined(u, type(self).__name__, "no non-empty sample")
        return u


@register_estimator(
    "lexical_similarity",
    display_name="Lexical similarity (ROUGE-L)",
    inputs=samples(),
    aliases=("LexicalSimilarity",),
)
class LexicalSimilarity(_SampleScore):
    """Lexical similarity of the samples (Fomicheva et al. 2020; LM-Polygraph
    ``LexicalSimilarity``): minus the mean pairwise ROUGE between sampled answers.

    With ``K' >= 2`` non-empty samples (texts ``Sample.texts``)::

        u(x) = -(2 / (K'(K'-1))) * sum_{j<l} ROUGE-L_F(s_j, s_l)

    ROUGE F-measure from the ``rouge-score`` package with its Porter stemmer
    (``RougeScorer([metric], use_stemmer=True)``, as lm-polygraph), symmetric in its
    arguments. ``u`` lies in [-1, 0]; an example with fewer than 2 non-empty samples is NaN.

    Args:
        metric: ``rougeL`` (default), ``rouge1`` or ``rouge2``.
        calibrate: Platt on the training split; ``False``: P(correct) = ``-u``, the mean
            similarity itself.
    """

    METRICS: ClassVar[tuple[str, ...]] = ("rougeL", "rouge1", "rouge2")

    def __init__(
        self, *, metric: Literal["rougeL", "rouge1", "rouge2"] = "rougeL", calibrate: bool = True
    ) -> None:
        self.metric = metric
        self.calibrate = calibrate

    def _check_params(self) -> None:
        if self.metric not in self.METRICS:
            raise ConfigError(
                f"LexicalSimilarity(metric={self.metric!r}): allowed {', '.join(self.METRICS)}; "
                "pass one of them (rougeL is the paper's)."
            )

    def uncertainty(self, X: Features) -> np.ndarray:
        check_sampled(X, f"{type(self).__name__}.uncertainty")
        self._check_params()
        from rouge_score import rouge_scorer  # type: ignore[import-untyped]

        scorer = rouge_scorer.RougeScorer([self.metric], use_stemmer=True)
        memo: dict[tuple[str, str], float] = {}

        def sim(a: str, b: str) -> float:
            key = (a, b) if a <= b else (b, a)  # F-measure is symmetric
            if key not in memo:
                memo[key] = float(scorer.score(a, b)[self.metric].fmeasure)
            return memo[key]

        out = []
        for s in X.samples.rows:  # type: ignore[union-attr]
            texts = [s.texts[j] for j in _used(s)]
            pairs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))]
            sims = [sim(texts[i], texts[j]) for i, j in pairs]
            out.append(-float(np.mean(sims)) if sims else np.nan)
        u = np.array(out)
        _warn_undefined(u, type(self).__name__, "fewer than 2 non-empty samples")
        return u

    def _uncalibrated(self, u: np.ndarray) -> np.ndarray:
        return np.clip(-u, 0.0, 1.0)


# -- model readers ----------------------------------------------------------------------------
def eigenscore(embeddings: np.ndarray, alpha: float = 1e-3) -> float:
    """INSIDE's EigenScore of one example's ``(K, d)`` sample embeddings:
    ``(1/K) * sum_i log(lambda_i)``, ``lambda`` the eigenvalues of ``Z J_d Z^T + alpha I_K``
    with ``J_d = I_d - (1/d) 1 1^T`` (each embedding centred over its features); eigenvalues
    <= 0 count as 1e-10, as lm-polygraph does."""
    z = np.asarray(embeddings, dtype=np.float64)
    zc = z - z.mean(axis=1, keepdims=True)  # Z J_d, without building the d x d matrix
    cov = zc @ zc.T + alpha * np.eye(len(z))
    lam = np.linalg.eigvalsh(cov)
    return float(np.mean(np.log(np.where(lam > 0, lam, 1e-10))))


class _ReaderScore(_SampleScore):
    _OBJECT_PARAMS: ClassVar[tuple[str, ...]] = ("model",)
    model: Any
    batch_size: int

    def fit(self, X: Features, y: Labels = None) -> Any:
        if self.model is None:
            raise ConfigError(
                f"{type(self).__name__} runs a model: pass model=<ModelHandle> (the reader)."
            )
        if isinstance(self.batch_size, bool) or int(self.batch_size) < 1:
            raise ConfigError(
                f"{type(self).__name__}: batch_size must be >= 1; got {self.batch_size!r}."
            )
        return super().fit(X, y)


@register_estimator(
    "eigenscore",
    display_name="EigenScore",
    inputs=samples(model=True),
    aliases=("EigenScore",),
)
class EigenScore(_ReaderScore):
    """EigenScore (INSIDE, Chen et al. 2024; LM-Polygraph ``EigenScore``): the log-volume of
    the samples' sentence embeddings.

    The sentence embedding of sample ``s_j`` is the reader's hidden state at its last answer
    token, at the middle layer (HF ``hidden_states`` index ``n_layers // 2``, as INSIDE and
    lm-polygraph), read teacher-forced over prompt + sample through ``knowlens.extract``
    (``tokens="last"``, float32; a reader other than the answering model re-reads question +
    sample with its own template, ``retokenize``). With the ``K'`` non-empty samples'
    embeddings ``Z`` (``K' x d``)::

        u(x) = (1/K') * log det(Z J_d Z^T + alpha I) = (1/K') * sum_i log lambda_i

    ``J_d = I_d - (1/d) 1 1^T``. Equals lm-polygraph's value fed the same embeddings.
    lm-polygraph reads the embedding during generation, at the position of the last token
    fed to the model: the same hidden state when a sample ended with a stop token (knowlens's
    answer ids exclude it), the token before when it hit ``max_new_tokens``.

    Args:
        model: the reader ``ModelHandle``.
        layer: hidden-state index (``None`` = ``model.n_layers // 2``).
        alpha: ridge added to the covariance (paper / lm-polygraph: 1e-3).
        batch_size: sequences per extraction forward pass.
        calibrate: Platt on the training split; ``False``: P(correct) = ``sigmoid(-u)``
            (``u`` is a log-volume, unbounded on both sides).
        progress: show a progress bar.
        cache: read / store the samples' hidden states in the activation cache (the
            analyses pass the run's setting: ``--no-cache`` neither reads nor writes them).
    """

    def __init__(
        self,
        *,
        model: ModelHandle | None = None,
        layer: int | None = None,
        alpha: float = 1e-3,
        batch_size: int = 8,
        calibrate: bool = True,
        progress: bool = True,
        cache: bool = True,
    ) -> None:
        self.model = model
        self.layer = layer
        self.alpha = alpha
        self.batch_size = batch_size
        self.calibrate = calibrate
        self.progress = progress
        self.cache = cache

    def _check_params(self) -> None:
        if not (isinstance(self.alpha, int | float) and self.alpha > 0):
            raise ConfigError(f"EigenScore(alpha={self.alpha!r}): alpha must be > 0 (paper 1e-3).")

    def resolved_layer(self) -> int:
        """The hidden-state index read (``layer``, or the middle layer ``n_layers // 2``)."""
        n = int(self.model.n_layers)
        layer = n // 2 if self.layer is None else int(self.layer)
        if not 0 <= layer <= n:
            raise ConfigError(
                f"EigenScore(layer={self.layer}): out of range for {self.model.name} "
                f"({n} layers; allowed 0..{n}, None = middle)."
            )
        return layer

    def embeddings(self, X: Features) -> list[np.ndarray]:
        """Per example, the ``(K', d)`` sentence embeddings of its non-empty samples."""
        from knowlens.activations import extract

        check_sampled(X, "EigenScore.embeddings")
        gens, smp = X.gens, X.samples  # type: ignore[union-attr]
        layer = self.resolved_layer()
        view = sample_rows(smp, gens)
        d = int(self.model.d_model)
        if not len(view):
            return [np.zeros((0, d)) for _ in gens.rows]
        view = retokenize(view, self.model)
        acts = extract(
            self.model,
            view,
            layers=[layer],
            tokens="last",
            dtype="float32",
            batch_size=int(self.batch_size),
            cache=bool(self.cache),
            progress=self.progress,
        )
        feats = np.asarray(acts.features(layer), dtype=np.float64)
        row = {eid: i for i, eid in enumerate(acts.example_ids)}
        out = []
        for s in smp.rows:
            idx = [row[f"{s.example_id}#{j}"] for j in _used(s)]
            out.append(feats[idx] if idx else np.zeros((0, d)))
        return out

    def uncertainty(self, X: Features) -> np.ndarray:
        self._check_params()
        u = np.array(
            [eigenscore(z, float(self.alpha)) if len(z) else np.nan for z in self.embeddings(X)]
        )
        _warn_undefined(u, "EigenScore", "no non-empty sample")
        return u

    def _uncalibrated(self, u: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(np.clip(u, -500, 500)))


@register_estimator(
    "p_true_sampling",
    display_name="P(True) with samples",
    inputs=samples(model=True),
    aliases=("PTrueSampling", "ptrue_sampling"),
)
class PTrueSampling(_ReaderScore):
    """P(True) with brainstormed samples in context (Kadavath et al. 2022; LM-Polygraph
    ``PTrueSampling``).

    The reader is asked ``PTRUE_SAMPLING_TEMPLATE`` (question, the non-empty sample texts
    one per line as "brainstormed ideas", the greedy answer as "Possible Answer") in its chat
    template, twice, with "(A) True (B) False" and with the options swapped, each followed by
    ``" ("`` (``"("`` at the start of a chat assistant turn), through the same query path as
    ``PTrue`` (``knowlens.estimators._query.batched_label_probs``). P(True) is the mean over
    the two orders of the two-way softmax over the letters::

        u(x) = -log( (p_AB(A) + p_BA(B)) / 2 )

    lm-polygraph's ``PTrueSampling`` returns ``-log p("True")`` of the next token over the
    whole vocabulary for one option order, with the samples joined by ", "; knowlens keeps
    its own P(True) definition (letter softmax, order reversal; see ``PTrue``) and only adds
    the samples, so the two agree as functions of P(True), not in value.

    Args:
        model: the reader (asked) ``ModelHandle``.
        use_chat_template: wrap the query in the chat template when the model has one.
        batch_size: queries per forward pass.
        max_length: longest query in tokens (longer ones keep their last tokens).
        calibrate: Platt on the training split; ``False``: P(correct) = ``exp(-u)`` = P(True).
        progress: show a progress bar.

    ``uncertainty(X, questions=None)``: questions default to each answer's user turn.
    """

    def __init__(
        self,
        *,
        model: ModelHandle | None = None,
        use_chat_template: bool = True,
        batch_size: int = 8,
        max_length: int = 2048,
        calibrate: bool = True,
        progress: bool = True,
    ) -> None:
        self.model = model
        self.use_chat_template = use_chat_template
        self.batch_size = batch_size
        self.max_length = max_length
        self.calibrate = calibrate
        self.progress = progress

    def _check_params(self) -> None:
        label_token_ids(self.model.tokenizer, ("A", "B"))

    def texts(self, X: Features, questions: Sequence[str] | None = None) -> list[str]:
        """The 2n rendered queries: n with (A) True first, then n with the order swapped."""
        check_sampled(X, "PTrueSampling.texts")
        gens, smp = X.gens, X.samples  # type: ignore[union-attr]
        qs = questions_for(gens, questions)
        chat = self.use_chat_template and self.model.has_chat_template
        out = []
        for first, second in (("True", "False"), ("False", "True")):
            for g, s, q in zip(gens.rows, smp.rows, qs, strict=True):
                ideas = "\n".join(s.texts[j].strip() for j in _used(s))
                body = PTRUE_SAMPLING_TEMPLATE.format(
                    question=q, ideas=ideas, answer=g.answer.strip(), first=first, second=second
                )
                rendered = self.model.format_prompt(body, use_chat_template=self.use_chat_template)
                out.append(rendered + ("(" if chat else " ("))
        return out

    def p_true(self, X: Features, questions: Sequence[str] | None = None) -> np.ndarray:
        """P(True) of every example (mean over the two option orders), shape (n,)."""
        n = len(X)
        probs = batched_label_probs(
            self.model,
            self.texts(X, questions),
            ("A", "B"),
            batch_size=int(self.batch_size),
            max_length=self.max_length,
            progress=self.progress,
            description="P(True) with samples",
        )
        return 0.5 * (probs[:n, 0] + probs[n:, 1])

    def uncertainty(self, X: Features, questions: Sequence[str] | None = None) -> np.ndarray:
        p = self.p_true(X, questions)
        return -np.log(np.clip(p, math.ulp(0.0), 1.0))
