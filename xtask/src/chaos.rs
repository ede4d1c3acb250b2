//! `cargo xtask chaos`: the fault-injection run of
//! `crates/cri-server/tests/chaos.rs` (root; a minute or two).
//!
//! Options: `--seed N` (replay a run), `--rounds N`, `--secs N` (time
//! budget of the churn). They become `CHAOS_SEED`, `CHAOS_ROUNDS` and
//! `CHAOS_SECS` for the test.

use anyhow::{bail, Context, Result};

/// Builds the shim and runs the ignored chaos test with the options given.
pub fn chaos(args: &[String]) -> Result<()> {
    let mut cmd = crate::cargo();
    let mut it = args.iter().skip_while(|a| a.as_str() == "--");
    while let Some(a) = it.next() {
        let var = match a.as_str() {
            "--seed" => "CHAOS_SEED",
            "--rounds" => "CHAOS_ROUNDS",
            "--secs" => "CHAOS_SECS",
            other => bail!("unknown chaos option {other:?} (known: --seed, --rounds, --secs)"),
        };
        let value = it.next().with_context(|| format!("{a} needs a number"))?;
        value
            .parse::<u64>()
            .with_context(|| format!("{a} {value:?} is not a number"))?;
        cmd.env(var, value);
    }
    crate::run_cmd(crate::cargo().args(["build", "-p", "crius-shim"]))?;
    crate::run_cmd(cmd.args([
        "test",
        "-p",
        "crius-cri-server",
        "--test",
        "chaos",
        "--",
        "--ignored",
        "--nocapture",
    ]))
}
