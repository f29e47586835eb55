//! The one way the binding runs a core kernel: [`run_kernel`], as polars' `enter_polars`.
//!
//! The kernel runs on its own thread with the GIL released (other Python threads go on); the
//! calling thread waits without the GIL and looks for signals every [`SIGNAL_POLL`]. On Ctrl-C
//! it cancels the kernel's [`Cancel`] token, which the core's long loops check between blocks,
//! waits for the kernel to stop and raises the `KeyboardInterrupt` (or whatever the Python
//! signal handler raised). Core errors become Python exceptions through `error::to_py`.

use std::panic;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, Thread};
use std::time::Duration;

use feedrank_core::cancel::Cancel;
use pyo3::prelude::*;

use crate::error::to_py;

/// How long the caller waits between two looks for signals while a kernel runs. Python itself
/// runs signal handlers only on the main thread, so elsewhere the look finds nothing.
const SIGNAL_POLL: Duration = Duration::from_millis(20);

/// Marks the kernel finished and wakes the caller, however the kernel ends (value, error,
/// panic).
struct Finished<'a> {
    done: &'a AtomicBool,
    caller: &'a Thread,
}

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        self.caller.unpark();
    }
}

/// Runs `kernel` with the GIL released, lets Ctrl-C interrupt it (see the module docs) and maps
/// its error. `kernel` must not touch Python: give it views (`&[T]`, `CsrRef`) taken before.
pub fn run_kernel<T, F>(py: Python<'_>, kernel: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce(&Cancel) -> feedrank_core::Result<T> + Send,
{
    let cancel = Cancel::new();
    let done = AtomicBool::new(false);
    let caller = thread::current();
    let (joined, interrupt) = thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let _finished = Finished {
                done: &done,
                caller: &caller,
            };
            kernel(&cancel)
        });
        let mut interrupt = None;
        while !done.load(Ordering::Acquire) {
            py.detach(|| thread::park_timeout(SIGNAL_POLL));
            if interrupt.is_none() && !done.load(Ordering::Acquire) {
                if let Err(e) = py.check_signals() {
                    cancel.cancel();
                    interrupt = Some(e);
                }
            }
        }
        (worker.join(), interrupt)
    });
    let result = joined.unwrap_or_else(|payload| panic::resume_unwind(payload));
    match interrupt {
        Some(e) => Err(e),
        None => result.map_err(to_py),
    }
}

/// [`run_kernel`] for a kernel that cannot fail.
pub fn run_infallible<T, F>(py: Python<'_>, kernel: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce(&Cancel) -> T + Send,
{
    run_kernel(py, |cancel| Ok(kernel(cancel)))
}
