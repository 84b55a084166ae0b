"""Shared query reads (``QueryReads``): one forward per (reader, query) serves the Zero-Shot
Classifier, P(True), the probe's query features and LoRA + Prompt's frozen states; every
value equals the estimator's own separate pass (tiny random Llama, tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from knowlens.activations import ExtractItem, ExtractSpec, extract_batch
from knowlens.errors import KnowlensError
from knowlens.estimators import (
    LoRAPrompt,
    MLPProbe,
    PTrue,
    QueryReads,
    ZeroShotClassifier,
    query_activations,
    zsc_queries,
)
from knowlens.estimators._query import ZSC_LABELS, queries, zsc_texts
from knowlens.estimators._text import encode
from knowlens.training import lora_attached
from test_estimators_model import tiny_gens


class Forwards:
    """Counts rows run through the model's decoder (a hook on the HF model itself, so it
    sees every pass whichever code made it)."""

    def __init__(self, handle):
        self.rows = 0
        self._h = handle.model.model.register_forward_hook(self._count)

    def _count(self, module, args, output):
        self.rows += int(output[0].shape[0])

    def close(self):
        self._h.remove()


@pytest.fixture
def forwards(tiny_model):
    f = Forwards(tiny_model)
    yield f
    f.close()


def _features_by_extraction(model, items, layer):
    """The activations stage's own pass over the same token ids (right padding)."""
    ext = [ExtractItem(id=str(i), ids=q.ids, prompt_len=len(q.ids)) for i, q in enumerate(items)]
    spec = ExtractSpec(layers=(layer,), tokens="last", dtype="float32", batch_size=3)
    return extract_batch(model, ext, spec)["values"][:, 0, 0]


def test_query_estimators_through_reads_equal_their_own_passes(tiny_model, forwards):
    gens = tiny_gens(tiny_model, n=7)
    zsc_alone = ZeroShotClassifier(model=tiny_model, batch_size=3, progress=False).fit()
    pt_alone = PTrue(model=tiny_model, batch_size=3, progress=False).fit()
    p_zsc, p_pt = zsc_alone.predict_proba(gens), pt_alone.predict_proba(gens)
    alone = forwards.rows  # 7 + 14 queries and the prompt prefixes they share, run once

    reads = QueryReads()
    zsc = ZeroShotClassifier(model=tiny_model, batch_size=3, progress=False, reads=reads).fit()
    pt = PTrue(model=tiny_model, batch_size=3, progress=False, reads=reads).fit()
    before = forwards.rows
    # all queries new, same length order and batch size: the same batches, bit for bit
    np.testing.assert_array_equal(zsc.predict_proba(gens), p_zsc)
    np.testing.assert_array_equal(pt.predict_proba(gens), p_pt)
    assert reads.rows_run == 7 + 14 and reads.prefixes_run > 0
    assert forwards.rows - before == reads.rows_run + reads.prefixes_run == alone
    # asked again (a second score of the same answers): no forward
    np.testing.assert_array_equal(zsc.predict_proba(gens), p_zsc)
    np.testing.assert_array_equal(pt.predict_proba(gens), p_pt)
    assert forwards.rows - before == alone
    # reads are no setting: same key and saved parameters as without
    assert zsc.cache_key() == zsc_alone.cache_key()
    assert "reads" not in zsc._json_params()


