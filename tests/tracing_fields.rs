//! Traces carry the documented fields and never a value or a credential.

use std::sync::{Arc, Mutex};

use quorate::chaos::Chaos;
use quorate::sim::{Sim, SimConfig};
use quorate::{Client, ClientConfig, Precondition, ReadPolicy, WriteOptions};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

struct Fields<'a>(&'a mut Vec<String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push(format!("{}={:?}", field.name(), value));
    }
}

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> Layer<S>
    for Capture
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        let mut out = self.0.lock().unwrap();
        out.push(format!("span {}", attrs.metadata().name()));
        attrs.record(&mut Fields(&mut out));
    }
    fn on_record(
        &self,
        _: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: Context<'_, S>,
    ) {
        values.record(&mut Fields(&mut self.0.lock().unwrap()));
    }
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        event.record(&mut Fields(&mut self.0.lock().unwrap()));
    }
}

#[test]
fn spans_name_their_fields_and_never_carry_values() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let secret_value = "4111-1111-1111-1111";
    let secret_key = "customer-jane.doe@example.com";
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let sim = Sim::new(SimConfig::new(["eu", "us"]).unwrap()).unwrap();
            sim.set_replication_lag("us", std::time::Duration::from_secs(30))
                .unwrap();
            sim.set_skew("us", 200_000_000).unwrap();
            let (backend, control) = Chaos::new(sim.at("us").unwrap());
            let client = Client::new(backend, ClientConfig::default()).unwrap();
            let s = client.session();
            control.drop_write_responses(1);
            client
                .write(
                    &s,
                    secret_key,
                    secret_value.into(),
                    Precondition::IfAbsent,
                    &WriteOptions::verified(),
                )
                .await
                .unwrap();
            let _ = client
                .write(
                    &s,
                    secret_key,
                    secret_value.into(),
                    Precondition::IfAbsent,
                    &WriteOptions::default(),
                )
                .await;
            client
                .read(&s, secret_key, ReadPolicy::Session)
                .await
                .unwrap();
            client
                .read(&s, secret_key, ReadPolicy::Strong)
                .await
                .unwrap();
            client.refresh_health().await;
        });
    });
    let captured = capture.0.lock().unwrap().join("\n");
    for field in [
        "span quorate.read",
        "span quorate.write",
        "quorate.policy",
        "quorate.region",
        "quorate.replica",
        "quorate.read_point",
        "quorate.staleness_ms",
        "quorate.attempt",
        "quorate.outcome",
    ] {
        assert!(
            captured.contains(field),
            "{field} missing from the traces:\n{captured}"
        );
    }
    assert!(captured.contains("ambiguous commit resolved"), "{captured}");
    assert!(
        !captured.contains(secret_value),
        "a value leaked into traces:\n{captured}"
    );
    assert!(
        !captured.contains(secret_key),
        "a key leaked into traces:\n{captured}"
    );
}
