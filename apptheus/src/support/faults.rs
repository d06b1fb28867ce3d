//! Fault injection for tests: named points where a test can stall or fail the agent at an exact
//! step (for instance to SIGKILL it half-way through a placement). Compiled in only with the
//! `failpoints` feature (`cargo xtask test` enables it; release builds never have it); then
//! `FAILPOINTS="<point>=<action>;..."` (the `fail` crate's syntax, e.g. `sleep(60000)`) arms them.

/// Arms the points named in `FAILPOINTS`; keep the guard for the agent's life.
#[cfg(feature = "failpoints")]
pub fn setup() -> Option<fail::FailScenario<'static>> {
    Some(fail::FailScenario::setup())
}

#[cfg(not(feature = "failpoints"))]
pub fn setup() -> Option<()> {
    None
}

/// A named step. When armed, it logs `failpoint reached` (what tests wait for) before acting.
#[cfg(feature = "failpoints")]
pub fn point(name: &str) {
    if fail::list().iter().any(|(armed, _)| armed == name) {
        tracing::warn!(point = name, "failpoint reached");
    }
    fail::fail_point!(name);
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn point(_name: &str) {}
