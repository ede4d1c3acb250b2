//! containerd-shim-crius-v2 entry point.

use std::io::Write;

use crius_shim_api::args::{Action, Args};

fn main() -> anyhow::Result<()> {
    // The pod's PID-namespace holder, run as `crius-pid-holder <root>`:
    // before anything else (it forks, so no thread may have started).
    let mut argv = std::env::args_os();
    if argv.next().as_deref() == Some(std::ffi::OsStr::new(crius_shim::holder::ARGV0)) {
        let root = argv.next().unwrap_or_default();
        crius_shim::holder::launch(std::path::Path::new(&root));
    }
    let args = Args::parse(std::env::args().skip(1))?;
    match args.action {
        Action::Start => {
            let reply = crius_shim::start::start(&args)?;
            let mut out = std::io::stdout();
            out.write_all(&reply)?;
            out.flush()?;
        }
        Action::Delete => {
            let bytes = crius_shim::start::delete(&args)?;
            let mut out = std::io::stdout();
            out.write_all(&bytes)?;
            out.flush()?;
        }
        Action::ProbeIdmap => {
            let dir = args
                .bundle
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("probe-idmap needs -bundle"))?;
            crius_shim::mount::probe_idmap(std::path::Path::new(dir))?;
        }
        Action::Serve => {
            crius_shim::serve::serve(&args)?;
            // Exit at once: worker threads may still be blocked in calls.
            std::process::exit(0);
        }
    }
    Ok(())
}
