"""The estimator registry: one entry per estimator, analyses that never switch on names.

The toy estimator below is registered from this test module only (no src file knows it) and
runs in topic_calibration from a config on the tiny model: adding an estimator is one file
plus its test.
"""

from __future__ import annotations

import re
import types

import numpy as np
import pytest

from knowlens import metrics
from knowlens._types import ActivationSet
from knowlens.errors import ConfigError, KnowlensError
from knowlens.estimators import (
    Estimator,
    activations,
    clone,
    estimator_names,
    fit_cached,
    generations,
    get_estimator,
    register_estimator,
)
from knowlens.estimators._base import labels_for

# Reuse the tiny tasks of the experiment tests (about half the answers are correct).
from test_experiments import second_model_dir, tasks  # noqa: F401

BUILTIN = {
    "logit": ("LogitBaseline", "Logit baseline", "generations", False),
    "zero_shot": ("ZeroShotClassifier", "Zero-Shot Classifier", "generations", True),
    "p_true": ("PTrue", "P(True)", "generations", True),
    "logistic": ("LogisticProbe", "Logistic probe", "activations", False),
    "probe": ("MLPProbe", "Probe", "activations", False),
    "lora": ("LoRAProbe", "LoRA", "generations", True),
    "lora_prompt": ("LoRAPrompt", "LoRA + Prompt", "generations", True),
}


@register_estimator(
    "toy_centroid",
    display_name="Toy centroid",
    inputs=activations(layer="last", tokens="last"),  # the same features as "probe"
    settings={"epochs": "probe_epochs"},
)
class ToyCentroid(Estimator):
    """P(correct) = sigmoid(scale * (x - midpoint) . (mean_correct - mean_wrong)), on
    standardised features of one layer; ``epochs`` only shows how settings arrive."""

    def __init__(self, *, layer: int = -1, scale: float = 1.0, epochs: int = 1) -> None:
        self.layer = layer
        self.scale = scale
        self.epochs = epochs

    def fit(self, X: ActivationSet, y=None) -> ToyCentroid:
        x = X.features(self.layer, "last").astype(np.float64)
        yy = labels_for(y, len(x), X.example_ids, "ToyCentroid")
        keep = ~np.isnan(yy)
        x, yy = x[keep], yy[keep]
        self.mean_, self.std_ = x.mean(0), x.std(0) + 1e-6
        z = (x - self.mean_) / self.std_
        self.direction_ = z[yy == 1].mean(0) - z[yy == 0].mean(0)
        self.midpoint_ = (z[yy == 1].mean(0) + z[yy == 0].mean(0)) / 2
        return self

    def predict_proba(self, X: ActivationSet) -> np.ndarray:
        self._check_fitted()
        z = (X.features(self.layer, "last").astype(np.float64) - self.mean_) / self.std_
        return 1 / (1 + np.exp(-self.scale * (z - self.midpoint_) @ self.direction_))

    def _weights(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, f"{k}_") for k in ("mean", "std", "direction", "midpoint")}

    def _restore(self, state, weights) -> None:
        for k, v in weights.items():
            setattr(self, f"{k}_", v)


def test_builtin_entries_declare_name_display_and_inputs():
    import knowlens.estimators as E
    from knowlens.activations import SELECTORS

    names = estimator_names()
    assert set(BUILTIN) <= set(names) and "toy_centroid" in names
    for name, (cls_name, label, source, runs_model) in BUILTIN.items():
        spec = get_estimator(name)
        assert spec.cls.__name__ == cls_name and spec.cls is getattr(E, cls_name)
        assert spec.display_name == label == spec.cls.display_name
        assert spec.cls.estimator_name == name
        assert spec.inputs.source == source and spec.inputs.model == runs_model
        assert get_estimator(cls_name) is spec  # class names resolve too
        if source == "activations":
            assert spec.inputs.tokens in SELECTORS
    # aliases: the FIGURES.md names and the module-level aliases are the same entries
    assert get_estimator("Probe").cls is E.Probe is E.MLPProbe
    assert get_estimator("LoRA").cls is E.LoRA is E.LoRAProbe
    # the probe reads the Zero-Shot Classifier query (shared pass, QueryReads)
    assert get_estimator("probe").inputs.text == "query"
    assert get_estimator("probe").inputs.describe() == (
        "activations of the query (layer last, tokens last)"
    )
    assert get_estimator("logistic").inputs.text == "answer"
    assert get_estimator("lora").train_limit == "max_train"
    # a registered class the package does not import is reachable as an attribute too
    assert E.ToyCentroid is ToyCentroid
    with pytest.raises(
        ConfigError, match=re.escape("Unknown estimator 'prob'. Did you mean: probe")
    ):
        get_estimator("prob")


