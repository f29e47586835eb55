//! The shared contracts of `feedrank-core` (config.rs, cache.rs) for the pipeline: the same code
//! the API runs, so writer and reader cannot drift apart.

use feedrank_core::cache::{self, CachedFeed, CachedProfile, CachedRecommendation};
use feedrank_core::config::{
    CollaborativeModel, HybridWeights, InteractionType, InteractionWeighting, Reason,
    ScoringConfig, COMPONENTS,
};
use feedrank_core::experiment::{self, Experiment};
use feedrank_core::Error;
use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use pythonize::Depythonizer;

use crate::convert::{array2, floats_1d, floats_2d, ids_1d};
use crate::error::{type_error, value_error, IntoPyResult};
use crate::run::run_kernel;

/// A config as the dict Python sees: through the core's JSON, so that f32 values read as the
/// short decimals they were written as (0.4, not 0.4000000059604645).
fn config_dict<'py>(py: Python<'py>, cfg: &ScoringConfig) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (cfg.to_json(),))
}

/// A dict of ScoringConfig fields (`arg` names it in errors), read by the core's serde type and
/// validated there: missing fields take their defaults, an unknown field or a bad value is a
/// ValueError naming the field.
pub fn config_from_dict(arg: &str, cfg: &Bound<'_, PyAny>) -> PyResult<ScoringConfig> {
    if !cfg.is_instance_of::<PyDict>() {
        return Err(type_error(
            arg,
            format!(
                "expected a dict of ScoringConfig fields, got {}",
                cfg.get_type().name()?
            ),
        ));
    }
    ScoringConfig::deserialize_validated(&mut Depythonizer::from_object(cfg)).py()
}

/// The `config` argument of a kernel: None (the defaults) or a dict of ScoringConfig fields
/// ([`config_from_dict`]).
pub fn optional_config(config: Option<&Bound<'_, PyAny>>) -> PyResult<ScoringConfig> {
    match config {
        None => Ok(ScoringConfig::default()),
        Some(c) => config_from_dict("config", c),
    }
}

/// Every key of `d` is a string among `allowed`: a TypeError or ValueError naming `arg`
/// (`weights: unknown component "novelty" (expected [...])`) otherwise.
fn check_keys(arg: &str, d: &Bound<'_, PyDict>, allowed: &[&str], noun: &str) -> PyResult<()> {
    for (key, _) in d.iter() {
        let key: String = key
            .extract()
            .map_err(|_| type_error(arg, "keys must be strings"))?;
        if !allowed.contains(&key.as_str()) {
            return Err(value_error(
                arg,
                format!("unknown {noun} {key:?} (expected {allowed:?})"),
            ));
        }
    }
    Ok(())
}

/// Hybrid weights from a 4-sequence `(collaborative, content, recency, engagement)` or a dict
/// with exactly those keys; validated (finite, >= 0, not all zero).
pub fn parse_weights(obj: &Bound<'_, PyAny>) -> PyResult<HybridWeights> {
    let w = if let Ok(d) = obj.cast::<PyDict>() {
        let mut w = [0f32; 4];
        check_keys("weights", d, &COMPONENTS, "component")?;
        for (slot, name) in w.iter_mut().zip(COMPONENTS) {
            let v = d
                .get_item(name)?
                .ok_or_else(|| value_error("weights", format!("missing {name:?}")))?;
            *slot = v
                .extract::<f64>()
                .map_err(|_| type_error("weights", format!("{name} must be a number")))?
                as f32;
        }
        HybridWeights::from_array(w)
    } else if let Ok(cfg) = obj.extract::<Vec<f64>>() {
        if cfg.len() != 4 {
            return Err(value_error(
                "weights",
                format!("expected 4 weights {COMPONENTS:?}, got {}", cfg.len()),
            ));
        }
        HybridWeights::from_array([cfg[0] as f32, cfg[1] as f32, cfg[2] as f32, cfg[3] as f32])
    } else {
        return Err(type_error(
            "weights",
            "expected a sequence of 4 numbers or a dict of the 4 components",
        ));
    };
    w.validate().py()?;
    Ok(w)
}

/// The default scoring configuration (`ScoringConfig::default()`) as a dict.
///
/// >>> feedrank.default_config()["weights"]["collaborative"]
/// 0.4
#[pyfunction]
pub fn default_config(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    config_dict(py, &ScoringConfig::default())
}

/// Validates a (partial) scoring configuration and returns it complete: missing fields take their
/// defaults, unknown fields and bad values raise ValueError naming the field.
///
/// >>> feedrank.validate_config({"top_k": 20})["top_k"]
/// 20
#[pyfunction]
pub fn validate_config<'py>(
    py: Python<'py>,
    cfg: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    config_dict(py, &config_from_dict("cfg", cfg)?)
}

