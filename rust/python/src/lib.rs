//! The Python binding of feedrank-core. Only argument conversion, GIL release, calls into the
//! core and error mapping live here; every algorithm is in `feedrank-core`.

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
