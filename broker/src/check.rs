//! `tidemq check-config`: what a start loads from disk before it binds
//! (each listener's certificates, password and ACL files, each bridge's
//! TLS files), loaded and dropped. Binding, the store and its lock are
//! left to the start: a check must not take the directory of a running
//! broker.

use crate::config::Settings;
use crate::listener::Endpoint;
use crate::server::StartError;

/// Loads every listener's files as [`crate::Broker::start`] does, without
/// binding; the error names the file or key (exit code 2).
pub fn check_config(settings: &Settings) -> Result<(), StartError> {
    for listener in &settings.listeners {
        Endpoint::new(listener, settings)?;
    }
    crate::bridge::Prepared::load_all(&settings.bridges)?;
    Ok(())
}
