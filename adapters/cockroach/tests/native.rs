//! Collections on tables of the application's own, on real PostgreSQL
//! servers: a table created by hand with plain SQL, adopted by
//! `create_schema`, used through quorate and read by plain SQL.

mod common;

use serde::{Deserialize, Serialize};

use quorate_cockroach::conformance::{run_all, Fixture};
use quorate_cockroach::{
    Client, ClientConfig, Critical, Error, NativeTable, PgBackend, Precondition, WriteOptions,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    status: String,
    total_cents: u64,
}

fn table_name(what: &str) -> String {
    format!("{what}_{:x}", run_id() & 0xff_ffff)
}

/// A team's existing table: its own columns, a row written before quorate.
async fn hand_made(primary: &str, table: &str) {
    common::exec(
        primary,
        &format!(
            "CREATE TABLE {table} (order_id TEXT PRIMARY KEY, body JSONB NOT NULL, note TEXT); \
             INSERT INTO {table} (order_id, body, note) \
             VALUES ('before', '{{\"total_cents\": 500, \"status\": \"paid\"}}', 'legacy')"
        ),
    )
    .await;
}

async fn backend_on(s: &[String; 3], table: &str) -> PgBackend {
    let mut config = common::config(s, "us");
    config
        .native
        .insert(
            "orders",
            NativeTable::new(table, "order_id", "body").unwrap(),
        )
        .unwrap();
    let backend = PgBackend::new(config).unwrap();
    backend.create_schema().await.expect("adopts the table");
    backend
}

