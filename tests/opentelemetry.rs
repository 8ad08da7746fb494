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

/// The tests run one at a time: tracing caches each callsite's interest
/// process-wide, and a callsite first reached by a test without a
/// subscriber while the other installs one may be cached as disabled.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A client in `us` of a two-region simulator that has written `acct:7`
/// and read it back strongly.
async fn wrote_and_read() -> (Client<Sim>, quorate::Session) {
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
    (client, session)
}

#[test]
fn attempts_are_client_spans_with_the_database_conventions() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("quorate-test")));
    tracing::subscriber::with_default(subscriber, || {
        paused_runtime().block_on(async {
            let (client, session) = wrote_and_read().await;
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

/// Metrics through OpenTelemetry (`metrics-exporter-opentelemetry` into the
/// SDK's in-memory exporter): `db.client.operation.duration` arrives as an
/// OpenTelemetry histogram in seconds, with the convention's attributes.
#[test]
fn the_operation_duration_is_an_opentelemetry_histogram() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{
        Aggregation, InMemoryMetricExporter, Instrument, PeriodicReader, Stream,
    };

    let exporter = InMemoryMetricExporter::default();
    let (provider, recorder) = metrics_exporter_opentelemetry::Recorder::builder("quorate-test")
        .with_meter_provider(|b| {
            b.with_reader(PeriodicReader::builder(exporter.clone()).build())
                .with_view(|i: &Instrument| {
                    (i.name() == quorate::metric_names::OPERATION_DURATION).then(|| {
                        Stream::builder()
                            .with_unit("s")
                            .with_description(quorate::metric_names::OPERATION_DURATION_HELP)
                            .with_aggregation(Aggregation::ExplicitBucketHistogram {
                                boundaries: quorate::metric_names::OPERATION_DURATION_BUCKETS
                                    .to_vec(),
                                record_min_max: true,
                            })
                            .build()
                            .ok()
                    })?
                })
        })
        .build();
    metrics::with_local_recorder(&recorder, || {
        paused_runtime().block_on(wrote_and_read());
    });
    provider.force_flush().unwrap();
    let mut points = Vec::new();
    for resource in exporter.get_finished_metrics().unwrap() {
        for scope in resource.scope_metrics() {
            for metric in scope.metrics() {
                if metric.name() != quorate::metric_names::OPERATION_DURATION {
                    continue;
                }
                assert_eq!(metric.unit(), "s", "in seconds");
                let AggregatedMetrics::F64(MetricData::Histogram(h)) = metric.data() else {
                    panic!("{} is not a histogram: {:?}", metric.name(), metric.data());
                };
                for point in h.data_points() {
                    let mut attributes: Vec<(String, String)> = point
                        .attributes()
                        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                        .collect();
                    attributes.sort();
                    let bounds: Vec<f64> = point.bounds().collect();
                    assert_eq!(bounds, quorate::metric_names::OPERATION_DURATION_BUCKETS);
                    points.push((attributes, point.count()));
                }
            }
        }
    }
    let operation = |op: &str| {
        points.iter().any(|(attributes, count)| {
            *count >= 1
                && attributes.contains(&("db.operation.name".into(), op.into()))
                && attributes.contains(&("db.system.name".into(), "other_sql".into()))
        })
    };
    assert!(operation("read") && operation("write"), "{points:?}");
}
