//! The container process: arguments, environment and working directory.

use crate::error::{invalid, SpecError};

/// Builds the process arguments as kubelet documents it: `command` replaces
/// the image's Entrypoint and drops its Cmd; `args` replaces Cmd.
pub fn merge_args(
    command: &[String],
    args: &[String],
    entrypoint: &[String],
    cmd: &[String],
) -> Result<Vec<String>, SpecError> {
    let out: Vec<String> = if !command.is_empty() {
        command.iter().chain(args.iter()).cloned().collect()
    } else if !args.is_empty() {
        entrypoint.iter().chain(args.iter()).cloned().collect()
    } else {
        entrypoint.iter().chain(cmd.iter()).cloned().collect()
    };
    if out.is_empty() {
        return Err(invalid(
            "config.command",
            "no command specified: neither the request nor the image sets one",
        ));
    }
    Ok(out)
}

fn env_key(kv: &str) -> &str {
    kv.split_once('=').map(|(k, _)| k).unwrap_or(kv)
}

/// The environment: the image's, then the container's; a later variable
/// replaces an earlier one of the same name in place.
pub fn merge_env<'a>(
    image_env: &[String],
    container_env: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(image_env.len());
    let mut put = |kv: String| {
        let key = env_key(&kv).to_string();
        match out.iter_mut().find(|e| env_key(e) == key) {
            Some(slot) => *slot = kv,
            None => out.push(kv),
        }
    };
    for kv in image_env {
        put(kv.clone());
    }
    for (k, v) in container_env {
        put(format!("{k}={v}"));
    }
    out
}

/// The working directory: the container's, else the image's, else `/`.
pub fn working_dir(container: &str, image: &str) -> Result<String, SpecError> {
    let dir = if !container.is_empty() {
        container
    } else if !image.is_empty() {
        image
    } else {
        "/"
    };
    if !dir.starts_with('/') {
        return Err(invalid(
            "config.working_dir",
            format!("{dir:?} is not an absolute path"),
        ));
    }
    Ok(dir.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn args_table() {
        // (command, args, entrypoint, cmd, want)
        let cases: &[(&[&str], &[&str], &[&str], &[&str], Option<&[&str]>)] = &[
            (
                &[],
                &[],
                &["/ep"],
                &["c1", "c2"],
                Some(&["/ep", "c1", "c2"]),
            ),
            (&["/cmd"], &[], &["/ep"], &["c1"], Some(&["/cmd"])),
            (&["/cmd"], &["a"], &["/ep"], &["c1"], Some(&["/cmd", "a"])),
            (
                &[],
                &["a", "b"],
                &["/ep"],
                &["c1"],
                Some(&["/ep", "a", "b"]),
            ),
            (&[], &["a"], &[], &["c1"], Some(&["a"])),
            (&[], &[], &[], &["sh"], Some(&["sh"])),
            (&[], &[], &[], &[], None),
        ];
        for (command, args, ep, cmd, want) in cases {
            let got = merge_args(&v(command), &v(args), &v(ep), &v(cmd));
            match want {
                Some(w) => assert_eq!(got.unwrap(), v(w), "{command:?} {args:?} {ep:?} {cmd:?}"),
                None => assert!(got.unwrap_err().to_string().contains("config.command")),
            }
        }
    }

    #[test]
    fn env_table() {
        let image = v(&["PATH=/usr/bin", "A=1", "B"]);
        let cases: &[(&[(&str, &str)], &[&str])] = &[
            (&[], &["PATH=/usr/bin", "A=1", "B"]),
            (&[("A", "2")], &["PATH=/usr/bin", "A=2", "B"]),
            (
                &[("C", "3"), ("PATH", "/bin")],
                &["PATH=/bin", "A=1", "B", "C=3"],
            ),
            (&[("B", "")], &["PATH=/usr/bin", "A=1", "B="]),
            (&[("D", "x=y")], &["PATH=/usr/bin", "A=1", "B", "D=x=y"]),
        ];
        for (extra, want) in cases {
            assert_eq!(
                merge_env(&image, extra.iter().copied()),
                v(want),
                "{extra:?}"
            );
        }
    }

    #[test]
    fn workdir_table() {
        assert_eq!(working_dir("/c", "/i").unwrap(), "/c");
        assert_eq!(working_dir("", "/i").unwrap(), "/i");
        assert_eq!(working_dir("", "").unwrap(), "/");
        assert!(working_dir("rel", "")
            .unwrap_err()
            .to_string()
            .contains("working_dir"));
    }
}