/// Validates an experiment (a dict as its JSON file holds it: `name`, `salt`, optional
/// `starts_at` / `ends_at` in RFC 3339, `arms` of `name`, `share`, `kind` and the kind's
/// settings) and returns it normalized: times as RFC 3339 or None, a `sources` arm with all four
/// shares. A bad field raises ValueError naming it (`arms[1].config.top_kk: unknown field ...`).
///
/// >>> e = feedrank.validate_experiment({"name": "fresh_mix", "salt": "fm-1", "arms": [
/// ...     {"name": "control", "share": 0.5, "kind": "config", "config": {}},
/// ...     {"name": "fresh_only", "share": 0.5, "kind": "sources", "sources": {"fresh": 1}}]})
/// >>> e["arms"][1]["sources"], e["starts_at"]
/// ({'because_you_liked': 0.0, 'fresh': 1.0, 'personalized': 0.0, 'trending': 0.0}, None)
#[pyfunction]
pub fn validate_experiment<'py>(
    py: Python<'py>,
    experiment: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    if !experiment.is_instance_of::<PyDict>() {
        return Err(type_error(
            "experiment",
            format!(
                "expected a dict (an experiment's JSON), got {}",
                experiment.get_type().name()?
            ),
        ));
    }
    let e = Experiment::deserialize_validated(&mut Depythonizer::from_object(experiment)).py()?;
    py.import("json")?.call_method1("loads", (e.to_json(),))
}

/// The arm index of `user_id` among arms with these traffic `shares` (each in (0, 1], summing to
/// 1) under `salt`: the API's assignment, stable across processes and languages. `user_id` is
/// the id as text (for a UUID, `str(uuid)`: lowercase, hyphenated).
///
/// >>> feedrank.assign_arm("s1", "6f1c2a52-3d4e-4b8f-9a0b-1c2d3e4f5a6b", [0.2, 0.3, 0.5])
/// 2
#[pyfunction]
pub fn assign_arm(salt: &str, user_id: &str, shares: Vec<f64>) -> PyResult<usize> {
    experiment::check_shares("shares", |i| format!("shares[{i}]"), &shares).py()?;
    Ok(experiment::assign(salt, user_id, &shares))
}

/// Each user's arm in each running experiment and the experiment whose arm changes the user's
/// feed: the core's rule, the one the API serves with (the earliest-started experiment whose arm
/// changes the feed; a `config` arm of `{}` changes nothing). `experiments` are dicts as
/// `validate_experiment` takes them, in any order; `user_ids` as text (`str(uuid)`). Returns a
/// dict: `arms` int32 [users, experiments] (an arm's index in its experiment), `applied` int32
/// [users] (an index into `experiments`, -1: none applies).
///
/// >>> e = {"name": "tuned", "salt": "t-1", "starts_at": "2026-01-01T00:00:00Z", "arms": [
/// ...     {"name": "control", "share": 0.5, "kind": "config", "config": {}},
/// ...     {"name": "ridge", "share": 0.5, "kind": "config", "config": {"collaborative": "ridge"}}]}
/// >>> t = feedrank.experiment_arms([e], ["u2", "u3"])
/// >>> t["arms"].tolist(), t["applied"].tolist()
/// ([[0], [1]], [-1, 0])
#[pyfunction]
pub fn experiment_arms<'py>(
    py: Python<'py>,
    experiments: Vec<Bound<'py, PyAny>>,
    user_ids: Vec<String>,
) -> PyResult<Bound<'py, PyDict>> {
    let experiments = experiments
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let at = format!("experiments[{i}]");
            if !e.is_instance_of::<PyDict>() {
                return Err(type_error(&at, "expected a dict (an experiment's JSON)"));
            }
            Experiment::deserialize_validated(&mut Depythonizer::from_object(e))
                .map_err(|e| match e {
                    Error::InvalidArgument { arg, message } if arg == "experiment" => {
                        Error::invalid(at.clone(), message)
                    }
                    Error::InvalidArgument { arg, message } => {
                        Error::invalid(format!("{at}.{arg}"), message)
                    }
                    other => other,
                })
                .py()
        })
        .collect::<PyResult<Vec<_>>>()?;
    let n = experiments.len();
    let (arms, applied) = run_kernel(py, |_| Ok(experiment::arm_table(&experiments, &user_ids)))?;
    let d = PyDict::new(py);
    d.set_item("arms", array2(py, arms, user_ids.len(), n)?)?;
    d.set_item("applied", PyArray1::from_vec(py, applied))?;
    Ok(d)
}

