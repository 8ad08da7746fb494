//! Traces through OpenTelemetry (`tracing-opentelemetry` into the SDK's
//! in-memory exporter): each attempt is a CLIENT span with the stable
//! database attributes, under the logical `quorate.*` span that keeps
//! quorate's own fields.

use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use quorate::sim::{Sim, SimConfig};
use quorate::{Client, ClientConfig, Precondition, ReadPolicy, WriteOptions};
use tracing_subscriber::layer::SubscriberExt;

fn attributes(span: &SpanData) -> Vec<String> {
    span.attributes
        .iter()
        .map(|kv| kv.key.to_string())
        .collect()
}

fn value(span: &SpanData, name: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == name)
        .map(|kv| kv.value.to_string())
}

#[test]
fn attempts_are_client_spans_with_the_database_conventions() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("quorate-test")));
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let sim = Sim::new(SimConfig::new(["eu", "us"]).unwrap()).unwrap();
            let client = Client::new(sim.at("us").unwrap(), ClientConfig::default()).unwrap();
            let session = client.session();
            client
                .write(
                    &session,
                    "acct:7",
                    "100".into(),
                    Precondition::IfAbsent,
                    &WriteOptions::default(),
                )
                .await
                .unwrap();
            client
                .read(&session, "acct:7", ReadPolicy::Strong)
                .await
                .unwrap();
            let conflict = client
                .write(
                    &session,
                    "acct:7",
                    "0".into(),
                    Precondition::IfAbsent,
                    &WriteOptions::default(),
                )
                .await;
            assert!(conflict.is_err());
        });
    });
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let logical: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "quorate.write" || s.name == "quorate.read")
        .collect();
    assert_eq!(
        logical.len(),
        3,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let read = logical.iter().find(|s| s.name == "quorate.read").unwrap();
    for field in [
        "quorate.policy",
        "quorate.region",
        "quorate.replica",
        "quorate.outcome",
    ] {
        assert!(
            attributes(read).contains(&field.to_owned()),
            "{field}: {:?}",
            attributes(read)
        );
    }

    let attempts: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Client)
        .collect();
    assert!(attempts.len() >= 3, "one CLIENT span per attempt");
    for a in &attempts {
        let names = attributes(a);
        for required in [
            "db.system.name",
            "db.operation.name",
            "db.namespace",
            "db.collection.name",
            "server.address",
        ] {
            assert!(
                names.contains(&required.to_owned()),
                "{required} missing from {names:?}"
            );
        }
        // Named `{db.operation.name} {target}`, as the conventions say.
        let op = value(a, "db.operation.name").unwrap();
        let table = value(a, "db.collection.name").unwrap();
        assert_eq!(a.name, format!("{op} {table}"));
        // Under a logical span.
        assert!(
            logical
                .iter()
                .any(|l| l.span_context.span_id() == a.parent_span_id),
            "{} has no quorate.* parent",
            a.name
        );
    }
    let ops: Vec<String> = attempts
        .iter()
        .filter_map(|a| value(a, "db.operation.name"))
        .collect();
    assert!(
        ops.contains(&"write".into()) && ops.contains(&"read".into()),
        "{ops:?}"
    );
    let failed = attempts
        .iter()
        .find(|a| value(a, "error.type").is_some())
        .expect("the conflicting write's attempt records error.type");
    assert_eq!(value(failed, "error.type").as_deref(), Some("conflict"));
}
