//! `cargo xtask`: set-up, daemon runs and the test suite.
//!
//! xtask must build without protoc (the CRI bindings need it), because its
//! first job on a fresh machine is to install protoc.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

mod chaos;
mod conformance;
mod fuzz;
mod package;
mod setup;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup         install what criusd and the tests need (Debian packages, CNI conflist)
  run [ARGS]    set up when needed, build in release mode, run criusd in the foreground
                (ARGS are passed to criusd, e.g. `cargo xtask run -- --log-level debug`)
  test          fmt check, clippy -D warnings, unit tests, integration tests
                (these include `chaos_short`: two fixed chaos seeds, about a minute)
  unit          unit tests only
  integration   integration tests only
  bench [ARGS]  pod start, lifecycle, ExecSync and memory: criusd next to containerd 1.6
                and the raw runc floor (root; table + target/bench/results.json;
                ARGS go to crius-bench, e.g. `cargo xtask bench -- --pods 20`)
  bench scale [--pods N]
                node scale: 50/100/200 running pods (--pods caps), list/stats/status
                latency, runtime CPU idle and under kubelet-like polling, memory,
                teardown; crius next to containerd 1.6 (root; target/bench/scale.json)
  bench pull    cold pull of a ~100 MB image: criusd next to containerd 1.6 (root)
  chaos [OPTS]  fault injection: pod churn with criusd and shims SIGKILLed, then leak checks
                (root; options --seed N, --rounds N, --secs N)
  conformance [--parallel N] [-- ARGS]
                critest v1.32 (on PATH) against criusd, offline: test images from Debian
                packages in a local registry (root; ARGS go to critest; target/conformance/)
  package [--check]
                the Debian package (release build, unit, documented default config,
                man pages, completions) in target/package/; --check installs it with
                dpkg into a temporary root and runs the installed criusd
  fuzz [TARGET] [--seconds N]
                cargo-fuzz targets (nightly; installs cargo-fuzz when missing), N seconds
                each (default 60); targets: spec, unpack, cni_result, store_record
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = dispatch(&args) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(args: &[String]) -> Result<()> {
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        bail!("no command given");
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "setup" => setup::setup(),
        "run" => run(rest),
        "test" => test(),
        "unit" => {
            setup::ensure_build_tools()?;
            unit()
        }
        "integration" => {
            setup::ensure()?;
            integration()
        }
        "bench" => bench(rest),
        "chaos" => {
            setup::ensure()?;
            chaos::chaos(rest)
        }
        "conformance" => conformance::conformance(rest),
        "fuzz" => fuzz::fuzz(rest),
        "package" => package::package(rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown command {other:?}")
        }
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Builds criusd and the shim in release mode, and the `extra` packages.
fn build_release(extra: &[&str]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "-p",
        "crius-cri-server",
        "-p",
        "crius-shim",
    ]);
    for p in extra {
        cmd.args(["-p", p]);
    }
    run_cmd(&mut cmd)
}

/// Runs a command, failing with its description when it fails.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: running {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

fn run(args: &[String]) -> Result<()> {
    setup::ensure()?;
    build_release(&[])?;
    let criusd = workspace_root().join("target/release/criusd");
    let args: Vec<&String> = args.iter().skip_while(|a| a.as_str() == "--").collect();
    eprintln!("xtask: starting {} {:?}", criusd.display(), args);
    use std::os::unix::process::CommandExt;
    let err = Command::new(&criusd).args(args).exec();
    Err(err).with_context(|| format!("cannot exec {}", criusd.display()))
}

fn unit() -> Result<()> {
    run_cmd(cargo().args(["test", "--workspace", "--no-fail-fast", "--lib", "--bins"]))
}

fn integration() -> Result<()> {
    run_cmd(cargo().args(["test", "--workspace", "--no-fail-fast", "--test", "*"]))
}

fn bench(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("pull") => {
            setup::ensure()?;
            run_cmd(cargo().args([
                "test",
                "--release",
                "-p",
                "crius-cri-server",
                "--test",
                "images_bench",
                "--",
                "--ignored",
                "--nocapture",
            ]))
        }
        Some("all") => bench_all(&args[1..]),
        Some("scale") => {
            let mut a = vec![
                "--scale".to_string(),
                "--out".into(),
                workspace_root()
                    .join("target/bench/scale.json")
                    .display()
                    .to_string(),
            ];
            a.extend(args[1..].iter().filter(|x| x.as_str() != "--").cloned());
            bench_all(&a)
        }
        // Anything else (options, `--`) goes to crius-bench, which rejects
        // what it does not know.
        _ => bench_all(args),
    }
}

/// crius next to containerd 1.6 and the runc floor (crates/bench; root).
/// Extra arguments go to crius-bench (e.g. `--pods 20`).
fn bench_all(extra: &[String]) -> Result<()> {
    setup::ensure()?;
    build_release(&["crius-bench"])?;
    let root = workspace_root();
    run_cmd(
        Command::new(root.join("target/release/crius-bench"))
            .current_dir(&root)
            .arg("--criusd")
            .arg(root.join("target/release/criusd"))
            .arg("--out")
            .arg(root.join("target/bench/results.json"))
            .args(extra.iter().skip_while(|a| a.as_str() == "--")),
    )
}

fn test() -> Result<()> {
    setup::ensure()?;
    run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    unit()?;
    integration()?;
    eprintln!("xtask: all checks passed");
    Ok(())
}