/// The reason (strongest weighted component) of each row of an `n x 4` components array.
///
/// >>> feedrank.reasons(np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0]]), (0.4, 0.3, 0.2, 0.1))
/// ['similar_users', 'fresh']
#[pyfunction]
pub fn reasons(
    components: &Bound<'_, PyAny>,
    weights: &Bound<'_, PyAny>,
) -> PyResult<Vec<&'static str>> {
    let w = parse_weights(weights)?;
    let (c, _, cols) = floats_2d("components", components)?;
    if cols != 4 {
        return Err(value_error(
            "components",
            format!("must have 4 columns, got {cols}"),
        ));
    }
    Ok(c.chunks_exact(4)
        .map(|r| Reason::strongest(&w, [r[0], r[1], r[2], r[3]]).as_str())
        .collect())
}

/// The Redis key of a user's recommendations: `{prefix}recommendations:{<user_id>}` (the braces
/// are a Redis Cluster hash tag: all of a user's keys share a slot).
///
/// >>> feedrank.recommendations_key("", "42")
/// 'recommendations:{42}'
#[pyfunction]
pub fn recommendations_key(prefix: &str, user_id: &str) -> String {
    cache::recommendations_key(prefix, user_id)
}

/// A user's profile for the cache entry: a dict with exactly `terms` (term indices, ints >= 0),
/// `weights` (one float per term), `authors` (user ids, str) and `author_weights` (one float per
/// author), as `user_profiles` stores it.
fn parse_profile(obj: &Bound<'_, PyAny>) -> PyResult<CachedProfile> {
    const KEYS: [&str; 4] = ["terms", "weights", "authors", "author_weights"];
    let d = obj.cast::<PyDict>().map_err(|_| {
        let got = obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        type_error(
            "profile",
            format!("expected a dict with keys {KEYS:?}, got {got}"),
        )
    })?;
    check_keys("profile", d, &KEYS, "key")?;
    let get = |key: &str| {
        d.get_item(key)?
            .ok_or_else(|| value_error("profile", format!("missing {key:?}")))
    };
    let terms = get("terms")?;
    // an empty list reads as a float array in numpy: no term is no term, whatever its dtype
    let terms: Vec<i64> = if terms.len()? == 0 {
        Vec::new()
    } else {
        ids_1d("profile.terms", &terms)?.into_vec()
    };
    if let Some(bad) = terms.iter().find(|&&t| !(0..=u32::MAX as i64).contains(&t)) {
        return Err(value_error(
            "profile.terms",
            format!("must be term indices >= 0, found {bad}"),
        ));
    }
    let authors = get("authors")?
        .extract::<Vec<String>>()
        .map_err(|_| type_error("profile.authors", "expected a sequence of str (user ids)"))?;
    let profile = CachedProfile {
        terms: terms.iter().map(|&t| t as u32).collect(),
        weights: floats_1d("profile.weights", &get("weights")?)?.into_vec(),
        authors,
        author_weights: floats_1d("profile.author_weights", &get("author_weights")?)?.into_vec(),
    };
    profile.validate().py()?;
    Ok(profile)
}

/// The Redis value of a user's recommendations (JSON bytes, see cache.rs), items in the given
/// order; each item's reason is `Reason::strongest` of its components under `weights`.
/// `model_id` is the run's serving model and `profile` the user's stored profile in it (a dict of
/// `terms`, `weights`, `authors`, `author_weights`, as `user_profiles` holds it); both optional.
///
/// >>> feedrank.encode_cache_entry(1, 1764201600, ["p1"], np.array([0.5]), np.array([[1.0, 0, 0, 0]]), (0.4, 0.3, 0.2, 0.1))
/// b'{"v":2,"run_id":1,"generated_at":1764201600,"items":[{"post_id":"p1","score":0.5,"reason":"similar_users","components":[1.0,0.0,0.0,0.0]}]}'
/// >>> profile = {"terms": [4, 9], "weights": [0.8, 0.6], "authors": ["u7"], "author_weights": [1.0]}
/// >>> feedrank.encode_cache_entry(1, 1764201600, [], np.zeros(0), np.zeros((0, 4)), (0.4, 0.3, 0.2, 0.1), model_id=3, profile=profile)
/// b'{"v":2,"run_id":1,"model_id":3,"generated_at":1764201600,"items":[],"profile":{"terms":[4,9],"weights":[0.8,0.6],"authors":["u7"],"author_weights":[1.0]}}'
#[pyfunction]
#[pyo3(signature = (run_id, generated_at, post_ids, scores, components, weights, model_id=None, profile=None))]
#[allow(clippy::too_many_arguments)]
pub fn encode_cache_entry<'py>(
    py: Python<'py>,
    run_id: i64,
    generated_at: i64,
    post_ids: Vec<String>,
    scores: &Bound<'py, PyAny>,
    components: &Bound<'py, PyAny>,
    weights: &Bound<'py, PyAny>,
    model_id: Option<i64>,
    profile: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let w = parse_weights(weights)?;
    let scores = floats_1d("scores", scores)?;
    let (comps, rows, cols) = floats_2d("components", components)?;
    if scores.len() != post_ids.len() {
        return Err(value_error(
            "scores",
            format!(
                "has {} values for {} post_ids",
                scores.len(),
                post_ids.len()
            ),
        ));
    }
    if rows != post_ids.len() || cols != 4 {
        return Err(value_error(
            "components",
            format!("must be {} x 4, got {rows} x {cols}", post_ids.len()),
        ));
    }
    let profile = profile.map(parse_profile).transpose()?;
    let items = post_ids
        .into_iter()
        .zip(scores.iter().copied())
        .zip(comps.chunks_exact(4))
        .map(|((post_id, score), c)| {
            let components = [c[0], c[1], c[2], c[3]];
            CachedRecommendation {
                post_id,
                score,
                reason: Reason::strongest(&w, components),
                components,
            }
        })
        .collect();
    let feed = CachedFeed::new(run_id, generated_at, items).with_model(model_id, profile);
    Ok(PyBytes::new(py, &cache::encode(&feed)))
}

