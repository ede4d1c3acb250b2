//! Logging and tracing set-up: the log output (text or JSON, filtered by
//! `log_level`) and, when `[tracing] otlp_endpoint` is set, an OpenTelemetry
//! layer exporting the daemon's spans over OTLP/gRPC.
//!
//! Span layout: every CRI call is a `cri` span (INFO, from the gRPC server)
//! with the `method` and, once known, the `pod` and `container` ids. Below it
//! the operations have their own spans (`run_pod_sandbox`,
//! `create_container`, ...) and, at DEBUG level, one child span per step:
//! `store`, `image`, `spec`, `shim` (one per ttrpc call, plus `shim_spawn`),
//! `cni` with a `cni_plugin` span per plugin executed. The DEBUG spans cost
//! a level check when neither the log filter nor the exporter wants them.
//!
//! The log format can change at run time (a reload): both formatters are
//! installed behind one filter and [`FormatSwitch`] hands each event to the
//! one selected, while every span is recorded by both so that a span opened
//! before the switch prints its fields in the new format too.

use crate::config::{Config, LogFormat, TracingConfig};
use anyhow::Context;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tracing::subscriber::{Interest, Subscriber};
use tracing::{span, Dispatch, Event, Metadata, Span};
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::Context as LayerContext;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// The prefix of the tracing targets of crius's own crates: the exporter
/// sends their spans only, never those of the libraries below (h2, tonic,
/// hyper), which would include the exporter's own traffic.
const OWN_TARGETS: &str = "crius";

/// What [`init`] set up; [`Telemetry::shutdown`] flushes the exporter.
#[must_use = "call shutdown() to flush the exported spans"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    log: LogControl,
}

/// Changes the log filter and format of the running daemon (a
/// configuration reload).
#[derive(Clone)]
pub struct LogControl {
    filter: tracing_subscriber::reload::Handle<EnvFilter, Registry>,
    json: Arc<AtomicBool>,
}

impl LogControl {
    /// Replaces the log filter with `level` (a level or filter directives).
    pub fn set_level(&self, level: &str) -> anyhow::Result<()> {
        let filter =
            EnvFilter::try_new(level).with_context(|| format!("invalid log_level {level:?}"))?;
        self.filter
            .reload(filter)
            .map_err(|e| anyhow::anyhow!("cannot change the log filter: {e}"))
    }

    /// Switches the log output to `format` for the events logged from now on.
    pub fn set_format(&self, format: LogFormat) {
        self.json
            .store(matches!(format, LogFormat::Json), Ordering::Relaxed);
    }

    /// The format events are written in.
    pub fn format(&self) -> LogFormat {
        if self.json.load(Ordering::Relaxed) {
            LogFormat::Json
        } else {
            LogFormat::Text
        }
    }
}

/// Two log formatters behind one switch: events go to the selected one,
/// span callbacks to both (each keeps its own formatted span fields).
pub struct FormatSwitch<S> {
    text: Box<dyn Layer<S> + Send + Sync>,
    json: Box<dyn Layer<S> + Send + Sync>,
    json_on: Arc<AtomicBool>,
}

impl<S> FormatSwitch<S> {
    /// A switch between `text` and `json`, on JSON while `json_on` is set.
    pub fn new(
        text: Box<dyn Layer<S> + Send + Sync>,
        json: Box<dyn Layer<S> + Send + Sync>,
        json_on: Arc<AtomicBool>,
    ) -> Self {
        FormatSwitch {
            text,
            json,
            json_on,
        }
    }

    fn active(&self) -> &(dyn Layer<S> + Send + Sync) {
        if self.json_on.load(Ordering::Relaxed) {
            self.json.as_ref()
        } else {
            self.text.as_ref()
        }
    }
}

impl<S> Layer<S> for FormatSwitch<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        self.text.on_register_dispatch(subscriber);
        self.json.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.text.on_layer(subscriber);
        self.json.on_layer(subscriber);
    }

    fn register_callsite(&self, _metadata: &'static Metadata<'static>) -> Interest {
        // Both formatters want everything; the filter around the switch
        // decides.
        Interest::always()
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: LayerContext<'_, S>) {
        self.text.on_new_span(attrs, id, ctx.clone());
        self.json.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: LayerContext<'_, S>) {
        self.text.on_record(id, values, ctx.clone());
        self.json.on_record(id, values, ctx);
    }

    fn on_follows_from(&self, id: &span::Id, follows: &span::Id, ctx: LayerContext<'_, S>) {
        self.text.on_follows_from(id, follows, ctx.clone());
        self.json.on_follows_from(id, follows, ctx);
    }

    fn on_event(&self, event: &Event<'_>, ctx: LayerContext<'_, S>) {
        self.active().on_event(event, ctx);
    }

    fn on_enter(&self, id: &span::Id, ctx: LayerContext<'_, S>) {
        self.text.on_enter(id, ctx.clone());
        self.json.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &span::Id, ctx: LayerContext<'_, S>) {
        self.text.on_exit(id, ctx.clone());
        self.json.on_exit(id, ctx);
    }

    fn on_close(&self, id: span::Id, ctx: LayerContext<'_, S>) {
        self.text.on_close(id.clone(), ctx.clone());
        self.json.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &span::Id, new: &span::Id, ctx: LayerContext<'_, S>) {
        self.text.on_id_change(old, new, ctx.clone());
        self.json.on_id_change(old, new, ctx);
    }
}

