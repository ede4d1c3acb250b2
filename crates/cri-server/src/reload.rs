//! SIGHUP: re-read the configuration and apply what can change at run time.
//!
//! Applied at once (the keys under [`RELOADABLE`]): the log level and
//! format (for the lines logged afterwards), the hand-back expiry, the runtime handler table and the default handler (a
//! new handler serves new pods; a dropped one refuses new pods while the
//! pods on it keep working, see `Daemon::handler`), `[cni]` (the network is
//! read again for the next pod), `[registry]` and `[images]` (for pulls that
//! start afterwards), `[metrics]` (the endpoint opens, moves or closes),
//! `[cdi]` and `device_ownership_from_security_context` (for containers
//! created afterwards), `shim_slice` (for shims launched afterwards). Every
//! other changed key is logged as needing a restart and keeps its running
//! value. A file that does not load or validate changes nothing; the error
//! names the key.

use crate::config::Config;
use crate::daemon::Daemon;

/// The top-level keys (or tables) a reload applies to the running daemon.
pub const RELOADABLE: [&str; 12] = [
    "log_level",
    "log_format",
    "handback_expiry",
    "default_runtime",
    "runtimes",
    "cni",
    "registry",
    "images",
    "metrics",
    "cdi",
    "device_ownership_from_security_context",
    "shim_slice",
];

/// Whether a changed (dotted) key is applied by a reload.
pub fn reloadable(key: &str) -> bool {
    let top = key.split('.').next().unwrap_or(key);
    RELOADABLE.contains(&top)
}

/// The configuration to run after a reload: `new`'s values for the
/// reloadable keys, `current`'s for every other.
pub fn merged(current: &Config, new: &Config) -> Config {
    let mut next = current.clone();
    next.log_level = new.log_level.clone();
    next.log_format = new.log_format;
    next.handback_expiry = new.handback_expiry.clone();
    next.default_runtime = new.default_runtime.clone();
    next.runtimes = new.runtimes.clone();
    next.cni = new.cni.clone();
    next.registry = new.registry.clone();
    next.images = new.images.clone();
    next.metrics = new.metrics.clone();
    next.cdi = new.cdi.clone();
    next.device_ownership_from_security_context = new.device_ownership_from_security_context;
    next.shim_slice = new.shim_slice.clone();
    next
}

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
    /// What could not be applied although the file was valid (the metrics
    /// address could not be bound, for one).
    pub failed: Vec<String>,
}

impl Reloader {
    /// Reloads: on success `current` becomes the running configuration.
    pub async fn reload(
        &self,
        daemon: &Daemon,
        metrics: &crate::metrics::Endpoint,
        current: &mut Config,
    ) -> anyhow::Result<Outcome> {
        let new = (self.load)()?;
        // Check every value before applying any.
        let expiry = new.handback_expiry()?;
        let next = merged(current, &new);
        let mut outcome = Outcome::default();
        for key in current.changed_keys(&new) {
            if reloadable(&key) {
                outcome.applied.push(key);
            } else {
                outcome.need_restart.push(key);
            }
        }
        if let Some(log) = &self.log {
            if next.log_level != current.log_level {
                log.set_level(&next.log_level)?;
            }
            log.set_format(next.log_format);
        }
        daemon.handback.set_expiry(expiry);
        daemon
            .images
            .set_registry(&next.registry.config_path, next.image_options());
        if let Err(e) = metrics.set_address(&next.metrics.address).await {
            outcome.failed.push(e);
        }
        daemon.set_config(next.clone());
        *current = next;
        Ok(outcome)
    }

    /// Reloads and logs what happened.
    pub async fn reload_and_log(
        &self,
        daemon: &Daemon,
        metrics: &crate::metrics::Endpoint,
        current: &mut Config,
    ) {
        match self.reload(daemon, metrics, current).await {
            Ok(o) => {
                for key in &o.need_restart {
                    tracing::warn!(key = %key, "config key changed; it needs a restart to take effect");
                }
                for e in &o.failed {
                    tracing::error!(error = %e, "reloaded configuration not fully applied");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloadable_keys_take_the_new_values_and_the_rest_stay() {
        let current = Config::default();
        let text = r#"
root = "/elsewhere"
log_level = "debug"
log_format = "json"
default_runtime = "crun"
handback_expiry = "1m"
device_ownership_from_security_context = true
shim_slice = "crius-shims.slice"
systemd_address = "unix:path=/run/elsewhere"
[runtimes.crun]
path = "crun"
[cni]
conf_dir = "/etc/other-net.d"
[registry]
config_path = "/etc/other-certs.d"
[metrics]
address = "127.0.0.1:9190"
[stream]
address = "127.0.0.1:10010"
"#;
        let new: Config = toml::from_str(text).unwrap();
        let next = merged(&current, &new);
        // (key, reloadable)
        let cases = [
            ("root", false),
            ("stream.address", false),
            ("log_level", true),
            ("log_format", true),
            ("default_runtime", true),
            ("handback_expiry", true),
            ("device_ownership_from_security_context", true),
            ("shim_slice", true),
            ("systemd_address", false),
            ("runtimes.crun", true),
            ("cni.conf_dir", true),
            ("registry.config_path", true),
            ("metrics.address", true),
        ];
        let changed = current.changed_keys(&new);
        for (key, want) in cases {
            assert!(changed.iter().any(|k| k == key), "{key} in {changed:?}");
            assert_eq!(reloadable(key), want, "{key}");
        }
        // Every changed key the merge applied is reloadable, every other
        // kept its running value.
        let kept = next.changed_keys(&new);
        let applied = current.changed_keys(&next);
        for key in &applied {
            assert!(reloadable(key), "{key} applied");
        }
        for key in &kept {
            assert!(!reloadable(key), "{key} kept");
        }
        assert_eq!(next.root, current.root);
        assert_eq!(next.stream, current.stream);
        assert!(next.runtimes.contains_key("crun") && next.default_runtime == "crun");
    }
}
