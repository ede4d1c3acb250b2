//! `cargo xtask fuzz [TARGET] [--seconds N]`: runs the cargo-fuzz targets
//! of `fuzz/` (their own workspace; libFuzzer needs the nightly toolchain)
//! for N seconds each (default 60), every target when none is named.
//! Installs cargo-fuzz (crates.io) and the nightly toolchain when missing.
//! Crashes land in `fuzz/artifacts/<target>/`; what libFuzzer finds
//! interesting is added to `fuzz/corpus/<target>/`, next to the committed
//! `seed-*` inputs.

use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};

/// The targets in `fuzz/fuzz_targets`.
pub const TARGETS: [&str; 4] = ["spec", "unpack", "cni_result", "store_record"];

const DEFAULT_SECONDS: u64 = 60;

/// `rustup run nightly cargo ...`: the nightly cargo whatever toolchain
/// runs xtask itself.
fn nightly_cargo() -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo"]);
    c.env_remove("RUSTUP_TOOLCHAIN").env_remove("CARGO");
    c.current_dir(crate::workspace_root());
    c
}

fn quietly_succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ensure_tools() -> Result<()> {
    if !quietly_succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        crate::run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    if !quietly_succeeds(nightly_cargo().args(["fuzz", "--version"])) {
        crate::run_cmd(nightly_cargo().args(["install", "cargo-fuzz"]))?;
    }
    Ok(())
}

/// Parses `[TARGET] [--seconds N]`.
fn parse(args: &[String]) -> Result<(Vec<&'static str>, u64)> {
    let mut targets = Vec::new();
    let mut seconds = DEFAULT_SECONDS;
    let mut it = args.iter().skip_while(|a| a.as_str() == "--");
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                let v = it.next().context("--seconds needs a number")?;
                seconds = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("--seconds {v:?} is not a positive number"))?;
            }
            name => match TARGETS.iter().find(|t| **t == name) {
                Some(t) => targets.push(*t),
                None => bail!(
                    "unknown fuzz target or option {name:?} (targets: {}; option: --seconds N)",
                    TARGETS.join(", ")
                ),
            },
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    Ok((targets, seconds))
}

/// Builds the targets and runs each for the time given.
pub fn fuzz(args: &[String]) -> Result<()> {
    let (targets, seconds) = parse(args)?;
    ensure_tools()?;
    crate::run_cmd(nightly_cargo().args(["fuzz", "build", "--fuzz-dir", "fuzz"]))?;
    for t in targets {
        eprintln!("xtask: fuzzing {t} for {seconds} s");
        crate::run_cmd(nightly_cargo().args([
            "fuzz",
            "run",
            "--fuzz-dir",
            "fuzz",
            t,
            "--",
            &format!("-max_total_time={seconds}"),
            "-timeout=20",
        ]))?;
    }
    eprintln!("xtask: fuzzing found nothing");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments() {
        assert_eq!(parse(&args(&[])).unwrap(), (TARGETS.to_vec(), 60));
        assert_eq!(
            parse(&args(&["unpack", "--seconds", "5"])).unwrap(),
            (vec!["unpack"], 5)
        );
        assert_eq!(
            parse(&args(&["--", "spec", "store_record"])).unwrap(),
            (vec!["spec", "store_record"], 60)
        );
        for bad in [
            &["nope"][..],
            &["--seconds"],
            &["--seconds", "0"],
            &["--seconds", "x"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