impl Telemetry {
    /// The handle that changes the log filter at run time.
    pub fn log_control(&self) -> LogControl {
        self.log.clone()
    }

    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered and stops the exporter (a no-op when
    /// export is off). Call it from within the async runtime, after the
    /// server has stopped.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The SDK blocks while it flushes; the gRPC channel it flushes
        // through runs on this runtime, so wait on a blocking thread.
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => tracing::debug!("span exporter flushed"),
            Ok(Err(e)) => eprintln!("criusd: flushing spans failed: {e}"),
            Err(e) => eprintln!("criusd: flushing spans failed: {e}"),
        }
    }
}

/// The OpenTelemetry tracer provider for `config`; `None` when export is
/// off (then nothing of OpenTelemetry is created and no connection is made).
/// Must be called within a Tokio runtime (the gRPC channel lives there).
pub fn tracer_provider(
    config: &TracingConfig,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::trace::Sampler;
    if config.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(config.otlp_endpoint.clone())
        .with_timeout(std::time::Duration::from_secs(10))
        .build()
        .with_context(|| {
            format!(
                "cannot create the OTLP exporter for tracing.otlp_endpoint {:?}",
                config.otlp_endpoint
            )
        })?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sampling_ratio,
        ))))
        .with_resource(resource)
        .build();
    Ok(Some(provider))
}

/// Installs the global subscriber: the log output and, when configured, the
/// OTLP span exporter. Must be called within a Tokio runtime.
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    use opentelemetry::trace::TracerProvider as _;
    let filter = EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("invalid log_level {:?}", config.log_level))?;
    let (filter, filter_handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = || tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let json = Arc::new(AtomicBool::new(matches!(
        config.log_format,
        LogFormat::Json
    )));
    let log =
        FormatSwitch::new(fmt().boxed(), fmt().json().boxed(), json.clone()).with_filter(filter);
    let provider = tracer_provider(&config.tracing)?;
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("criusd"))
            // Ids and steps are what matters; no per-span source location
            // or thread attributes.
            .with_location(false)
            .with_threads(false)
            .with_filter(Targets::new().with_target(OWN_TARGETS, LevelFilter::DEBUG))
    });
    tracing_subscriber::registry()
        .with(log)
        .with(otel)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot initialise logging: {e}"))?;
    if provider.is_some() {
        tracing::info!(
            endpoint = %config.tracing.otlp_endpoint,
            sampling_ratio = config.tracing.sampling_ratio,
            "exporting spans over OTLP"
        );
    }
    Ok(Telemetry {
        provider,
        log: LogControl {
            filter: filter_handle,
            json,
        },
    })
}

/// Records the pod and container ids (those not empty) on the current span,
/// the `cri` span of the call when called from a CRI handler.
pub fn record_ids(pod: &str, container: &str) {
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    if !pod.is_empty() {
        span.record("pod", pod);
    }
    if !container.is_empty() {
        span.record("container", container);
    }
}

/// The span of one CRI call (used as the gRPC server's `trace_fn`).
pub fn cri_span<B>(req: &tonic::codegen::http::Request<B>) -> Span {
    tracing::info_span!(
        "cri",
        method = req.uri().path(),
        pod = tracing::field::Empty,
        container = tracing::field::Empty
    )
}

