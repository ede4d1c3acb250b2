//! A minimal `tracing` subscriber for the shim: one line per event appended
//! to a file, no spans, no allocation beyond the line being formatted. It
//! keeps the shim small (no formatting layers, no registry).

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::sync::Mutex;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Writes events at or above a level to a file.
pub struct FileLogger {
    file: Mutex<File>,
    level: Level,
}

impl FileLogger {
    /// A logger writing to `file`.
    pub fn new(file: File, level: Level) -> FileLogger {
        FileLogger {
            file: Mutex::new(file),
            level,
        }
    }
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

/// Formats one log line (without the timestamp's sub-second part).
pub fn format_line(secs: u64, level: &Level, target: &str, fields: &str) -> String {
    format!("{secs} {level} {target}:{fields}\n")
}

impl Subscriber for FileLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= &self.level
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, e: &Event<'_>) {
        let mut l = Line(String::new());
        e.record(&mut l);
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let line = format_line(secs, e.metadata().level(), e.metadata().target(), &l.0);
        if let Ok(mut f) = self.file.lock() {
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_events() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shim.log");
        let f = File::create(&p).unwrap();
        let logger = FileLogger::new(f, Level::INFO);
        tracing::subscriber::with_default(logger, || {
            tracing::info!(container = "c1", "created");
            tracing::debug!("hidden");
        });
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("INFO"), "{text}");
        assert!(text.contains("created container=\"c1\""), "{text}");
        assert!(!text.contains("hidden"), "{text}");
        assert_eq!(
            format_line(5, &Level::WARN, "t", " x"),
            "5 WARN t: x\n".to_string()
        );
    }
}
