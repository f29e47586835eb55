//! Cooperative cancellation of long kernels.
//!
//! The caller keeps a [`Cancel`] and may set it from another thread (the Python binding does so
//! when Ctrl-C arrives); a kernel checks it between blocks of work (an atomic load, nothing
//! else), skips the blocks still to come and returns [`Error::Cancelled`]. A kernel never stops
//! in the middle of a block, so whatever it returns is whole.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

/// A request to stop, shared by the caller and the kernel it runs.
#[derive(Debug, Default)]
pub struct Cancel(AtomicBool);

impl Cancel {
    /// Not cancelled (yet).
    pub fn new() -> Self {
        Cancel::default()
    }

    /// Asks every kernel that holds this token to stop at its next check.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Error::Cancelled)` once cancelled: for a kernel's `?` after its parallel loop.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            return Err(Error::Cancelled);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reports_cancellation_once_set() {
        let c = Cancel::new();
        assert!(!c.is_cancelled() && c.check().is_ok());
        c.cancel();
        assert!(c.is_cancelled());
        assert_eq!(c.check(), Err(Error::Cancelled));
    }
}