def test_probe_features_come_from_the_zero_shot_pass(tiny_model, forwards):
    gens = tiny_gens(tiny_model, n=9)
    n_layers = tiny_model.n_layers
    items = zsc_queries(tiny_model, gens, max_length=1024)
    assert [q.ids for q in items] == [
        tuple(encode(tiny_model.tokenizer, t)) for t in zsc_texts(tiny_model, gens)
    ]
    reference = _features_by_extraction(tiny_model, items, n_layers)
    mid = _features_by_extraction(tiny_model, items, 1)

    reads = QueryReads()
    zsc = ZeroShotClassifier(model=tiny_model, progress=False, reads=reads).fit()
    p = zsc.predict_proba(gens)
    start = forwards.rows
    acts = query_activations(reads, tiny_model, gens)
    assert forwards.rows == start  # the probe's features were read by the ZSC's pass
    assert acts.values.shape == (9, 1, 1, tiny_model.d_model) and acts.layers == [n_layers]
    assert acts.tokens == "last" and acts.example_ids == gens.example_ids
    np.testing.assert_array_equal(acts.positions[:, 0], [len(q.ids) - 1 for q in items])
    np.testing.assert_allclose(acts.values[:, 0, 0], reference, rtol=1e-5, atol=1e-5)
    # another layer is not held: read once more (then held)
    acts1 = query_activations(reads, tiny_model, gens, layer=1)
    unique = len({q.ids for q in items})  # identical queries are read once
    assert unique < 9 and forwards.rows == start + unique
    np.testing.assert_allclose(acts1.values[:, 0, 0], mid, rtol=1e-5, atol=1e-5)
    again = query_activations(reads, tiny_model, gens, layer=1)
    assert again.meta["cache_key"] == acts1.meta["cache_key"]
    assert forwards.rows == start + unique

    # the other order: features first, then the classifier reads nothing new
    reads2 = QueryReads()
    acts2 = query_activations(reads2, tiny_model, gens)
    before = forwards.rows
    z2 = ZeroShotClassifier(model=tiny_model, progress=False, reads=reads2).fit()
    np.testing.assert_allclose(z2.predict_proba(gens), p, rtol=0, atol=1e-6)
    assert forwards.rows == before
    np.testing.assert_array_equal(acts2.values, acts.values)  # same batches: bit for bit

    # the probe fitted on them equals the probe fitted on the extraction's features
    y = gens.correct
    mine = MLPProbe(epochs=20).fit(acts, y).predict_proba(acts)
    from knowlens._types import ActivationSet

    ref = ActivationSet(
        values=reference[:, None, None, :],
        mask=acts.mask,
        layers=acts.layers,
        tokens="last",
        example_ids=acts.example_ids,
        positions=acts.positions,
    )
    np.testing.assert_allclose(mine, MLPProbe(epochs=20).fit(ref, y).predict_proba(ref), atol=1e-5)


def test_lora_prompt_frozen_states_are_read_once(tiny_model, forwards, monkeypatch):
    gens = tiny_gens(tiny_model, n=8)
    # no validation split: the passes counted are the training steps' and the frozen reads
    kw = dict(
        model=tiny_model,
        steps=6,
        batch_size=4,
        lr=3e-3,
        validation_fraction=0,
        progress=False,
        cache=False,
    )
    # the frozen states at the answer tokens equal the frozen pass of the training batch
    items = LoRAPrompt(**kw)._prepare(gens, None)
    qs = zsc_queries(tiny_model, gens, max_length=512)
    assert [(list(q.ids), *q.span) for q in qs] == items
    got = QueryReads().read(tiny_model, qs, ZSC_LABELS)
    with torch.no_grad():
        for q, states in zip(qs, got.answer, strict=True):
            s, e = q.span
            hs = tiny_model.model(torch.tensor([q.ids]), output_hidden_states=True).hidden_states
            np.testing.assert_allclose(states, hs[-1][0, s - 1 : e - 1], rtol=1e-5, atol=1e-6)
            assert len(states) == e - s > 0

    # old path: the frozen pass inside every training step (_loss without read states)
    monkeypatch.setattr(LoRAPrompt, "_before_training", lambda self, items, schedule: None)
    start = forwards.rows
    old = LoRAPrompt(**kw).fit(gens)
    assert forwards.rows - start == 6 * 4 * 2  # adapted + frozen pass per step
    monkeypatch.undo()

    start = forwards.rows
    new = LoRAPrompt(**kw).fit(gens)
    used = len({qs[int(i)] for b in new_schedule(new, items) for i in b})
    assert forwards.rows - start == 6 * 4 + used  # frozen states read once per query
    np.testing.assert_allclose(new.loss_history_, old.loss_history_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new.predict_proba(gens), old.predict_proba(gens), atol=1e-5)

    # with the run's reads holding those queries (the probe read them): no frozen pass at all
    reads = QueryReads()
    query_activations(reads, tiny_model, gens)
    start = forwards.rows
    shared = LoRAPrompt(**kw, reads=reads).fit(gens)
    assert forwards.rows - start == 6 * 4
    np.testing.assert_allclose(shared.loss_history_, new.loss_history_, rtol=1e-5, atol=1e-6)
    assert shared.cache_key() == new.cache_key()
    assert not shared._frozen  # dropped after training


def new_schedule(est, items):
    from knowlens.training import batch_schedule

    lengths = [len(it[0]) for it in items]
    return batch_schedule(len(items), est.batch_size, est.steps, est.seed, lengths=lengths)


