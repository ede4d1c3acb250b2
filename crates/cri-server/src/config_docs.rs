//! The documentation of the configuration keys, taken from one source: the
//! doc comments of the configuration structs in `config.rs`. They comment
//! the file `criusd config default` prints (the package installs it as
//! /etc/crius/config.toml) and make the crius.toml(5) man page, so neither
//! can drift from the code. A unit test checks that every key has one.
//!
//! Written by hand: the doc comments are not available at run time, and a
//! derive crate for them would be one more dependency for reading ~20
//! plain struct definitions whose layout this module controls.

use crate::config::Config;

/// The source the documentation is read from.
const SOURCE: &str = include_str!("config.rs");

/// One documented key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDoc {
    /// Dotted key; `*` stands for a name of the user's (a runtime handler).
    pub key: String,
    /// The field's Rust type, as written.
    pub ty: String,
    /// The doc comment, joined into one paragraph.
    pub doc: String,
}

/// The fields of `pub struct <name> { ... }` in the source: (name, type, doc).
fn struct_fields(name: &str) -> Vec<(String, String, String)> {
    let header = format!("pub struct {name} {{");
    let Some(start) = SOURCE.find(&header) else {
        return Vec::new();
    };
    let body = &SOURCE[start + header.len()..];
    let body = &body[..body.find("\n}").unwrap_or(body.len())];
    let mut out = Vec::new();
    let mut doc: Vec<&str> = Vec::new();
    for line in body.lines().map(str::trim) {
        if let Some(d) = line.strip_prefix("///") {
            doc.push(d.trim());
        } else if let Some(field) = line.strip_prefix("pub ") {
            if let Some((field, ty)) = field.split_once(':') {
                let ty = ty.trim().trim_end_matches(',').to_string();
                out.push((field.trim().to_string(), ty, doc.join(" ")));
            }
            doc.clear();
        } else if !line.starts_with("#[") {
            doc.clear();
        }
    }
    out
}

/// Every key of the configuration with its documentation, tables before
/// their keys, in the order of the structs.
pub fn key_docs() -> Vec<KeyDoc> {
    fn walk(name: &str, prefix: &str, out: &mut Vec<KeyDoc>) {
        for (field, ty, doc) in struct_fields(name) {
            let key = format!("{prefix}{field}");
            out.push(KeyDoc {
                key: key.clone(),
                ty: ty.clone(),
                doc,
            });
            if let Some(inner) = ty
                .strip_prefix("BTreeMap<String, ")
                .and_then(|t| t.strip_suffix('>'))
            {
                walk(inner, &format!("{key}.*."), out);
            } else if !struct_fields(&ty).is_empty() {
                walk(&ty, &format!("{key}."), out);
            }
        }
    }
    let mut out = Vec::new();
    walk("Config", "", &mut out);
    out
}

/// Whether a dotted key matches a documented pattern (`*` one segment).
fn matches(pattern: &str, key: &str) -> bool {
    let (p, k): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), key.split('.').collect());
    p.len() == k.len() && p.iter().zip(&k).all(|(p, k)| *p == "*" || p == k)
}

/// The documentation of a dotted key.
pub fn doc_of<'a>(docs: &'a [KeyDoc], key: &str) -> Option<&'a KeyDoc> {
    docs.iter().find(|d| matches(&d.key, key))
}

/// `text` as `# ` comment lines of at most 78 characters.
fn comment(text: &str, out: &mut String) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 78 && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    if line.len() > 1 {
        out.push_str(&line);
        out.push('\n');
    }
}

/// A placeholder value for an optional key the configuration leaves out.
fn placeholder(ty: &str) -> &'static str {
    match ty {
        t if t.starts_with("Vec<") => "[]",
        "bool" => "false",
        _ => "\"\"",
    }
}

/// The configuration as TOML with every key's documentation above it, and
/// the optional keys it leaves out shown commented out.
pub fn commented_toml(config: &Config) -> String {
    let docs = key_docs();
    let mut out = String::new();
    comment(
        "crius configuration (criusd reads this file, then config.d/*.toml beside it in lexical order). Every key is optional; shown are the defaults. See crius.toml(5).",
        &mut out,
    );
    out.push('\n');
    let mut table = String::new();
    let mut seen: Vec<String> = Vec::new();
    let close_table = |table: &str, seen: &[String], out: &mut String| {
        if table.is_empty() {
            return;
        }
        // Optional keys of this table the configuration leaves out.
        for d in &docs {
            let Some(rest) = d.key.rsplit_once('.') else {
                continue;
            };
            if !matches(rest.0, table) || seen.iter().any(|k| k == rest.1) {
                continue;
            }
            comment(&d.doc, out);
            out.push_str(&format!("# {} = {}\n", rest.1, placeholder(&d.ty)));
        }
    };
    for line in config.to_toml().lines() {
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            close_table(&table, &seen, &mut out);
            table = header.to_string();
            seen.clear();
            if !out.ends_with("\n\n") {
                out.push('\n');
            }
            // The table's own documentation (a handler's: the handler table's).
            let parent = header.rsplit_once('.').map(|(p, _)| p).unwrap_or(header);
            if let Some(d) = doc_of(&docs, header).or_else(|| doc_of(&docs, parent)) {
                comment(&d.doc, &mut out);
            }
        } else if let Some((key, _)) = line.split_once(" = ") {
            let dotted = if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            };
            if let Some(d) = doc_of(&docs, &dotted) {
                comment(&d.doc, &mut out);
            }
            seen.push(key.to_string());
        } else if line.is_empty() {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    close_table(&table, &seen, &mut out);
    out
}

