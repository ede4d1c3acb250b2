//! criusd: the crius CRI daemon.

use anyhow::Context;
use clap::{Parser, Subcommand};
use crius_cri_server::config::{flat_keys, Config, Origins, DEFAULT_CONFIG_PATH};
use std::path::PathBuf;

#[derive(Parser, Debug, Clone)]
#[command(name = "criusd", version, about = "crius: a Kubernetes CRI runtime")]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Persistent state directory (overrides `root`).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Runtime state directory (overrides `state`).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// CRI socket path (overrides `socket`).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Log level (overrides `log_level`).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
enum Command {
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Documentation and shell completions, for packaging.
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: GenerateCommand,
    },
}

#[derive(Subcommand, Debug, Clone)]
enum GenerateCommand {
    /// The criusd(8) man page (roff).
    Man,
    /// The crius.toml(5) man page (roff), from the configuration's documentation.
    ConfigMan,
    /// A completion script for the shell.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug, Clone)]
enum ConfigCommand {
    /// Print the full default configuration.
    Default,
    /// Print the effective configuration (file, drop-ins and flags).
    Show {
        /// Say which file (or the command line) set each key.
        #[arg(long)]
        origin: bool,
    },
}

fn effective_config(cli: &Cli) -> anyhow::Result<Config> {
    Ok(effective_config_with_origins(cli)?.0)
}

fn effective_config_with_origins(cli: &Cli) -> anyhow::Result<(Config, Origins)> {
    let (path, explicit) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let (mut config, mut origins) = Config::load_layered(&path, explicit)?;
    let flag = PathBuf::from("(command line)");
    if let Some(root) = &cli.root {
        config.root = root.clone();
        origins.insert("root".into(), flag.clone());
    }
    if let Some(state) = &cli.state {
        config.state = state.clone();
        origins.insert("state".into(), flag.clone());
    }
    if let Some(socket) = &cli.socket {
        config.socket = socket.clone();
        origins.insert("socket".into(), flag.clone());
    }
    if let Some(level) = &cli.log_level {
        config.log_level = level.clone();
        origins.insert("log_level".into(), flag);
    }
    config.validate()?;
    Ok((config, origins))
}

/// `criusd generate ...`: prints a man page or a completion script.
fn generate(what: &GenerateCommand) -> anyhow::Result<()> {
    use clap::CommandFactory;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match what {
        GenerateCommand::Man => clap_mangen::Man::new(Cli::command())
            .section("8")
            .render(&mut out)
            .context("cannot render the man page")?,
        GenerateCommand::ConfigMan => out.write_all(
            crius_cri_server::config_docs::man_page(env!("CARGO_PKG_VERSION")).as_bytes(),
        )?,
        GenerateCommand::Completion { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "criusd", &mut out)
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // Before any thread: NOTIFY_SOCKET leaves the environment.
    crius_cri_server::notify::init();
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Config {
            what: ConfigCommand::Default,
        }) => {
            print!(
                "{}",
                crius_cri_server::config_docs::commented_toml(&Config::default())
            );
            return Ok(());
        }
        Some(Command::Config {
            what: ConfigCommand::Show { origin: false },
        }) => {
            print!("{}", effective_config(&cli)?.to_toml());
            return Ok(());
        }
        Some(Command::Config {
            what: ConfigCommand::Show { origin: true },
        }) => {
            let (config, origins) = effective_config_with_origins(&cli)?;
            for (key, value) in flat_keys(&config) {
                let from = origins
                    .get(&key)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(default)".into());
                println!("{key} = {value}  # {from}");
            }
            return Ok(());
        }
        Some(Command::Generate { what }) => return generate(what),
        None => {}
    }
    let config = effective_config(&cli)?;
    // glibc gives every thread that allocates an arena of its own (up to 8
    // per core), and each keeps freed pages resident. criusd's threads
    // (async workers, the blocking pool, one ttrpc reader per shim) do short
    // work: two arenas keep contention low and the resident set small.
    // SAFETY: mallopt only tunes the allocator, before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        // Within the runtime: the OTLP exporter's channel lives on it.
        let telemetry = crius_cri_server::telemetry::init(&config)?;
        let shutdown = crius_cri_server::server::shutdown_signal()?;
        let hangup = crius_cri_server::server::hangup_signal()?;
        let reload_cli = cli.clone();
        let reloader = crius_cri_server::reload::Reloader {
            load: Box::new(move || effective_config(&reload_cli)),
            log: Some(telemetry.log_control()),
        };
        let result =
            crius_cri_server::server::run(config, shutdown, Some((hangup, reloader))).await;
        // Spans of the last calls go out before the process ends.
        telemetry.shutdown().await;
        result
    });
    // Work still on the blocking pool (a CNI plugin or a synchronous shim
    // call that hangs) must not keep a stopped criusd alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