/// Runs `f` on the blocking thread pool inside `span`, so that the spans
/// `f` opens are children of the caller's.
pub fn blocking<T: Send + 'static>(
    span: Span,
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(move || span.in_scope(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use tracing::span::{Attributes, Id, Record};
    use tracing::Instrument;
    use tracing_subscriber::layer::Context;

    /// A span seen: its name, its parent's id and its fields.
    type Seen = (String, Option<u64>, Vec<(String, String)>);

    /// The spans seen, by id.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<HashMap<u64, Seen>>>);

    struct Fields<'a>(&'a mut Vec<(String, String)>);

    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0
                .push((field.name().to_string(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.push((field.name().to_string(), value.to_string()));
        }
    }

    impl<S> Layer<S> for Capture
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let parent = ctx
                .span(id)
                .and_then(|s| s.parent())
                .map(|p| p.id().into_u64());
            let mut fields = Vec::new();
            attrs.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().insert(
                id.into_u64(),
                (attrs.metadata().name().to_string(), parent, fields),
            );
        }
        fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
            if let Some(entry) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
                values.record(&mut Fields(&mut entry.2));
            }
        }
    }

    #[test]
    fn export_is_off_without_an_endpoint() {
        let config = TracingConfig::default();
        assert!(config.otlp_endpoint.is_empty());
        assert!(tracer_provider(&config).unwrap().is_none());
    }

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    struct Output(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Output {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Output {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(String::from)
                .collect()
        }
    }

    #[test]
    fn the_format_switches_between_events_and_keeps_span_fields() {
        let out = Output::default();
        let writer = {
            let out = out.clone();
            move || out.clone()
        };
        let fmt = || {
            tracing_subscriber::fmt::layer()
                .with_writer(writer.clone())
                .with_ansi(false)
        };
        let json = Arc::new(AtomicBool::new(false));
        let (filter, handle) = tracing_subscriber::reload::Layer::new(EnvFilter::new("info"));
        let control = LogControl {
            filter: handle,
            json: json.clone(),
        };
        let switch =
            FormatSwitch::new(fmt().boxed(), fmt().json().boxed(), json).with_filter(filter);
        let subscriber = tracing_subscriber::registry().with(switch);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("cri", pod = "p1");
            let _entered = span.enter();
            tracing::info!(n = 1, "first");
            control.set_format(LogFormat::Json);
            assert_eq!(control.format(), LogFormat::Json);
            tracing::info!(n = 2, "second");
            tracing::debug!("filtered out");
            control.set_level("debug").unwrap();
            tracing::debug!(n = 3, "third");
            control.set_format(LogFormat::Text);
            tracing::info!(n = 4, "fourth");
        });
        let lines = out.lines();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        // (line, JSON, message and field text it carries)
        let cases = [
            (0, false, "first n=1"),
            (1, true, "second"),
            (2, true, "third"),
            (3, false, "fourth n=4"),
        ];
        for (i, is_json, text) in cases {
            let line = &lines[i];
            let parsed = serde_json::from_str::<serde_json::Value>(line);
            assert_eq!(parsed.is_ok(), is_json, "line {i}: {line}");
            if let Ok(v) = parsed {
                // The span opened before the switch carries its fields in
                // JSON too.
                assert_eq!(v["span"]["pod"], "p1", "line {i}: {line}");
                assert_eq!(v["fields"]["message"], text, "line {i}: {line}");
            } else {
                assert!(line.contains("cri{pod=\"p1\"}"), "line {i}: {line}");
                assert!(line.contains(text), "line {i}: {line}");
            }
        }
    }

    #[tokio::test]
    async fn ids_land_on_the_call_span_and_blocking_steps_are_its_children() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        let _guard = tracing::subscriber::set_default(subscriber);
        let req = tonic::codegen::http::Request::builder()
            .uri("/runtime.v1.RuntimeService/CreateContainer")
            .body(())
            .unwrap();
        let call = cri_span(&req);
        let call_id = call.id().unwrap().into_u64();
        async {
            record_ids("pod1", "ctr1");
            record_ids("", "");
            let step = tracing::debug_span!("store", op = "add_container");
            // The subscriber is this thread's only (criusd's is global).
            let dispatch = tracing::dispatcher::get_default(|d| d.clone());
            blocking(step, move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    let _plugin = tracing::debug_span!("cni_plugin", plugin = "bridge").entered();
                })
            })
            .await
            .unwrap();
        }
        .instrument(call)
        .await;
        let spans = capture.0.lock().unwrap().clone();
        let (name, parent, fields) = &spans[&call_id];
        assert_eq!(name, "cri");
        assert_eq!(*parent, None);
        let field = |k: &str| {
            fields
                .iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            field("method"),
            ["/runtime.v1.RuntimeService/CreateContainer"]
        );
        assert_eq!(field("pod"), ["pod1"]);
        assert_eq!(field("container"), ["ctr1"]);
        let by_name = |n: &str| {
            spans
                .iter()
                .find(|(_, (name, _, _))| name == n)
                .map(|(id, (_, parent, _))| (*id, *parent))
                .unwrap_or_else(|| panic!("no {n} span"))
        };
        let (store, store_parent) = by_name("store");
        assert_eq!(store_parent, Some(call_id));
        assert_eq!(by_name("cni_plugin").1, Some(store));
    }
}
