//! Wrappers of the collaborative models in `feedrank_core::recommenders`: convert, release the
//! GIL, call the core, convert back.

use feedrank_core::recommenders::{self, RidgeParams};
use pyo3::prelude::*;

use crate::convert::{csr_arg, csr_out, positive};
use crate::run::run_kernel;

/// The neighbourhood ridge item-item model (EASE restricted to each item's `neighbors` strongest
/// co-occurring items): an `items x items` CSR `S`, a user's scores being `x_u @ S`, the same
/// layout as `item_neighbors` (so `recommend_items` scores with it).
///
/// >>> X = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=np.float32))
/// >>> feedrank.ridge_item_neighbors(X, neighbors=2, l2=1.0).toarray()
/// array([[0. , 0.5, 0. ],
///        [0.5, 0. , 0.5],
///        [0. , 0.5, 0. ]], dtype=float32)
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
    let x = x.view();
    let s = run_kernel(py, |cancel| {
        recommenders::ridge_item_neighbors(x, params, cancel)
    })?;
    csr_out(py, s)
}