def test_registration_checks():
    with pytest.raises(
        KnowlensError, match=re.escape("is not a subclass of knowlens.estimators.Estimator")
    ):
        register_estimator("not_est", object, display_name="x", inputs=generations())

    class Half(Estimator):
        def fit(self, X, y=None):
            return self

    with pytest.raises(KnowlensError, match="does not implement predict_proba"):
        register_estimator("half", Half, display_name="x", inputs=generations())
    with pytest.raises(KnowlensError, match="settings name 'steps'"):
        register_estimator(
            "bad_settings",
            ToyCentroid,
            display_name="x",
            inputs=generations(),
            settings={"steps": "lora_steps"},
        )
    with pytest.raises(KnowlensError, match="inputs say model=True"):
        register_estimator(
            "bad_model", ToyCentroid, display_name="x", inputs=generations(model=True)
        )
    with pytest.raises(KnowlensError, match="'probe' is already registered"):
        register_estimator("probe", ToyCentroid, display_name="x", inputs=generations())
    with pytest.raises(
        KnowlensError, match=re.escape("'Probe' is already registered (for 'probe')")
    ):
        register_estimator(
            "fresh", ToyCentroid, display_name="x", inputs=generations(), aliases=("Probe",)
        )
    with pytest.raises(KnowlensError, match="name must be an identifier"):
        register_estimator("my probe", ToyCentroid, display_name="x", inputs=generations())
    with pytest.raises(
        KnowlensError, match=re.escape("must be an int (hidden-state index) or 'last'")
    ):
        activations(layer="middle")
    assert "not_est" not in estimator_names() and "fresh" not in estimator_names()


def test_lazy_entries_resolve_on_first_use():
    spec = register_estimator(
        "toy_lazy",
        f"{__name__}:ToyCentroid",
        display_name="Toy (lazy)",
        inputs=activations(layer=1),
        overwrite=True,
    )
    assert isinstance(spec.target, str)  # nothing imported yet
    assert get_estimator("toy_lazy").cls is ToyCentroid
    register_estimator(
        "toy_missing",
        "knowlens_nope.mod:Cls",
        display_name="?",
        inputs=generations(),
        overwrite=True,
    )
    with pytest.raises(KnowlensError, match="module 'knowlens_nope' cannot be imported"):
        get_estimator("toy_missing")


def test_make_maps_settings_seed_layer_and_model():
    from knowlens.experiments._estimators import TrainSettings

    reader = types.SimpleNamespace(n_layers=5, target_id="fake")
    ts = TrainSettings(
        lora_steps=7, lora_r=4, lora_alpha=8, lora_lr=1e-3, batch_size=2, probe_epochs=3
    )
    lora = get_estimator("lora").make(model=reader, settings=ts, seed=11)
    assert (lora.model, lora.steps, lora.r, lora.alpha, lora.lr, lora.batch_size) == (
        reader,
        7,
        4,
        8,
        1e-3,
        2,
    )
    assert lora.seed == 11 and lora.progress is False
    probe = get_estimator("probe").make(model=reader, settings=ts, seed=11)
    assert (probe.layer, probe.epochs, probe.seed, probe.batch_size) == (5, 3, 11, 64)
    toy = get_estimator("toy_lazy").make(model=reader, settings=ts)
    assert toy.layer == 1 and toy.epochs == 1  # the lazy entry declared no settings
    zsc = get_estimator("zero_shot").make(model=reader, settings=ts, seed=11)
    assert zsc.model is reader and zsc.progress is False and "seed" not in zsc.get_params()
    with pytest.raises(ConfigError, match="runs a model; pass model="):
        get_estimator("p_true").make()
    with pytest.raises(ConfigError, match="has no parameter 'nope'"):
        get_estimator("logit").make(nope=1)
    spec = get_estimator("toy_centroid")
    assert spec.inputs.resolve_layer(5) == 5 and activations(layer=-2).resolve_layer(5) == 4
    with pytest.raises(
        KnowlensError,
        match=re.escape("layer 9, out of range for a model with 5 layers (allowed 0..5"),
    ):
        activations(layer=9).resolve_layer(5)


def test_config_names_are_checked_and_aliases_resolved(tiny_model_dir):
    from knowlens.experiments import parse_config

    base = {"analysis": "topic_calibration", "models": [str(tiny_model_dir)]}
    rc = parse_config({**base, "estimators": ["Probe", "p_true", "toy_centroid", "logit"]})
    assert rc.analyses[0].estimators == ["probe", "p_true", "toy_centroid", "logit"]
    with pytest.raises(ConfigError) as e:
        parse_config({**base, "estimators": ["prob"]})
    msg = str(e.value)
    assert msg.startswith(
        "config: field 'estimators' names an unknown estimator 'prob' (did you mean: probe?); "
        "allowed: logit, "
    )
    assert msg.endswith(
        "; got ['prob']. Fix 'estimators' in the config or its command-line override."
    )
    assert "\n" not in msg and "lora_prompt" in msg
    with pytest.raises(ConfigError, match=re.escape("lists estimator 'probe' twice (as 'Probe')")):
        parse_config({**base, "estimators": ["probe", "Probe"]})
    rc = parse_config({**base, "analysis": "estimator_transfer", "estimators": ["logit"]})
    assert rc.analyses[0].estimators == ["logit"]