async fn plain_sql(primary: &str, sql: &str, key: &str) -> Vec<Option<String>> {
    let (client, conn) = tokio_postgres::connect(primary, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let rows = client.query(sql, &[&key]).await.unwrap();
    drop(client);
    let _ = task.await;
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_by_hand_is_adopted_and_read_by_plain_sql() {
    let Some(s) = common::servers() else { return };
    let table = table_name("shop_orders");
    hand_made(&s[0], &table).await;
    let backend = backend_on(&s, &table).await;
    let client = Client::new(backend, ClientConfig::default()).unwrap();
    let session = client.session();
    let orders = client
        .collection::<Order, Critical>("orders", &session)
        .unwrap();

    // The row that was there before quorate: version 1, its document.
    let before = orders.get("before").await.unwrap();
    assert_eq!(before.version(), Some(quorate_cockroach::Version(1)));
    assert_eq!(
        before.value.unwrap().value,
        Order {
            status: "paid".into(),
            total_cents: 500
        }
    );

    let order = Order {
        status: "open".into(),
        total_cents: 1250,
    };
    let created = orders
        .put("o-1", &order, Precondition::IfAbsent)
        .await
        .unwrap();
    let shipped = orders
        .update("o-1", |o| Order {
            status: "shipped".into(),
            ..o.unwrap()
        })
        .await
        .unwrap();
    assert_eq!(shipped.version.0, created.version.0 + 1);
    // Any SQL sees the fields: no blob, no quorate in the way.
    assert_eq!(
        plain_sql(
            &s[0],
            &format!(
                "SELECT body->>'status' FROM {table} WHERE order_id = $1 AND NOT quorate_deleted"
            ),
            "o-1"
        )
        .await,
        [Some("shipped".to_owned())]
    );
    assert_eq!(
        plain_sql(
            &s[0],
            &format!("SELECT note FROM {table} WHERE order_id = $1"),
            "before"
        )
        .await,
        [Some("legacy".to_owned())],
        "the application's own columns are left alone"
    );

    // A delete is a tombstone row other readers skip, and the version goes
    // on when the record comes back.
    let gone = orders
        .delete("o-1", Precondition::IfVersion(shipped.version))
        .await
        .unwrap();
    assert!(plain_sql(
        &s[0],
        &format!("SELECT body->>'status' FROM {table} WHERE order_id = $1 AND NOT quorate_deleted"),
        "o-1"
    )
    .await
    .is_empty());
    let again = orders
        .put("o-1", &order, Precondition::IfAbsent)
        .await
        .unwrap();
    assert_eq!(again.version.0, gone.version.0 + 1);

    // One multi-record write over the native table and quorate's own.
    let stock = client
        .collection::<u64, Critical>("stock", &session)
        .unwrap();
    let book_key = common::key("book");
    stock
        .put(&book_key, &3, Precondition::IfAbsent)
        .await
        .unwrap();
    let book = stock.get(&book_key).await.unwrap();
    let mut tx = client.transaction(&session);
    orders
        .put_in(
            &mut tx,
            "o-2",
            &Order {
                status: "open".into(),
                total_cents: 900,
            },
            Precondition::IfAbsent,
        )
        .unwrap();
    stock
        .put_in(
            &mut tx,
            &book_key,
            &(book.value.as_ref().unwrap().value - 1),
            Precondition::IfVersion(book.version().unwrap()),
        )
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        plain_sql(
            &s[0],
            &format!("SELECT body->>'total_cents' FROM {table} WHERE order_id = $1"),
            "o-2"
        )
        .await,
        [Some("900".to_owned())]
    );
    // A conflict on the native record applies nothing anywhere.
    let mut tx = client.transaction(&session);
    orders
        .put_in(&mut tx, "o-2", &order, Precondition::IfAbsent)
        .unwrap();
    stock
        .put_in(&mut tx, &book_key, &0, Precondition::Any)
        .unwrap();
    match tx.commit().await {
        Err(Error::Conflict { key, current }) => {
            assert_eq!(key, "orders/o-2");
            assert_eq!(current, Some(quorate_cockroach::Version(1)));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        stock.get(&book_key).await.unwrap().value.unwrap().value,
        book.value.unwrap().value - 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_holds_on_a_native_table() {
    let Some(s) = common::servers() else { return };
    let table = table_name("conf_orders");
    hand_made(&s[0], &table).await;
    let backend = backend_on(&s, &table).await;
    // The query path here is the typed collection query.
    let query = quorate_cockroach::conformance::QueryHook::new(
        |client: Client<PgBackend>, session, policy, key: String| async move {
            use quorate_cockroach::{Peripheral, SelectRecords};
            let row_key = key.strip_prefix("orders/").unwrap_or(&key).to_owned();
            let orders = client.collection::<serde_json::Value, Peripheral>("orders", &session)?;
            let q = orders
                .select_with(policy, "order_id = $1", &[&row_key])
                .await?;
            Ok(q.rows
                .iter()
                .find(|(k, _)| *k == row_key)
                .map(|(_, r)| r.version))
        },
    );
    let mut fixture = Fixture::new(backend).with_query(query);
    fixture.prefix = format!("orders/{}", fixture.prefix);
    let report = run_all(&fixture).await;
    assert!(report
        .iter()
        .any(|(name, _)| *name == "read_your_writes_through_a_query"));
    for (name, result) in &report {
        println!("{name}: {result:?}");
    }
    assert!(report.iter().all(|(_, r)| r.is_ok()), "{report:#?}");
    let written = plain_sql(
        &s[0],
        &format!("SELECT count(*)::TEXT FROM {table} WHERE order_id LIKE $1"),
        &format!("{}/%", fixture.prefix.trim_start_matches("orders/")),
    )
    .await;
    assert_ne!(
        written,
        [Some("0".to_owned())],
        "the cases wrote to the native table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_a_native_table_cannot_hold_are_refused_before_sending() {
    let Some(s) = common::servers() else { return };
    let table = table_name("bad_orders");
    hand_made(&s[0], &table).await;
    let backend = backend_on(&s, &table).await;
    let client = Client::new(backend, ClientConfig::default()).unwrap();
    let session = client.session();
    let options = WriteOptions::default();
    for bad in [
        &b"not json"[..],
        b"",
        br#"{"a": "\u0000"}"#,
        br#"{"\u0000": 1}"#,
    ] {
        let e = client
            .write(
                &session,
                "orders/raw",
                bytes::Bytes::copy_from_slice(bad),
                Precondition::Any,
                &options,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        let mut tx = client.transaction(&session);
        tx.put(
            "orders/raw".to_owned(),
            bytes::Bytes::copy_from_slice(bad),
            Precondition::Any,
        );
        tx.put("elsewhere".to_owned(), "1".into(), Precondition::Any);
        let e = tx.commit().await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    }
    assert!(plain_sql(
        &s[0],
        &format!("SELECT body::TEXT FROM {table} WHERE order_id = $1"),
        "raw"
    )
    .await
    .is_empty());
    assert!(client
        .read(&session, "elsewhere", quorate_cockroach::ReadPolicy::Strong)
        .await
        .unwrap()
        .value
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_that_do_not_fit_are_named_with_what_is_wrong() {
    let Some(s) = common::servers() else { return };
    for bad in [
        NativeTable::new("Orders", "id", "body"),
        NativeTable::new("a.b.c", "id", "body"),
        NativeTable::new("orders", "id;", "body"),
        NativeTable::new("orders", "body", "body"),
        NativeTable::new("orders", "id", "body").and_then(|t| t.bookkeeping("Q")),
        NativeTable::new("orders", "q_version", "body").and_then(|t| t.bookkeeping("q_")),
    ] {
        assert!(matches!(bad, Err(Error::InvalidInput(_))), "{bad:?}");
    }
    let mut config = common::config(&s, "us");
    assert!(config
        .native
        .insert("a/b", NativeTable::new("orders", "id", "body").unwrap())
        .is_err());

    // The document column is text, and the key not the primary key.
    let table = table_name("text_orders");
    common::exec(
        &s[0],
        &format!("CREATE TABLE {table} (id SERIAL PRIMARY KEY, order_id TEXT, body TEXT)"),
    )
    .await;
    config
        .native
        .insert(
            "orders",
            NativeTable::new(&table, "order_id", "body").unwrap(),
        )
        .unwrap();
    let backend = PgBackend::new(config).unwrap();
    let e = backend.create_schema().await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::InvalidInput(_)), "{text}");
    assert!(text.contains("column body"), "{text}");
    assert!(text.contains("not its primary key"), "{text}");
    // One table, one collection.
    let mut config = common::config(&s, "us");
    for collection in ["a", "b"] {
        config
            .native
            .insert(
                collection,
                NativeTable::new(&table, "order_id", "body").unwrap(),
            )
            .unwrap();
    }
    assert!(matches!(
        PgBackend::new(config),
        Err(Error::InvalidInput(_))
    ));
    let missing = {
        let mut config = common::config(&s, "us");
        config
            .native
            .insert(
                "orders",
                NativeTable::new("no_such_table_here", "id", "body").unwrap(),
            )
            .unwrap();
        PgBackend::new(config).unwrap()
    };
    let e = missing.check_schema().await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

/// An application's own unique index on its native table refuses a record:
/// a permanent error at once, not an idempotency clash retried until the
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_s_unique_index_refusing_a_record_is_permanent() {
    let Some(s) = common::servers() else { return };
    let table = table_name("users");
    common::exec(
        &s[0],
        &format!(
            "CREATE TABLE {table} (id TEXT PRIMARY KEY, doc JSONB NOT NULL); \
             CREATE UNIQUE INDEX ON {table} ((doc->>'email'))"
        ),
    )
    .await;
    let mut config = common::config(&s, "us");
    config
        .native
        .insert("users", NativeTable::new(&table, "id", "doc").unwrap())
        .unwrap();
    let backend = PgBackend::new(config).unwrap();
    backend.create_schema().await.unwrap();
    let client = Client::new(backend, ClientConfig::default()).unwrap();
    let session = client.session();
    let options = WriteOptions::default();
    client
        .write(
            &session,
            "users/u1",
            r#"{"email":"a@x"}"#.into(),
            Precondition::IfAbsent,
            &options,
        )
        .await
        .unwrap();
    let e = client
        .write(
            &session,
            "users/u2",
            r#"{"email":"a@x"}"#.into(),
            Precondition::IfAbsent,
            &options,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Backend { code: Some(c), retryability: quorate_cockroach::Retryability::Permanent, .. } if c == "23505"),
        "{}",
        e.report()
    );
}

/// Services starting together create the same schema at once: each of them
/// succeeds (PostgreSQL's `IF NOT EXISTS` alone lets the losers of the race
/// fail with a duplicate in its catalogue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_creating_the_schema_at_once_all_succeed() {
    let Some(s) = common::servers() else { return };
    let own = table_name("fresh_records");
    let orders = table_name("fresh_orders");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut config = common::config(&s, "us");
            config.table = own.clone();
            config
                .native
                .insert(
                    "orders",
                    NativeTable::new(&orders, "order_id", "body").unwrap(),
                )
                .unwrap();
            let backend = PgBackend::new(config).unwrap();
            tokio::spawn(async move { backend.create_schema().await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_is_queried_typed_under_its_policy() {
    use quorate_cockroach::{Peripheral, ReadPolicy, SelectRecords};
    let Some(s) = common::servers() else { return };
    let table = table_name("select_orders");
    hand_made(&s[0], &table).await;
    let client = Client::new(backend_on(&s, &table).await, ClientConfig::default()).unwrap();
    let session = client.session();
    let orders = client
        .collection::<Order, Critical>("orders", &session)
        .unwrap();
    let order = |status: &str, total_cents| Order {
        status: status.into(),
        total_cents,
    };
    let a = orders
        .put("a", &order("open", 10), Precondition::IfAbsent)
        .await
        .unwrap();
    orders
        .put("b", &order("open", 20), Precondition::IfAbsent)
        .await
        .unwrap();
    orders
        .put("c", &order("open", 30), Precondition::IfAbsent)
        .await
        .unwrap();
    orders.delete("c", Precondition::Any).await.unwrap();
    // Strict by type, in key order, the tombstone left out, the row from
    // before quorate (paid) filtered out.
    let open = orders
        .select("body->>'status' = $1", &[&"open"])
        .await
        .unwrap();
    let found: Vec<(&str, u64)> = open
        .rows
        .iter()
        .map(|(k, r)| (k.as_str(), r.value.total_cents))
        .collect();
    assert_eq!(found, [("a", 10), ("b", 20)]);
    assert_eq!(open.rows[0].1.version, a.version);
    assert!(open.freshness.point >= Some(a.point));
    // An empty filter admits every live record.
    let all = orders.select("", &[]).await.unwrap();
    let keys: Vec<&str> = all.rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "b", "before"]);
    // Another session that only queried reads no older than the query.
    let reader = client.session();
    let peripheral = client
        .collection::<Order, Peripheral>("orders", &reader)
        .unwrap();
    let seen = peripheral
        .select_with(ReadPolicy::Session, "order_id = $1", &[&"b"])
        .await
        .unwrap();
    assert_eq!(seen.rows.len(), 1);
    assert!(reader.point() >= seen.freshness.point);
    // A document that does not decode as the type fails typed.
    let wrong = client
        .collection::<u64, Critical>("orders", &session)
        .unwrap();
    assert!(matches!(
        wrong.select("", &[]).await,
        Err(Error::Serialization(_))
    ));
    // A filter PostgreSQL refuses is a permanent error.
    let Err(e) = orders.select("no_such_column = 1", &[]).await else {
        panic!("a bad filter returned rows");
    };
    assert_eq!(
        e.retryability(),
        quorate_cockroach::Retryability::Permanent,
        "{e}"
    );

    // A collection in quorate's own table: only its own records, whatever
    // other collections' keys sort next to them.
    let tag = table_name("c");
    let mine = client
        .collection::<Order, Critical>(&tag, &session)
        .unwrap();
    let neighbour = client
        .collection::<Order, Critical>(&format!("{tag}-x"), &session)
        .unwrap();
    let below = client
        .collection::<Order, Critical>(&format!("{tag}0"), &session)
        .unwrap();
    for c in [&mine, &neighbour, &below] {
        c.put("k", &order("open", 1), Precondition::IfAbsent)
            .await
            .unwrap();
    }
    mine.put("l", &order("open", 2), Precondition::IfAbsent)
        .await
        .unwrap();
    let own = mine.select("", &[]).await.unwrap();
    let keys: Vec<&str> = own.rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["k", "l"]);
    let filtered = mine.select("version = $1", &[&1i64]).await.unwrap();
    assert_eq!(filtered.rows.len(), 2);
}

/// A number of this test process's own, the same throughout it.
fn run_id() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 40)
    })
}