def test_reads_refuse_a_model_with_adapters(tiny_model):
    gens = tiny_gens(tiny_model, n=2)
    reads = QueryReads()
    with (
        lora_attached(tiny_model, r=2, alpha=4, dropout=0.0, target_modules=("q_proj",)),
        pytest.raises(KnowlensError, match="LoRA adapters attached"),
    ):
        reads.read(tiny_model, zsc_queries(tiny_model, gens), ZSC_LABELS)
    assert len(reads) == 0
    # plain query texts keep their last max_length tokens, as the estimators' own passes
    ids = encode(tiny_model.tokenizer, "What is the capital of France?")
    assert queries(tiny_model, ["What is the capital of France?"], max_length=3)[0].ids == tuple(
        ids[-3:]
    )


@pytest.fixture
def prefix_rows(monkeypatch):
    """Rows of the shared-prompt-prefix forwards (``SharedPrefixes``), per call."""
    from knowlens import generation

    seen: list[int] = []
    place = generation.SharedPrefixes._place

    def counted(self, *a, **k):
        before = self.prefixes_run
        place(self, *a, **k)
        seen.append(self.prefixes_run - before)

    monkeypatch.setattr(generation.SharedPrefixes, "_place", counted)
    return seen


def test_bench_shares_one_pass_between_zero_shot_probe_and_lora_prompt(
    tiny_model, tiny_model_dir, tmp_path, forwards, prefix_rows
):
    from knowlens.experiments import RunContext
    from knowlens.experiments._estimators import EstimatorBench, TrainSettings
    from knowlens.experiments.topic_calibration import Config

    train, ev = tiny_gens(tiny_model, n=10, seed=1), tiny_gens(tiny_model, n=6, seed=2)
    for g in (train, ev):
        g.meta["target_id"] = tiny_model.target_id
    # no LoRA validation split: the passes counted are training steps, reads and scoring
    settings = TrainSettings(probe_epochs=5, lora_steps=3, lora_validation_fraction=0)
    names = ("zero_shot", "probe", "lora_prompt")

    def stage(share, use_cache=False):
        ctx = RunContext(run_dir=tmp_path, cfg=Config(models=["tiny"]), seed=0, use_cache=use_cache)
        bench = EstimatorBench(ctx, settings, 0, share_reads=share)
        start, start_prefixes = forwards.rows, sum(prefix_rows)
        scores = {}
        for name in names:
            fitted = bench.fit(name, tiny_model, train)
            scores[name] = bench.score(fitted, ev)
        prefixes = sum(prefix_rows) - start_prefixes  # shared prompt prefixes, run once
        assert use_cache or prefixes > 0
        return scores, forwards.rows - start - prefixes, ctx

    alone, rows_alone, _ = stage(False)
    shared, rows_shared, ctx = stage(True)
    for name in names:
        np.testing.assert_allclose(shared[name], alone[name], rtol=0, atol=1e-5)
    # rows of the queries' own passes (their shared prompt prefixes not counted)
    # alone: ZSC eval 6, probe train + eval (identical queries once), LP 3 steps x 4 adapted
    # + its frozen reads, LP eval 6
    q_train, q_ev = set(zsc_queries(tiny_model, train)), set(zsc_queries(tiny_model, ev))
    lp_frozen = rows_alone - (6 + len(q_train) + len(q_ev) + 3 * 4 + 6)
    assert 0 < lp_frozen <= len(q_train)
    # shared: each distinct query is read once for the ZSC, the probe (train and eval: the
    # tiny sets share some) and LP's frozen states; then LP's adapted passes
    assert rows_shared == len(q_train | q_ev) + 3 * 4 + 6
    assert ctx.log.cache["query_activations"].misses == 2
    # a warm rerun reads the probe's features from the cache (no model pass for them)
    _, rows_warm, ctx = stage(True, use_cache=True)
    assert ctx.log.cache["query_activations"].hits >= 1 and rows_warm == 0


def test_readers_of_models_the_decoder_cannot_cache_run_plain_passes(tiny_model, monkeypatch):
    """A reader whose layers the decoder's KV buffers do not support (e.g. a hybrid model)
    still reads: whole queries, no cache, the same probabilities within float error."""
    from knowlens import generation

    gens = tiny_gens(tiny_model, n=7)
    zsc = ZeroShotClassifier(model=tiny_model, batch_size=3, progress=False).fit()
    p = zsc.predict_proba(gens)

    def unsupported(model):
        raise KnowlensError("not supported")

    monkeypatch.setattr(generation, "_decoder_layers", unsupported)
    reads = QueryReads()
    plain = ZeroShotClassifier(model=tiny_model, batch_size=3, progress=False, reads=reads).fit()
    np.testing.assert_allclose(plain.predict_proba(gens), p, rtol=0, atol=1e-6)
    assert reads.prefixes_run == 0 and reads.rows_run == 7
    np.testing.assert_allclose(zsc.predict_proba(gens), p, rtol=0, atol=1e-6)
