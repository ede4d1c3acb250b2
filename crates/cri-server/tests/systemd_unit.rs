//! contrib/systemd/crius.service: the keys operating criusd depends on, and
//! (where systemd-analyze is installed) systemd's own parser finds nothing
//! to ignore in it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

fn unit_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../contrib/systemd/crius.service")
}

/// Sections to their (key, value) lines, in order.
fn parse(text: &str) -> HashMap<String, Vec<(String, String)>> {
    let mut sections: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut current = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_string());
            sections.entry(name.to_string()).or_default();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not key=value: {line}", i + 1));
        let section = current
            .as_ref()
            .unwrap_or_else(|| panic!("line {}: key outside a section", i + 1));
        sections
            .get_mut(section)
            .unwrap()
            .push((k.trim().to_string(), v.trim().to_string()));
    }
    sections
}

#[test]
fn unit_has_the_required_keys() {
    let text = std::fs::read_to_string(unit_path()).unwrap();
    let s = parse(&text);
    let get = |section: &str, key: &str| -> Vec<String> {
        s.get(section)
            .unwrap_or_else(|| panic!("no [{section}]"))
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    };
    for (section, key, value) in [
        ("Service", "Type", "notify"),
        ("Service", "Delegate", "yes"),
        ("Service", "KillMode", "process"),
        ("Service", "LimitNOFILE", "1048576"),
        ("Service", "OOMScoreAdjust", "-999"),
        ("Service", "ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Service", "Restart", "always"),
        ("Install", "WantedBy", "multi-user.target"),
    ] {
        assert_eq!(
            get(section, key),
            vec![value.to_string()],
            "[{section}] {key}"
        );
    }
    let after = get("Unit", "After").join(" ");
    assert!(
        after
            .split_whitespace()
            .any(|u| u == "network-online.target"),
        "After={after}"
    );
    assert!(get("Service", "ExecStart")[0].ends_with("/criusd"));
}

#[test]
fn systemd_analyze_verify_finds_nothing() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed; skipping");
        return;
    }
    // verify checks that ExecStart exists: point it at the built daemon.
    let text = std::fs::read_to_string(unit_path())
        .unwrap()
        .replace("/usr/local/bin/criusd", env!("CARGO_BIN_EXE_criusd"));
    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("crius.service");
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // systemd ignores what it cannot parse, with a warning only.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("crius.service"))
        .collect();
    assert!(complaints.is_empty(), "{stderr}");
}