/// Escapes text for roff.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    match escaped.chars().next() {
        Some('.') | Some('\'') => format!("\\&{escaped}"),
        _ => escaped,
    }
}

/// The crius.toml(5) man page.
pub fn man_page(version: &str) -> String {
    let docs = key_docs();
    let defaults: std::collections::BTreeMap<String, String> =
        crate::config::flat_keys(&Config::default())
            .into_iter()
            .collect();
    let mut out = format!(
        ".TH CRIUS.TOML 5 \"\" \"crius {}\" \"File Formats\"\n",
        roff(version)
    );
    out.push_str(".SH NAME\ncrius.toml \\- configuration of criusd, the crius container runtime\n");
    out.push_str(".SH SYNOPSIS\n/etc/crius/config.toml, /etc/crius/config.d/*.toml\n");
    out.push_str(&format!(
        ".SH DESCRIPTION\n{}\n.PP\n{}\n",
        roff("criusd reads its configuration file (--config, by default /etc/crius/config.toml), then the files config.d/*.toml beside it in lexical order: later keys override earlier ones and tables merge key by key. Every key is optional. An unknown key or a bad value is an error naming the file and the key. criusd config default prints the defaults with this documentation; criusd config show prints the merged result, with --origin the file that set each key."),
        roff(&format!("A SIGHUP reloads the keys that can change at run time ({}); any other changed key is logged as needing a restart.", crate::reload::RELOADABLE.join(", ")))
    ));
    out.push_str(".SH KEYS\n");
    for d in &docs {
        out.push_str(&format!(".TP\n.B {}\n{}\n", roff(&d.key), roff(&d.doc)));
        let default = defaults
            .iter()
            .filter(|(k, _)| matches(&d.key, k))
            .map(|(_, v)| v.as_str())
            .next();
        if let Some(v) = default {
            out.push_str(&format!("Default: {}\n", roff(v)));
        }
    }
    out.push_str(".SH SEE ALSO\ncriusd(8), crictl(1), kubelet(8)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_documented() {
        let docs = key_docs();
        let mut config = Config::default();
        // The optional keys of a handler, set so that they are listed.
        if let Some(h) = config.runtimes.get_mut("runc") {
            h.root = "/run/x".into();
            h.pod_annotations = vec!["a".into()];
            h.container_annotations = vec!["b".into()];
        }
        for (key, _) in crate::config::flat_keys(&config) {
            let d = doc_of(&docs, &key).unwrap_or_else(|| panic!("{key} has no documentation"));
            assert!(d.doc.len() > 10, "{key}: {:?}", d.doc);
        }
        // Tables are documented too.
        for table in [
            "cni",
            "registry",
            "runtimes",
            "runtimes.*.path",
            "cdi.spec_dirs",
        ] {
            assert!(doc_of(&docs, table).is_some(), "{table}");
        }
    }

    #[test]
    fn the_commented_default_reads_back_as_the_default() {
        let text = commented_toml(&Config::default());
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.to_toml(), Config::default().to_toml());
        // (a line the file must hold)
        let cases = [
            "# Persistent state directory.",
            "root = \"/var/lib/crius\"",
            "[runtimes.runc]",
            "# pod_annotations = []",
            "# root = \"\"",
            "[cni]",
        ];
        for want in cases {
            assert!(text.lines().any(|l| l == want), "{want:?} missing:\n{text}");
        }
        assert!(text.lines().all(|l| l.len() <= 80 || !l.starts_with('#')));
    }

    #[test]
    fn the_man_page_lists_keys_and_defaults() {
        let page = man_page("1.2.3");
        assert!(page.starts_with(".TH CRIUS.TOML 5"), "{page}");
        for want in [
            ".B root\n",
            ".B runtimes.*.path\n",
            "Default: \"/var/lib/crius\"",
            ".B cni.conf_dir\n",
        ] {
            assert!(page.contains(want), "{want:?} missing");
        }
        // No line starts with a control character that is not a request.
        for line in page.lines() {
            assert!(!line.starts_with('\''), "{line}");
        }
    }

    #[test]
    fn roff_escapes() {
        // (text, roff)
        let cases = [
            ("a-b", "a\\-b"),
            (".start", "\\&.start"),
            ("back\\slash", "back\\eslash"),
            ("'quote", "\\&'quote"),
        ];
        for (text, want) in cases {
            assert_eq!(roff(text), want, "{text}");
        }
    }
}
