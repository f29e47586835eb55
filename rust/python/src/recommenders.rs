//! Wrappers of the collaborative models in `feedrank_core::recommenders`: convert, release the
//! GIL, call the core, convert back.

use feedrank_core::recommenders::{self, RidgeParams};
use pyo3::prelude::*;

use crate::convert::{csr_arg, csr_out, positive};
use crate::error::IntoPyResult;

/// The neighbourhood ridge item-item model (EASE restricted to each item's `neighbors` strongest
/// co-occurring items): an `items x items` CSR `S`, a user's scores being `x_u @ S`, the same
/// layout as `item_neighbors` (so `recommend_items` scores with it).
#[pyfunction]
#[pyo3(signature = (interactions, neighbors=100, l2=50.0))]
pub fn ridge_item_neighbors<'py>(
    py: Python<'py>,
    interactions: &Bound<'py, PyAny>,
    neighbors: i64,
    l2: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let x = csr_arg("interactions", interactions)?;
    let neighbors = positive("neighbors", neighbors)?;
    let params = RidgeParams {
        neighbors,
        l2: l2 as f32,
    };
    let s = py
        .detach(|| recommenders::ridge_item_neighbors(x.view(), params))
        .py()?;
    csr_out(py, s)
}
