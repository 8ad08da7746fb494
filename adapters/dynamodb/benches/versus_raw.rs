//! quorate-dynamodb against raw aws-sdk-dynamodb on DynamoDB Local, same
//! SDK client configuration, in one run.
//!
//! `eval "$(scripts/dynamodb start)" && cargo bench -p quorate-dynamodb --bench versus_raw`
//!
//! For each of concurrency 1 and 32: strong point reads (quorate: a
//! `Strong` read, served by `ConsistentRead` in the key's home region; raw:
//! `GetItem` with `ConsistentRead`) and a read followed by a conditional
//! update (raw: consistent `GetItem`, then `PutItem` with `version = :v`;
//! quorate: a `Strong` read, then an `IfVersion` write, which also records
//! its idempotency item in the same `TransactWriteItems`). The update is
//! also compared with raw SDK calls writing the same idempotency item in
//! the same transaction, which separates what the client costs from what
//! durable idempotency costs the database. Each comparison is measured in
//! mirrored order rotated by one each round, three rounds of one second
//! per measurement.
//! `QUORATE_BENCH_CONCURRENCY=N` measures only concurrency N;
//! `QUORATE_BENCH_READS_ONLY=1` only the reads.
//! `QUORATE_BENCH_COUNT=<operation>:<n>` runs one operation exactly `n`
//! times and exits (`scripts/instructions` counts its instructions).

use std::time::Duration;

use quorate_dynamodb::aws_sdk_dynamodb::config::{BehaviorVersion, Credentials};
use quorate_dynamodb::aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use quorate_dynamodb::aws_sdk_dynamodb::{self, Client as Sdk};
use quorate_dynamodb::item::{EXPIRES_AT, PK, RECORD_KEY, VALUE, VERSION, WRITER, WRITTEN_AT};
use quorate_dynamodb::paired::{
    adapter_read, counted, header, interleaved, key, levels, op, read_then_update, reads_only, row,
    run_counted, strong_read,
};
use quorate_dynamodb::{
    Client, ClientConfig, DynamoBackend, DynamoConfig, Home, IdempotencyKey, Precondition, Region,
    RegionClient, WriteOptions,
};

const TABLE: &str = "quorate_bench";
const RUN: Duration = Duration::from_secs(1);
const ROUNDS: usize = 3;

