//! SIGHUP: re-read the configuration and apply what can change at run time.
//!
//! Applied at once: `log_level` and `handback_expiry`. Every other changed
//! key is logged as needing a restart. A file that does not load or
//! validate keeps the running configuration; the error names the key.

use crate::config::Config;
use crate::daemon::Daemon;

/// Keys a reload applies to the running daemon.
pub const RELOADABLE: [&str; 2] = ["log_level", "handback_expiry"];

/// Loads the configuration again (the file plus the command line's overrides).
pub type Loader = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// What a reload needs: how to load the configuration and the log filter.
pub struct Reloader {
    /// Reads and validates the configuration.
    pub load: Loader,
    /// Changes the log filter.
    pub log: Option<crate::telemetry::LogControl>,
}

/// What one reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Keys applied.
    pub applied: Vec<String>,
    /// Keys changed in the file that take effect only after a restart.
    pub need_restart: Vec<String>,
}

impl Reloader {
    /// Reloads: on success `current` becomes the new configuration.
    pub fn reload(&self, daemon: &Daemon, current: &mut Config) -> anyhow::Result<Outcome> {
        let new = (self.load)()?;
        // Check every reloadable value before applying any.
        let expiry = new.handback_expiry()?;
        let mut outcome = Outcome::default();
        for key in current.changed_keys(&new) {
            if key == "log_level" {
                if let Some(log) = &self.log {
                    log.set_level(&new.log_level)?;
                }
                outcome.applied.push(key);
            } else if key == "handback_expiry" {
                daemon.handback.set_expiry(expiry);
                outcome.applied.push(key);
            } else {
                outcome.need_restart.push(key);
            }
        }
        // Keys needing a restart keep their running values.
        let mut kept = current.clone();
        kept.log_level = new.log_level;
        kept.handback_expiry = new.handback_expiry;
        *current = kept;
        Ok(outcome)
    }

    /// Reloads and logs what happened.
    pub fn reload_and_log(&self, daemon: &Daemon, current: &mut Config) {
        match self.reload(daemon, current) {
            Ok(o) => {
                for key in &o.need_restart {
                    tracing::warn!(key = %key, "config key changed; it needs a restart to take effect");
                }
                tracing::info!(
                    applied = ?o.applied,
                    needs_restart = ?o.need_restart,
                    log_level = %current.log_level,
                    "configuration reloaded"
                );
            }
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "configuration reload failed; keeping the running configuration"
            ),
        }
        tracing::debug!(config = ?current, "running configuration");
    }
}
