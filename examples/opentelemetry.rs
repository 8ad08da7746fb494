//! quorate's traces and metrics through OpenTelemetry.
//!
//! Traces: `tracing-opentelemetry` turns quorate's spans into OpenTelemetry
//! spans — each attempt a CLIENT span in the database conventions, under
//! its `quorate.read` / `quorate.write` span. Metrics: quorate records
//! through the `metrics` facade, and `metrics-exporter-opentelemetry`
//! hands them to an OpenTelemetry meter provider, so
//! `db.client.operation.duration` arrives as an OpenTelemetry histogram.
//! Here the SDK's in-memory exporters stand in for `opentelemetry-otlp`'s
//! (pointed at a collector in a real service), and what they received is
//! printed.
//!
//! `cargo run --example opentelemetry`

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{
    Aggregation, InMemoryMetricExporter, Instrument, PeriodicReader, Stream,
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use quorate::sim::{Sim, SimConfig};
use quorate::{Client, ClientConfig, Precondition, ReadPolicy, WriteOptions};
use tracing_subscriber::layer::SubscriberExt;

/// `db.client.operation.duration` as the conventions define it: in
/// seconds, with the bucket boundaries they advise (the SDK's default ones
/// are meant for milliseconds). The unit and description are set here
/// because the `metrics` bridge gives them only to the first of the
/// metric's label sets it registers.
fn operation_duration_buckets(i: &Instrument) -> Option<Stream> {
    use quorate::metric_names::{OPERATION_DURATION, OPERATION_DURATION_HELP};
    if i.name() != OPERATION_DURATION {
        return None;
    }
    Stream::builder()
        .with_unit("s")
        .with_description(OPERATION_DURATION_HELP)
        .with_aggregation(Aggregation::ExplicitBucketHistogram {
            boundaries: quorate::metric_names::OPERATION_DURATION_BUCKETS.to_vec(),
            record_min_max: true,
        })
        .build()
        .ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Traces.
    let spans = InMemorySpanExporter::default();
    let tracer_provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracer_provider.tracer("orders-service")));
    // Metrics.
    let metrics = InMemoryMetricExporter::default();
    let (meter_provider, recorder) =
        metrics_exporter_opentelemetry::Recorder::builder("orders-service")
            .with_meter_provider(|b| {
                b.with_reader(PeriodicReader::builder(metrics.clone()).build())
                    .with_view(operation_duration_buckets)
            })
            .build();

    metrics::with_local_recorder(&recorder, || {
        tracing::subscriber::with_default(subscriber, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()?;
            runtime.block_on(async {
                let sim = Sim::new(SimConfig::new(["eu", "us"])?)?;
                let client = Client::new(sim.at("us")?, ClientConfig::default())?;
                let session = client.session();
                client
                    .write(
                        &session,
                        "order/1",
                        "placed".into(),
                        Precondition::IfAbsent,
                        &WriteOptions::default(),
                    )
                    .await?;
                client
                    .read(&session, "order/1", ReadPolicy::Session)
                    .await?;
                Ok::<(), quorate::Error>(())
            })?;
            Ok::<(), Box<dyn std::error::Error>>(())
        })
    })?;

    tracer_provider.force_flush()?;
    for span in spans.get_finished_spans()? {
        let attributes: Vec<String> = span
            .attributes
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect();
        println!(
            "span {:?} {:<22} {}",
            span.span_kind,
            span.name,
            attributes.join(" ")
        );
    }
    meter_provider.force_flush()?;
    for resource in metrics.get_finished_metrics()? {
        for scope in resource.scope_metrics() {
            for metric in scope.metrics() {
                if let AggregatedMetrics::F64(MetricData::Histogram(h)) = metric.data() {
                    for point in h.data_points() {
                        let attributes: Vec<String> = point
                            .attributes()
                            .map(|kv| format!("{}={}", kv.key, kv.value))
                            .collect();
                        println!(
                            "histogram {} ({}) count={} {}",
                            metric.name(),
                            metric.unit(),
                            point.count(),
                            attributes.join(" ")
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
