//! The shim command line, as containerd's runtime v2 defines it:
//! `containerd-shim-crius-v2 -namespace NS -id ID -address ADDR
//! [-publish-binary B] [-bundle DIR] [-debug] [start|delete|probe-idmap]`.
//! Without an action the process serves.

/// What the shim process was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Spawn (or find) the serving shim and print its address.
    Start,
    /// Clean up after a dead shim and print a DeleteResponse.
    Delete,
    /// Serve the ttrpc API (the long-lived process).
    Serve,
    /// Check that idmapped overlay mounts work here, in the scratch
    /// directory `-bundle` (criusd asks once at start-up; see
    /// [`crate::launch::probe_idmap_args`]).
    ProbeIdmap,
}

/// Parsed shim flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// containerd namespace (`-namespace`).
    pub namespace: String,
    /// Task or sandbox id (`-id`).
    pub id: String,
    /// Address of the caller's main socket (`-address`).
    pub address: String,
    /// Binary used to publish events (`-publish-binary`).
    pub publish_binary: String,
    /// Bundle directory (`-bundle`), the working directory by default.
    pub bundle: Option<String>,
    /// Debug logging (`-debug`).
    pub debug: bool,
    /// The action.
    pub action: Action,
}

/// Errors of command-line parsing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    /// A flag that needs a value came last.
    #[error("flag {0} needs a value")]
    MissingValue(String),
    /// A flag that the shim does not know.
    #[error("unknown flag {0}")]
    UnknownFlag(String),
    /// An action other than start or delete.
    #[error("unknown action {0:?} (expected start, delete or probe-idmap)")]
    UnknownAction(String),
    /// A required flag was not given.
    #[error("flag -{0} is required")]
    Required(&'static str),
}

impl Args {
    /// Parses the arguments (without the program name). Flags take one or two
    /// leading dashes and either `-flag value` or `-flag=value`, as Go's flag
    /// package accepts.
    pub fn parse<I, S>(args: I) -> Result<Self, ArgsError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut it = args.into_iter().map(Into::into);
        let mut out = Args {
            namespace: String::new(),
            id: String::new(),
            address: String::new(),
            publish_binary: String::new(),
            bundle: None,
            debug: false,
            action: Action::Serve,
        };
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                out.action = match arg.as_str() {
                    "start" => Action::Start,
                    "delete" => Action::Delete,
                    "probe-idmap" => Action::ProbeIdmap,
                    _ => return Err(ArgsError::UnknownAction(arg)),
                };
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (flag.to_string(), None),
            };
            if name == "debug" || name == "v" {
                out.debug = inline.as_deref().map(|v| v != "false").unwrap_or(true);
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .ok_or_else(|| ArgsError::MissingValue(arg.clone()))?,
            };
            match name.as_str() {
                "namespace" => out.namespace = value,
                "id" => out.id = value,
                "address" => out.address = value,
                "publish-binary" => out.publish_binary = value,
                "bundle" => out.bundle = Some(value),
                // Accepted for compatibility with containerd's shims; unused.
                "socket" | "containerd-binary" => {}
                _ => return Err(ArgsError::UnknownFlag(arg)),
            }
        }
        if out.namespace.is_empty() {
            return Err(ArgsError::Required("namespace"));
        }
        if out.id.is_empty() && out.action != Action::Delete {
            return Err(ArgsError::Required("id"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok = |v: &[&str]| Args::parse(v.iter().copied());
        let a = ok(&[
            "-namespace",
            "k8s.io",
            "-id",
            "abc",
            "-address",
            "/run/c.sock",
            "start",
        ])
        .unwrap();
        assert_eq!(
            (a.namespace.as_str(), a.id.as_str(), a.action),
            ("k8s.io", "abc", Action::Start)
        );
        assert_eq!(a.address, "/run/c.sock");

        let a = ok(&[
            "--namespace=ns",
            "-id=x",
            "-debug",
            "-publish-binary",
            "/usr/bin/containerd",
            "delete",
        ])
        .unwrap();
        assert!(a.debug);
        assert_eq!(a.publish_binary, "/usr/bin/containerd");
        assert_eq!(a.action, Action::Delete);

        let a = Args::parse(crate::launch::probe_idmap_args(std::path::Path::new(
            "/s/p",
        )))
        .unwrap();
        assert_eq!(
            (a.action, a.bundle.as_deref()),
            (Action::ProbeIdmap, Some("/s/p"))
        );

        let a = ok(&["-namespace", "ns", "-id", "x", "-bundle", "/b"]).unwrap();
        assert_eq!((a.action, a.bundle.as_deref()), (Action::Serve, Some("/b")));

        let cases: &[(&[&str], ArgsError)] = &[
            (
                &["-namespace"],
                ArgsError::MissingValue("-namespace".into()),
            ),
            (
                &["-namespace", "ns", "-id", "x", "-bogus", "1"],
                ArgsError::UnknownFlag("-bogus".into()),
            ),
            (
                &["-namespace", "ns", "-id", "x", "stop"],
                ArgsError::UnknownAction("stop".into()),
            ),
            (&["-id", "x", "start"], ArgsError::Required("namespace")),
            (&["-namespace", "ns", "start"], ArgsError::Required("id")),
        ];
        for (argv, want) in cases {
            assert_eq!(&ok(argv).unwrap_err(), want, "{argv:?}");
        }
    }
}
