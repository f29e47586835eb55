//! The Python binding of feedrank-core. Only argument conversion, running kernels (`run.rs`:
//! the GIL released, Ctrl-C honoured), calls into the core and error mapping live here; every
//! algorithm is in `feedrank-core`.

mod contracts;
mod convert;
mod error;
mod hybrid;
mod kernels;
mod recommenders;
mod run;
mod similarity;
mod sources;
mod tfidf;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // contracts
    m.add_function(wrap_pyfunction!(contracts::default_config, m)?)?;
    m.add_function(wrap_pyfunction!(contracts::validate_config, m)?)?;
    m.add_function(wrap_pyfunction!(contracts::validate_experiment, m)?)?;
    m.add_function(wrap_pyfunction!(contracts::assign_arm, m)?)?;
    m.add_function(wrap_pyfunction!(contracts::experiment_arms, m)?)?;
    m.add_function(wrap_pyfunction!(contracts::reasons, m)?)?;
    m.add_function(wrap_pyfunction!(contracts::recommendations_key, m)?)?;
    m.add_function(wrap_pyfunction!(contracts::encode_cache_entry, m)?)?;
    m.add_function(wrap_pyfunction!(contracts::decode_cache_entry, m)?)?;
    m.add_function(wrap_pyfunction!(contracts::component_names, m)?)?;
    m.add_function(wrap_pyfunction!(contracts::interaction_types, m)?)?;
    m.add_function(wrap_pyfunction!(contracts::collaborative_models, m)?)?;
    m.add_function(wrap_pyfunction!(contracts::weighting_names, m)?)?;
    m.add_function(wrap_pyfunction!(contracts::reason_names, m)?)?;
    m.add_function(wrap_pyfunction!(sources::source_names, m)?)?;
    // kernels
    m.add_function(wrap_pyfunction!(kernels::shuffle, m)?)?;
    m.add_function(wrap_pyfunction!(kernels::permutation, m)?)?;
    m.add_function(wrap_pyfunction!(kernels::ranking_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(kernels::metrics_at_k, m)?)?;
    m.add_function(wrap_pyfunction!(tfidf::tfidf_fit_transform, m)?)?;
    m.add_function(wrap_pyfunction!(tfidf::tokenize, m)?)?;
    m.add_class::<tfidf::PyTfidfModel>()?;
    m.add_function(wrap_pyfunction!(similarity::weight_interactions, m)?)?;
    m.add_function(wrap_pyfunction!(similarity::history_weights, m)?)?;
    m.add_function(wrap_pyfunction!(similarity::cosine_topk, m)?)?;
    m.add_function(wrap_pyfunction!(similarity::item_neighbors, m)?)?;
    m.add_function(wrap_pyfunction!(similarity::recommend_items, m)?)?;
    m.add_function(wrap_pyfunction!(hybrid::hybrid_topk, m)?)?;
    m.add_class::<hybrid::PyHybridModel>()?;
    m.add_function(wrap_pyfunction!(recommenders::ridge_item_neighbors, m)?)?;
    // the feed's request-time sources
    m.add_function(wrap_pyfunction!(sources::user_profiles, m)?)?;
    m.add_function(wrap_pyfunction!(sources::fresh_topk, m)?)?;
    m.add_function(wrap_pyfunction!(sources::blend, m)?)?;
    m.add_function(wrap_pyfunction!(sources::diversify, m)?)?;
    m.add("AUTHOR_CAP", feedrank_core::diversify::AUTHOR_CAP)?;
    Ok(())
}
