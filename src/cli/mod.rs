//! The subcommands of the `riskgate` binary.

pub mod bench;
pub mod check;
pub mod compare;
pub mod explain;
pub mod lines;
pub mod progress;
pub mod replay;
pub mod report;
#[cfg(feature = "server")]
pub mod serve;
pub mod simulate;
pub mod stats;
pub mod summary;
pub mod test;
pub mod workload;

/// The store a `--store URL` names, with the rest of `[store]` (key prefix, timeouts, `on_store_error`) from
/// the rules folder's `riskgate.toml`; `Ok(None)` without `--store`.
pub fn store_from(
    url: Option<&str>,
    file: &riskgate::StoreSettings,
) -> Result<Option<riskgate::StoreSettings>, String> {
    let Some(url) = url else { return Ok(None) };
    let given = riskgate::StoreSettings::from_url(url)?;
    let mut s = file.clone();
    s.backend = given.backend;
    s.url = given.url;
    s.cluster = given.cluster;
    s.path = given.path;
    Ok(Some(s))
}
