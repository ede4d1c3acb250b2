//! CNI (Container Network Interface) support.

pub mod config;

pub use config::{
    check_plugins, find_plugin, load_default_network, ConfigError, NetworkConfigList, PluginConfig,
};
