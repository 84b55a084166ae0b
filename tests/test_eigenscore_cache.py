"""EigenScore's hidden states follow the cache setting: ``cache=False`` (and an analysis run
with ``--no-cache``, which the bench hands to the estimator) neither stores nor reads them,
with the same scores as the cached path."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from knowlens._cache import cache_root
from knowlens.estimators._sampling import EigenScore
from knowlens.tasks._types import Example, GradeResult

CITIES = ["Paris", "Berlin", "Rome", "Madrid", "Lisbon", "Vienna", "Oslo", "Dublin"]


@dataclass
class HalfRight:
    """A TaskLike whose grader calls every other example correct (both labels for Platt)."""

    examples: list[Example]
    name: str = "half-right"
    version: str = "1"
    split: str = "test"
    max_new_tokens: int = 4

    def prompt(self, ex: Example) -> str:
        return f"What is the capital city called {ex.question}?"

    def grade(self, ex: Example, answer: str) -> GradeResult:
        return GradeResult(int(ex.id[1:]) % 2 == 0, "toy")


def _activation_entries() -> list[str]:
    root = cache_root() / "activations"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def _answers_and_samples(model):
    import knowlens as kl
    from knowlens._types import SampledGenerations

    task = HalfRight([Example(f"q{i}", c, (c,)) for i, c in enumerate(CITIES)])
    gens = kl.generate(model, task, cache=False, progress=False)
    smp = kl.sample(model, gens, k=3, max_new_tokens=3, cache=False, progress=False)
    return task, gens, SampledGenerations.of(gens, smp)


def test_eigenscore_cache_false_stores_and_reads_nothing(tiny_model):
    _, _, X = _answers_and_samples(tiny_model)
    off = EigenScore(model=tiny_model, calibrate=False, progress=False, cache=False)
    u_off = off.uncertainty(X)
    assert _activation_entries() == []
    assert np.isfinite(u_off).all()
    on = EigenScore(model=tiny_model, calibrate=False, progress=False)
    u_on = on.uncertainty(X)
    stored = _activation_entries()
    assert len(stored) == 1  # the default still caches the states
    np.testing.assert_array_equal(u_off, u_on)
    # a cache=False call does not look the entry up either: a damaged one stays unnoticed
    # (a lookup would verify it, move it to .damaged/ and warn)
    values = cache_root() / "activations" / stored[0] / "values.npy"
    values.write_bytes(b"\0" * values.stat().st_size)
    np.testing.assert_array_equal(off.uncertainty(X), u_on)
    assert values.exists() and not (cache_root() / ".damaged").exists()
    assert on.cache_key() == off.cache_key()  # the setting is not part of what is learned


def test_analysis_bench_hands_the_runs_cache_setting_to_eigenscore(tiny_model_dir, tmp_path):
    from knowlens.experiments import RunContext
    from knowlens.experiments._estimators import EstimatorBench, SamplingSettings, TrainSettings
    from knowlens.experiments.topic_calibration import Config

    sampling = SamplingSettings(k=3, max_new_tokens=3)
    cfg = Config(models=[str(tiny_model_dir)])
    ctx = RunContext(run_dir=tmp_path / "off", cfg=cfg, seed=0, use_cache=False)
    model = ctx.load_model(str(tiny_model_dir))
    _, gens, X = _answers_and_samples(model)
    bench = EstimatorBench(ctx, TrainSettings(), 0, sampling)
    fitted = bench.fit("eigenscore", model, gens)
    p_off = bench.score(fitted, gens)
    assert fitted.estimator.cache is False and _activation_entries() == []
    # the same numbers as the estimator fitted directly on the same samples
    ref = EigenScore(model=model, progress=False, cache=False).fit(X, gens.correct)
    np.testing.assert_allclose(p_off, ref.predict_proba(X), rtol=0, atol=1e-12)

    # with the cache on (other samples, so the fit above is not reused): states are stored
    ctx_on = RunContext(run_dir=tmp_path / "on", cfg=cfg, seed=0)
    on = EstimatorBench(ctx_on, TrainSettings(), 0, sampling.model_copy(update={"seed": 1}))
    fitted_on = on.fit("eigenscore", ctx_on.load_model(str(tiny_model_dir)), gens)
    assert fitted_on.estimator.cache is True and len(_activation_entries()) == 1
