//! The harness: scenario language, runner, differential oracle, reports, generator.
//!
//! `p2m-core` (the model of Xen) and `reference-model` (the flat reference) know
//! nothing of each other; this crate joins them.

pub mod bench;
pub mod blame;
pub mod dot;
pub mod exhaustive;
pub mod fuzzing;
pub mod generate;
pub mod log_check;
pub mod minimize;
pub mod mutate;
pub mod oracle;
pub mod reach;
pub mod runner;
pub mod scenario;

pub use oracle::{DivergenceClass, Finding};
pub use runner::{run, run_with, Divergence, RunOutcome, RunStats, Session, StepOutcome};
pub use scenario::{Op, Scenario};

/// Resolves a revision by name, or explains which names exist.
pub fn revision_by_name(name: &str) -> Result<p2m_core::Revision, String> {
    p2m_core::Revision::by_name(name).ok_or_else(|| {
        format!(
            "unknown revision '{name}' (known: {})",
            p2m_core::Revision::names().join(", ")
        )
    })
}

/// The revision named by `P2M_REVISION`, else `fixed`, with the switches listed in
/// `P2M_ASSUME_FIXED` (comma- or space-separated) set to their `fixed` values.
pub fn revision_from_env() -> Result<p2m_core::Revision, String> {
    let rev = match std::env::var("P2M_REVISION") {
        Ok(n) if !n.is_empty() => revision_by_name(&n)?,
        _ => p2m_core::Revision::fixed(),
    };
    let names: Vec<String> = std::env::var("P2M_ASSUME_FIXED")
        .unwrap_or_default()
        .split([',', ' '])
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    assume_fixed(rev, &names).map_err(|e| format!("P2M_ASSUME_FIXED: {e}"))
}

/// `rev` with each named switch set to its value in the line's reference revision ("assume this hole is closed,
/// what else is there?"); an unknown switch name is a one-line error.
pub fn assume_fixed(
    rev: p2m_core::Revision,
    names: &[String],
) -> Result<p2m_core::Revision, String> {
    rev.assume_fixed(names)
}

/// The hardware semantics preset `name`, else `$P2M_HW`, else none (keep each
/// scenario's own, conservative unless its config line says otherwise).
pub fn hw_from(name: Option<&str>) -> Result<Option<p2m_core::HwSemantics>, String> {
    let env = std::env::var("P2M_HW").ok().filter(|v| !v.is_empty());
    match name.map(str::to_string).or(env) {
        None => Ok(None),
        Some(n) => p2m_core::HwSemantics::preset(&n).map(Some).ok_or_else(|| {
            let names: Vec<&str> = p2m_core::HwSemantics::PRESETS.iter().map(|p| p.0).collect();
            format!(
                "unknown hardware preset '{n}' (known: {})",
                names.join(", ")
            )
        }),
    }
}

/// True when `$P2M_STRICT` asks for every divergence class to be fatal.
pub fn strict_from_env() -> bool {
    matches!(
        std::env::var("P2M_STRICT").as_deref(),
        Ok("1") | Ok("yes") | Ok("true")
    )
}

/// `P2M_API`: unset, empty or `callers` (the default, as `hunt`'s): fuzz inputs are read
/// as caller ops only ([`scenario::bytes::decode_callers`]) and only a divergence a caller
/// chain reaches counts; `raw`: the raw API (`set_entry` ops and caller ops, every
/// divergence). Read once per process; another value is a one-line error.
pub fn callers_api() -> Result<bool, String> {
    static API: std::sync::OnceLock<Result<bool, String>> = std::sync::OnceLock::new();
    API.get_or_init(|| match std::env::var("P2M_API").as_deref() {
        Ok("raw") => Ok(false),
        Err(_) | Ok("") | Ok("callers") => Ok(true),
        Ok(v) => Err(format!("P2M_API: unknown value '{v}' (raw or callers)")),
    })
    .clone()
}

/// `P2M_REACHABLE=1`: only divergences a Xen caller can produce in a security-supported
/// setup count (see [`reach`]); the others are passed over (fuzz targets, `hunt
/// --reachable`).
pub fn reachable_from_env() -> bool {
    matches!(
        std::env::var("P2M_REACHABLE").as_deref(),
        Ok("1") | Ok("yes") | Ok("true")
    )
}
