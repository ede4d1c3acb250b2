//! containerd-shim-crius-v2 entry point.

use crius_shim::args::{Action, Args};

fn main() -> anyhow::Result<()> {
    let args = Args::parse(std::env::args().skip(1))?;
    match args.action {
        Action::Start | Action::Serve | Action::Delete => anyhow::bail!(
            "containerd-shim-crius-v2: the {:?} action is not available in this build yet",
            args.action
        ),
    }
}