/// Decodes a cache entry (rejects versions this build cannot read) into a dict; `model_id` and
/// `profile` are None when the entry has none (every version-1 entry).
///
/// >>> feedrank.decode_cache_entry(b'{"v":1,"run_id":1,"generated_at":0,"items":[]}')
/// {'v': 1, 'run_id': 1, 'model_id': None, 'generated_at': 0, 'items': [], 'profile': None}
#[pyfunction]
pub fn decode_cache_entry<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let feed = cache::decode(data).py()?;
    let items = PyList::empty(py);
    for it in feed.items {
        let d = PyDict::new(py);
        d.set_item("post_id", it.post_id)?;
        d.set_item("score", it.score as f64)?;
        d.set_item("reason", it.reason.as_str())?;
        d.set_item(
            "components",
            PyList::new(py, it.components.iter().map(|&x| x as f64))?,
        )?;
        items.append(d)?;
    }
    let out = PyDict::new(py);
    out.set_item("v", feed.v)?;
    out.set_item("run_id", feed.run_id)?;
    out.set_item("model_id", feed.model_id)?;
    out.set_item("generated_at", feed.generated_at)?;
    out.set_item("items", items)?;
    let profile = match feed.profile {
        None => None,
        Some(p) => {
            let d = PyDict::new(py);
            d.set_item("terms", p.terms)?;
            // the f32 values widened exactly, so they compare equal to float32 arrays
            d.set_item(
                "weights",
                p.weights.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            )?;
            d.set_item("authors", p.authors)?;
            d.set_item(
                "author_weights",
                p.author_weights
                    .iter()
                    .map(|&x| x as f64)
                    .collect::<Vec<_>>(),
            )?;
            Some(d)
        }
    };
    out.set_item("profile", profile)?;
    Ok(out.into_any())
}

/// The four component names, in array order.
///
/// >>> feedrank.component_names()
/// ('collaborative', 'content', 'recency', 'engagement')
#[pyfunction]
pub fn component_names(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    PyTuple::new(py, COMPONENTS)
}

/// The interaction types a client can track, in the order of the interaction weights (the
/// core's `InteractionType`).
///
/// >>> feedrank.interaction_types()
/// ('view', 'click', 'like', 'share', 'hide')
#[pyfunction]
pub fn interaction_types(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    PyTuple::new(py, InteractionType::NAMES)
}

/// The values of the config's `collaborative` field (the core's `CollaborativeModel`).
///
/// >>> feedrank.collaborative_models()
/// ('user_user', 'item_item', 'ridge')
#[pyfunction]
pub fn collaborative_models(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    PyTuple::new(py, CollaborativeModel::NAMES)
}

/// The reasons a recommended post can carry (the core's `Reason`): the `reason` field of the
/// pipeline's rows and of the feed's posts.
///
/// >>> feedrank.reason_names()
/// ('similar_users', 'similar_content', 'fresh', 'popular', 'liked_author', 'because_you_liked', 'trending')
#[pyfunction]
pub fn reason_names(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    PyTuple::new(py, Reason::NAMES)
}

/// The values of the config's `weighting` field (the core's `InteractionWeighting`).
///
/// >>> feedrank.weighting_names()
/// ('none', 'binary', 'tfidf', 'bm25')
#[pyfunction]
pub fn weighting_names(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    PyTuple::new(py, InteractionWeighting::NAMES)
}
