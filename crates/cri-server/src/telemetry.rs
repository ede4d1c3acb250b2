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

use crate::config::{Config, LogFormat, TracingConfig};
use anyhow::Context;
use tracing::Span;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
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

/// Changes the log filter of the running daemon (a configuration reload).
#[derive(Clone)]
pub struct LogControl {
    filter: tracing_subscriber::reload::Handle<EnvFilter, Registry>,
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
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let log: Box<dyn Layer<Registry> + Send + Sync> = match config.log_format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
    };
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