# On 8 answers of a random tiny model these data warnings are the expected outcome (tested
# where they are raised: tests/test_estimators_density.py); any other warning still fails.
@pytest.mark.filterwarnings("ignore:.*covariance is singular:UserWarning")
@pytest.mark.filterwarnings("ignore:.*states a probability:UserWarning")
@pytest.mark.filterwarnings("ignore:.*give no probability:UserWarning")
def test_every_registered_estimator_fits_uniformly(tiny_model):
    """The registry contract for every entry: built by make(), inputs as declared, the key
    known before fitting equals the fitted key, fit_cached stores it once, clone unfits."""
    from knowlens.activations import extract
    from knowlens.estimators import retokenize
    from knowlens.experiments._estimators import TrainSettings
    from test_estimators_model import tiny_gens
    from test_estimators_sampling import sampled_gens

    gens = tiny_gens(tiny_model, n=8)
    ts = TrainSettings(lora_steps=2, probe_epochs=2)
    for name in [n for n in estimator_names() if n != "toy_missing"]:  # unimportable on purpose
        spec = get_estimator(name)
        est = spec.make(model=tiny_model, settings=ts, seed=0)
        if spec.inputs.source == "activations":
            X = extract(
                tiny_model,
                retokenize(gens, tiny_model),
                layers=[spec.inputs.resolve_layer(tiny_model.n_layers)],
                tokens=spec.inputs.tokens,
                progress=False,
            )
        elif spec.inputs.source == "samples":
            X = sampled_gens(tiny_model, gens)
        else:
            X = gens
        key = est.cache_key(X, gens.correct)
        fitted = fit_cached(est, X, gens.correct)
        assert fitted is est and not est.from_cache_ and est.cache_key() == key, name
        p = est.predict_proba(X)
        assert p.shape == (8,) and ((p >= 0) & (p <= 1)).all(), name
        again = fit_cached(spec.make(model=tiny_model, settings=ts, seed=0), X, gens.correct)
        assert again.from_cache_ and again.cache_key() == key, name
        np.testing.assert_allclose(again.predict_proba(X), p, rtol=0, atol=1e-6, err_msg=name)
        c = clone(est)
        assert c.get_params().keys() == est.get_params().keys() and not c._is_fitted(), name


def test_toy_estimator_runs_in_topic_calibration_from_a_config(
    tasks,  # noqa: F811
    tiny_model,
    tiny_model_dir,
    tmp_path,
    monkeypatch,
):
    """A config names the toy next to the probe: both read the same activations, which the
    analysis extracts once per split; the toy's scores equal a direct computation."""
    import json

    import knowlens.experiments._common as common
    from knowlens.activations import extract
    from knowlens.estimators import retokenize
    from knowlens.experiments import run
    from knowlens.experiments._common import decided
    from knowlens.experiments._estimators import concat
    from knowlens.generation import generate
    from knowlens.tasks import load_task

    calls = []
    real = common.activations

    def counting(ctx, model, gens, **kw):
        calls.append(kw)
        return real(ctx, model, gens, **kw)

    monkeypatch.setattr(common, "activations", counting)
    cfg = {
        "name": "toy",
        "analysis": "topic_calibration",
        "models": [str(tiny_model_dir)],
        "train_tasks": [tasks[0]],
        "eval_task": tasks[1],
        "estimators": ["probe", "toy_centroid"],
        "train": {"probe_epochs": 5},
        "n_bootstrap": 20,
        "device": "cpu",
        "min_n": 5,
    }
    res = run(cfg, output=tmp_path / "runs", progress=False)
    tabs = res.tables["topic_calibration"]
    t = tabs["topic_calibration"]
    assert set(t["estimator"]) == {"Probe", "Toy centroid"}
    # one extraction per split (train, eval), shared by the two estimators
    last = tiny_model.n_layers
    assert calls == [{"layers": [last], "tokens": "last"}] * 2

    train = concat(
        [decided(generate(tiny_model, load_task(tasks[0], split="train"), progress=False))]
    )
    ev = decided(generate(tiny_model, load_task(tasks[1], split="test"), progress=False))
    feats = {
        k: extract(
            tiny_model, retokenize(g, tiny_model), layers=[last], tokens="last", progress=False
        )
        for k, g in (("train", train), ("test", ev))
    }
    direct = ToyCentroid(layer=last, epochs=5).fit(feats["train"], train.correct)
    p = direct.predict_proba(feats["test"])
    s = tabs["scores"]
    toy = s[s["estimator"] == "Toy centroid"]
    np.testing.assert_allclose(toy["p"].to_numpy(), p, rtol=1e-9, atol=1e-12)
    pooled = t[(t["estimator"] == "Toy centroid") & (t["topic"] == "(all)")].set_index("metric")
    assert pooled.loc["auroc", "value"] == pytest.approx(metrics.auroc(ev.correct, p))
    # stored once in the one estimator cache, reused by a rerun that recomputes the table
    res2 = run(res.run_dir / "config.yaml", n_bootstrap=10, progress=False)
    man = json.loads((res2.run_dir / "manifest.json").read_text())
    assert man["analyses"]["topic_calibration"]["cache"]["estimators"] == {"hits": 2, "misses": 0}
