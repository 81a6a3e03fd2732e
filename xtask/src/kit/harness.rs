//! The test harness (guard-tests) panics on failure, as tests should. Here every call into it
//! goes through [`attempt`], which turns the panic into an error with the harness' message;
//! whatever the closure had built is dropped while unwinding, so nothing is left behind.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use anyhow::{Result, anyhow};

thread_local! {
    static INSIDE: Cell<u32> = const { Cell::new(0) };
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A panic hook that keeps quiet inside [`attempt`] (the message becomes the error) and
/// behaves as the default hook elsewhere, so real bugs still print where they happened.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if INSIDE.with(Cell::get) > 0 {
                let msg = info
                    .payload()
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic without a message".to_string());
                CAUGHT.with(|c| *c.borrow_mut() = Some(msg));
            } else {
                default(info);
            }
        }));
    });
}

/// Runs `f` (a harness call that may panic) and returns its value, or the panic message as an
/// error prefixed with `what`.
pub fn attempt<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    install_hook();
    INSIDE.with(|c| c.set(c.get() + 1));
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    INSIDE.with(|c| c.set(c.get() - 1));
    r.map_err(|_| {
        let msg = CAUGHT
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| "failed".to_string());
        anyhow!("{what}: {msg}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors_and_values_pass() {
        assert_eq!(attempt("x", || 3).unwrap(), 3);
        let e = attempt("making a thing", || -> u32 { panic!("no {}", "luck") }).unwrap_err();
        assert_eq!(e.to_string(), "making a thing: no luck");
    }
}
