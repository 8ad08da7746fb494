//! Collections on tables of the application's own, on DynamoDB Local: a
//! table created by hand with the AWS API, an item written there before
//! quorate, values as the item's own attributes that a plain `GetItem`
//! sees.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use quorate_dynamodb::aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use quorate_dynamodb::conformance::{run_all, Fixture};
use quorate_dynamodb::replicator::ReplicatedTable;
use quorate_dynamodb::{
    Client, ClientConfig, Critical, DynamoBackend, Error, KeyAttribute, NativeTable, Precondition,
    Version, WriteOptions,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    status: String,
    total_cents: u64,
}

type Item = HashMap<String, AttributeValue>;

/// A team's existing table, in both regions: created with the AWS API,
/// keyed its own way, holding an item written before quorate.
async fn hand_made(endpoint: &str, table: &str, sort: ScalarAttributeType) {
    for (_, aws) in common::REGIONS {
        let sdk = common::sdk(endpoint, aws);
        sdk.create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("customer")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("order_no")
                    .attribute_type(sort.clone())
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("customer")
                    .key_type(KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("order_no")
                    .key_type(KeyType::Range)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        let order_no = match sort {
            ScalarAttributeType::N => AttributeValue::N("1".into()),
            _ => AttributeValue::S("1".into()),
        };
        sdk.put_item()
            .table_name(table)
            .item("customer", AttributeValue::S("c-0".into()))
            .item("order_no", order_no)
            .item("status", AttributeValue::S("paid".into()))
            .item("total_cents", AttributeValue::N("500".into()))
            .send()
            .await
            .unwrap();
    }
}

fn orders_table(table: &str, sort: KeyAttribute) -> NativeTable {
    NativeTable::new(table, KeyAttribute::string("customer").unwrap())
        .unwrap()
        .sort_key(sort)
        .unwrap()
}

async fn backend_on(endpoint: &str, native: &NativeTable, local: &str) -> DynamoBackend {
    // quorate's own tables, as every test binary makes them.
    common::backend(endpoint, local).await;
    let mut config = common::config(endpoint, local);
    config.native.insert("orders", native.clone()).unwrap();
    DynamoBackend::connect(config).await.expect("connect")
}

async fn get_item(endpoint: &str, table: &str, customer: &str, order_no: AttributeValue) -> Item {
    common::sdk(endpoint, common::REGIONS[0].1)
        .get_item()
        .table_name(table)
        .key("customer", AttributeValue::S(customer.into()))
        .key("order_no", order_no)
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_by_hand_is_used_and_read_by_plain_get_item() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let table = common::key("ShopOrders");
    hand_made(&endpoint, &table, ScalarAttributeType::N).await;
    let native = orders_table(&table, KeyAttribute::number("order_no").unwrap());
    let client = Client::new(
        backend_on(&endpoint, &native, "eu").await,
        ClientConfig::default(),
    )
    .unwrap();
    let session = client.session();
    let orders = client
        .collection::<Order, Critical>("orders", &session)
        .unwrap();

    // The item from before quorate: version 1, its attributes as fields.
    let before = orders
        .get(&native.key("c-0", Some("1")).unwrap())
        .await
        .unwrap();
    assert_eq!(before.version(), Some(Version(1)));
    assert_eq!(
        before.value.unwrap().value,
        Order {
            status: "paid".into(),
            total_cents: 500
        }
    );
    // Version 1 is the adopted item's, not an absent one's.
    let absent = native.key("c-0", Some("2")).unwrap();
    let e = orders
        .put(
            &absent,
            &Order {
                status: "x".into(),
                total_cents: 1,
            },
            Precondition::IfVersion(Version(1)),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Conflict { current: None, .. }), "{e}");
    // It can be updated conditionally like any record.
    let paid = native.key("c-0", Some("1")).unwrap();
    let moved = orders
        .put(
            &paid,
            &Order {
                status: "refunded".into(),
                total_cents: 500,
            },
            Precondition::IfVersion(Version(1)),
        )
        .await
        .unwrap();
    assert_eq!(moved.version, Version(2));

    let key = native.key("c-1", Some("7")).unwrap();
    let order = Order {
        status: "open".into(),
        total_cents: 1250,
    };
    let created = orders
        .put(&key, &order, Precondition::IfAbsent)
        .await
        .unwrap();
    orders
        .update(&key, |o| Order {
            status: "shipped".into(),
            ..o.unwrap()
        })
        .await
        .unwrap();
    // A plain GetItem sees the fields, and quorate's bookkeeping beside them.
    let item = get_item(&endpoint, &table, "c-1", AttributeValue::N("7".into())).await;
    assert_eq!(item["status"], AttributeValue::S("shipped".into()));
    assert_eq!(item["total_cents"], AttributeValue::N("1250".into()));
    assert_eq!(
        item["quorate_version"],
        AttributeValue::N((created.version.0 + 1).to_string())
    );
    assert!(!item.contains_key("value"), "no blob: {item:?}");

    // A delete leaves a tombstone without the fields; the version goes on.
    let gone = orders.delete(&key, Precondition::Any).await.unwrap();
    let item = get_item(&endpoint, &table, "c-1", AttributeValue::N("7".into())).await;
    assert_eq!(item["quorate_deleted"], AttributeValue::Bool(true));
    assert!(!item.contains_key("status"), "{item:?}");
    let again = orders
        .put(&key, &order, Precondition::IfAbsent)
        .await
        .unwrap();
    assert_eq!(again.version, gone.version.next());

    // One multi-record write over the native table and quorate's own.
    let stock = client
        .collection::<u64, Critical>("stock", &session)
        .unwrap();
    let book = common::key("book");
    stock.put(&book, &3, Precondition::IfAbsent).await.unwrap();
    let second = native.key("c-1", Some("8")).unwrap();
    let mut tx = client.transaction(&session);
    orders
        .put_in(&mut tx, &second, &order, Precondition::IfAbsent)
        .unwrap();
    stock
        .put_in(&mut tx, &book, &2, Precondition::IfVersion(Version(1)))
        .unwrap();
    tx.commit().await.unwrap();
    let item = get_item(&endpoint, &table, "c-1", AttributeValue::N("8".into())).await;
    assert_eq!(item["status"], AttributeValue::S("open".into()));
    // A conflict on the native record applies nothing anywhere.
    let mut tx = client.transaction(&session);
    orders
        .put_in(&mut tx, &second, &order, Precondition::IfAbsent)
        .unwrap();
    stock.put_in(&mut tx, &book, &0, Precondition::Any).unwrap();
    match tx.commit().await {
        Err(Error::Conflict { key, current }) => {
            assert_eq!(key, format!("orders/{second}"));
            assert_eq!(current, Some(Version(1)));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(stock.get(&book).await.unwrap().value.unwrap().value, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_holds_on_a_native_table() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let table = common::key("ConfOrders");
    hand_made(&endpoint, &table, ScalarAttributeType::S).await;
    let native = orders_table(&table, KeyAttribute::string("order_no").unwrap());
    let mut fixture = Fixture::new(backend_on(&endpoint, &native, "us").await);
    let base = fixture.prefix.clone();
    fixture.prefix = format!("orders/{base}");
    let replicator = common::replicator::builder(&endpoint, Duration::from_millis(200))
        .table(ReplicatedTable::native(&native).keys_starting_with(&base))
        .table(
            ReplicatedTable::idempotency_of(&fixture.backend).keys_starting_with(&fixture.prefix),
        )
        .start()
        .await
        .expect("start the replicator");
    let query = quorate_dynamodb::conformance::QueryHook::new(
        move |client: Client<DynamoBackend>, session, _policy, key: String| async move {
            // The typed collection query, strong by type.
            use quorate_dynamodb::{PartitionRecords, Peripheral};
            // orders/<partition>/<sort>
            let partition = key.split('/').nth(1).unwrap_or_default().to_owned();
            let orders = client.collection::<serde_json::Value, Peripheral>("orders", &session)?;
            let q = orders.partition(&partition).await?;
            let in_collection = key.strip_prefix("orders/").unwrap_or(&key);
            Ok(q.rows
                .iter()
                .find(|(k, _)| k == in_collection)
                .map(|(_, r)| r.version))
        },
    );
    let fixture = fixture
        .with_hold_followers(replicator.hold_followers())
        .with_query(query);
    let report = run_all(&fixture).await;
    assert!(report
        .iter()
        .any(|(name, _)| *name == "read_your_writes_through_a_query"));
    for (name, result) in &report {
        println!("{name}: {result:?}");
    }
    assert!(report.iter().all(|(_, r)| r.is_ok()), "{report:#?}");
    assert!(replicator.applied() > 0, "the replicator copied nothing");
    let written = common::sdk(&endpoint, common::REGIONS[0].1)
        .scan()
        .table_name(&table)
        .send()
        .await
        .unwrap()
        .count();
    assert!(written > 1, "the cases wrote to the native table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_a_native_table_cannot_hold_are_refused_before_sending() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let table = common::key("BadOrders");
    hand_made(&endpoint, &table, ScalarAttributeType::N).await;
    let native = orders_table(&table, KeyAttribute::number("order_no").unwrap());
    let client = Client::new(
        backend_on(&endpoint, &native, "eu").await,
        ClientConfig::default(),
    )
    .unwrap();
    let session = client.session();
    let options = WriteOptions::default();
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(400 * 1024));
    let values: [&[u8]; 7] = [
        b"not json",
        b"[1, 2]",
        br#"{"customer": "someone else"}"#,
        br#"{"quorate_version": 99}"#,
        br#"{"n": 1e300}"#,
        br#"{"": 1}"#,
        big.as_bytes(),
    ];
    let elsewhere = common::key("elsewhere");
    for bad in values {
        let e = client
            .write(
                &session,
                "orders/c-9/1",
                bytes::Bytes::copy_from_slice(bad),
                Precondition::Any,
                &options,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        let mut tx = client.transaction(&session);
        tx.put(
            "orders/c-9/1".to_owned(),
            bytes::Bytes::copy_from_slice(bad),
            Precondition::Any,
        );
        tx.put(elsewhere.clone(), "1".into(), Precondition::Any);
        let e = tx.commit().await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    }
    // Keys the table cannot have.
    for key in ["orders/c-9", "orders/c-9/one", "orders/c-9/01", "orders//1"] {
        let e = client
            .write(
                &session,
                key,
                r#"{"a":1}"#.into(),
                Precondition::Any,
                &options,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{key}: {e}");
    }
    assert!(
        get_item(&endpoint, &table, "c-9", AttributeValue::N("1".into()))
            .await
            .is_empty()
    );
    assert!(client
        .read(&session, &elsewhere, quorate_dynamodb::ReadPolicy::Strong)
        .await
        .unwrap()
        .value
        .is_none());
    // A key schema other than the table's is named at connect.
    for wrong in [
        orders_table(&table, KeyAttribute::string("order_no").unwrap()),
        orders_table(&table, KeyAttribute::number("order").unwrap()),
        NativeTable::new(&table, KeyAttribute::string("customer").unwrap()).unwrap(),
    ] {
        let mut config = common::config(&endpoint, "eu");
        config.native.insert("orders", wrong.clone()).unwrap();
        let e = DynamoBackend::connect(config).await.unwrap_err();
        assert!(
            matches!(&e, Error::InvalidInput(m) if m.contains("key")),
            "{wrong:?}: {e}"
        );
    }
    // One table, one collection.
    let mut config = common::config(&endpoint, "eu");
    config.native.insert("orders", native.clone()).unwrap();
    config.native.insert("orders2", native.clone()).unwrap();
    assert!(matches!(
        DynamoBackend::new(config),
        Err(Error::InvalidInput(_))
    ));
    // A table that is not there is named.
    let mut config = common::config(&endpoint, "eu");
    config
        .native
        .insert(
            "orders",
            NativeTable::new("NoSuchTable", KeyAttribute::string("id").unwrap()).unwrap(),
        )
        .unwrap();
    let e = DynamoBackend::connect(config).await.unwrap_err();
    assert!(e.to_string().contains("NoSuchTable"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_query_sees_the_session_s_writes_wherever_it_runs() {
    use quorate_dynamodb::{PartitionQuery, ReadPolicy};
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let table = common::key("QueryOrders");
    hand_made(&endpoint, &table, ScalarAttributeType::N).await;
    let native = orders_table(&table, KeyAttribute::number("order_no").unwrap());
    // No replicator: the "us" table never sees what "eu", the home, takes.
    let writer = Client::new(
        backend_on(&endpoint, &native, "us").await,
        ClientConfig::default(),
    )
    .unwrap();
    let session = writer.session();
    let orders = writer
        .collection::<Order, Critical>("orders", &session)
        .unwrap();
    let customer = common::key("c");
    let order = |n: u64| Order {
        status: format!("s{n}"),
        total_cents: n,
    };
    for n in 1..=3 {
        orders
            .put(
                &native.key(&customer, Some(&n.to_string())).unwrap(),
                &order(n),
                Precondition::IfAbsent,
            )
            .await
            .unwrap();
    }
    orders
        .delete(
            &native.key(&customer, Some("2")).unwrap(),
            Precondition::Any,
        )
        .await
        .unwrap();
    // Typed, through the collection: strong by type.
    {
        use quorate_dynamodb::PartitionRecords;
        let reader = writer.session();
        let typed = writer
            .collection::<Order, Critical>("orders", &reader)
            .unwrap();
        let q = typed.partition(&customer).await.unwrap();
        let got: Vec<(String, u64)> = q
            .rows
            .iter()
            .map(|(k, r)| (k.clone(), r.value.total_cents))
            .collect();
        assert_eq!(
            got,
            [(format!("{customer}/1"), 1), (format!("{customer}/3"), 3)]
        );
        assert_eq!(q.freshness.region.as_str(), "eu", "the partition's home");
        assert!(reader.point() >= q.freshness.point);
        // The session recorded each record's version: a session read of
        // one is no older.
        let one = typed
            .get_with(
                &format!("{customer}/3"),
                quorate_dynamodb::StrictRead::Session,
            )
            .await
            .unwrap();
        assert_eq!(one.version(), Some(q.rows[1].1.version));
        let wrong = writer
            .collection::<u64, Critical>("orders", &reader)
            .unwrap();
        assert!(matches!(
            wrong.partition(&customer).await,
            Err(Error::Serialization(_))
        ));
        for partition in ["a/b", ""] {
            assert!(matches!(
                typed.partition(partition).await,
                Err(Error::InvalidInput(_))
            ));
        }
    }
    for policy in [ReadPolicy::Strong, ReadPolicy::Session] {
        let q = writer
            .query_partition(&session, policy, "orders", &customer)
            .await
            .unwrap();
        let got: Vec<(String, u64)> = q
            .rows
            .iter()
            .map(|(k, r)| {
                let o: Order = serde_json::from_slice(&r.value).unwrap();
                (k.clone(), o.total_cents)
            })
            .collect();
        assert_eq!(
            got,
            [
                (format!("orders/{customer}/1"), 1),
                (format!("orders/{customer}/3"), 3)
            ],
            "{policy}"
        );
        assert_eq!(q.freshness.region.as_str(), "eu", "the partition's home");
        assert!(session.point() >= q.freshness.point);
    }
    // Bad input: not a native collection, a partition holding '/', a
    // table without a sort key.
    for (collection, partition) in [("stock", "c"), ("orders", "a/b"), ("orders", "")] {
        let e = writer
            .query_partition(&session, ReadPolicy::Strong, collection, partition)
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::InvalidInput(_)),
            "{collection} {partition}: {e}"
        );
    }
}