fn sdk(endpoint: &str, aws_region: &str) -> Sdk {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new(aws_region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("quorate", "quorate", None, None, "static"))
        .build();
    Sdk::from_conf(config)
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

/// A consistent `GetItem` of `key`, decoded as an application would use
/// it: the version and the value.
async fn consistent_get(sdk: &Sdk, key: &str) -> (u64, Option<AttributeValue>) {
    let out = sdk
        .get_item()
        .table_name(TABLE)
        .key(PK, s(key))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    let item = out.item().expect("the key exists");
    let version = match item.get(VERSION) {
        Some(AttributeValue::N(v)) => v.parse().unwrap(),
        other => panic!("no version: {other:?}"),
    };
    (version, item.get(VALUE).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let endpoint = std::env::var("QUORATE_DYNAMODB_ENDPOINT")
        .expect("QUORATE_DYNAMODB_ENDPOINT is not set: eval \"$(scripts/dynamodb start)\" first");
    let regions = vec![
        RegionClient {
            region: Region::new("eu").unwrap(),
            client: sdk(&endpoint, "eu-west-1"),
        },
        RegionClient {
            region: Region::new("us").unwrap(),
            client: sdk(&endpoint, "us-east-1"),
        },
    ];
    let raw = regions[0].client.clone();
    let mut config = DynamoConfig::new("bench", TABLE, regions, "eu").unwrap();
    config.home = Home::Region(Region::new("eu").unwrap());
    DynamoBackend::new(config.clone())
        .unwrap()
        .create_tables()
        .await
        .unwrap();
    let client = Client::new(
        DynamoBackend::connect(config).await.unwrap(),
        ClientConfig::default(),
    )
    .unwrap();
    for t in 0..32 {
        client
            .write(
                &client.session(),
                &key(t),
                "{}".into(),
                Precondition::Any,
                &WriteOptions::default(),
            )
            .await
            .unwrap();
    }
    let levels = levels(&[1, 32]);
    header();
    for concurrency in levels {
        let sdk = raw.clone();
        let raw_read = op(move |t, _| {
            let sdk = sdk.clone();
            async move {
                std::hint::black_box(consistent_get(&sdk, &key(t)).await);
            }
        });
        let quorate_read = strong_read(&client);
        // The adapter alone, without the client: what the client costs.
        let adapter_read = adapter_read(client.backend(), &Region::new("eu").unwrap());

        let sdk = raw.clone();
        let raw_update = op(move |t, _| {
            let sdk = sdk.clone();
            async move {
                let key = key(t);
                let (v, _value) = consistent_get(&sdk, &key).await;
                sdk.put_item()
                    .table_name(TABLE)
                    .item(PK, s(&key))
                    .item(VERSION, n(v + 1))
                    .item(VALUE, AttributeValue::B(b"{}".to_vec().into()))
                    .item(WRITTEN_AT, n(now_nanos()))
                    .item(WRITER, s("eu"))
                    .condition_expression("#v = :v")
                    .expression_attribute_names("#v", VERSION)
                    .expression_attribute_values(":v", n(v))
                    .send()
                    .await
                    .unwrap();
            }
        });
        let sdk = raw.clone();
        let raw_idempotent = op(move |t, _| {
            let sdk = sdk.clone();
            async move {
                let key = key(t);
                let (v, _value) = consistent_get(&sdk, &key).await;
                let at = now_nanos();
                let record = Put::builder()
                    .table_name(TABLE)
                    .item(PK, s(&key))
                    .item(VERSION, n(v + 1))
                    .item(VALUE, AttributeValue::B(b"{}".to_vec().into()))
                    .item(WRITTEN_AT, n(at))
                    .item(WRITER, s("eu"))
                    .condition_expression("#v = :v")
                    .expression_attribute_names("#v", VERSION)
                    .expression_attribute_values(":v", n(v))
                    .build()
                    .unwrap();
                let idem = IdempotencyKey::generate();
                let outcome = Put::builder()
                    .table_name(format!("{TABLE}-idempotency"))
                    .item(PK, s(idem.as_str()))
                    .item(RECORD_KEY, s(&key))
                    .item(VERSION, n(v + 1))
                    .item(WRITTEN_AT, n(at))
                    .item(WRITER, s("eu"))
                    .item(EXPIRES_AT, n(at / 1_000_000_000 + 86_400))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .unwrap();
                sdk.transact_write_items()
                    .transact_items(TransactWriteItem::builder().put(record).build())
                    .transact_items(TransactWriteItem::builder().put(outcome).build())
                    .send()
                    .await
                    .unwrap();
            }
        });
        let quorate_update = read_then_update(&client);
        if let Some((name, n)) = counted() {
            let ops = [
                ("raw_read", &raw_read),
                ("quorate_read", &quorate_read),
                ("adapter_read", &adapter_read),
                ("raw_update", &raw_update),
                ("raw_idempotent_update", &raw_idempotent),
                ("quorate_update", &quorate_update),
            ];
            run_counted(concurrency, &name, n, &ops).await;
            return;
        }
        let [r, q_r, a_r] = interleaved(
            concurrency,
            RUN,
            ROUNDS,
            [&raw_read, &quorate_read, &adapter_read],
        )
        .await;
        row("strong point read", concurrency, r, q_r);
        row("  adapter alone (no client)", concurrency, r, a_r);
        if reads_only() {
            continue;
        }
        let [r, r_i, q_u] = interleaved(
            concurrency,
            RUN,
            ROUNDS,
            [&raw_update, &raw_idempotent, &quorate_update],
        )
        .await;
        row("read + conditional update", concurrency, r, q_u);
        row("  vs raw + idempotency item", concurrency, r_i, q_u);
    }
}
