//! quorate's traces through OpenTelemetry: `tracing-opentelemetry` turns
//! quorate's spans into OpenTelemetry spans — each attempt a CLIENT span in
//! the database conventions, under its `quorate.read` / `quorate.write`
//! span — and an exporter sends them on. Here the SDK's in-memory exporter
//! stands in for `opentelemetry-otlp`'s (pointed at a collector in a real
//! service), and the spans are printed.
//!
//! `cargo run --example opentelemetry`

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use quorate::sim::{Sim, SimConfig};
use quorate::{Client, ClientConfig, Precondition, ReadPolicy, WriteOptions};
use tracing_subscriber::layer::SubscriberExt;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("orders-service")));
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
    })?;
    provider.force_flush()?;
    for span in exporter.get_finished_spans()? {
        let attributes: Vec<String> = span
            .attributes
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect();
        println!(
            "{:?} {:<22} {}",
            span.span_kind,
            span.name,
            attributes.join(" ")
        );
    }
    Ok(())
}
