//! Collections on tables of the application's own, on the Spanner
//! emulator: a table created by hand with plain DDL, holding a row written
//! before quorate, adopted by `create_tables`, used through quorate and
//! read by plain SQL.

mod common;

use serde::{Deserialize, Serialize};

use quorate_spanner::conformance::{run_all, Fixture};
use quorate_spanner::gcloud_spanner::admin::{client::Client as Admin, AdminClientConfig};
use quorate_spanner::gcloud_spanner::mutation::insert;
use quorate_spanner::gcloud_spanner::statement::Statement;
use quorate_spanner::{
    Client, ClientConfig, Critical, Error, NativeTable, Precondition, ReadPolicy, SpannerBackend,
    Version, WriteOptions,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    status: String,
    total_cents: u64,
}

/// The emulator takes one schema change at a time.
static DDL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn ddl(database: &str, statements: Vec<String>) {
    use gcloud_googleapis::spanner::admin::database::v1::UpdateDatabaseDdlRequest;
    let _one = DDL.lock().await;
    // quorate's own tables, as every test binary makes them, first.
    common::backend(database, "us-east1").await;
    // SPANNER_EMULATOR_HOST names the emulator.
    let admin = Admin::new(AdminClientConfig::default()).await.unwrap();
    // The emulator also refuses a schema change while another test's
    // read-write transaction is open: such a refusal is waited out.
    for attempt in 1.. {
        let outcome = match admin
            .database()
            .update_database_ddl(
                UpdateDatabaseDdlRequest {
                    database: database.to_owned(),
                    statements: statements.clone(),
                    ..Default::default()
                },
                None,
            )
            .await
        {
            Ok(mut op) => op.wait(None).await.map(|_| ()),
            Err(status) => Err(status),
        };
        match outcome {
            Ok(()) => return,
            Err(status)
                if attempt < 40 && status.code() == gcloud_gax::grpc::Code::FailedPrecondition =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
}

fn table_name(what: &str) -> String {
    format!("{what}_{:x}", run_id() & 0xff_ffff)
}

/// A team's existing table, with a column of its own and a row written
/// before quorate.
async fn hand_made(database: &str, table: &str) {
    ddl(
        database,
        vec![format!(
            "CREATE TABLE {table} (OrderId STRING(64) NOT NULL, Body JSON, Note STRING(MAX)) \
             PRIMARY KEY (OrderId)"
        )],
    )
    .await;
    let raw = SpannerBackend::connect(common::config(database, "us-east1"))
        .await
        .unwrap();
    raw.spanner()
        .apply(vec![insert(
            table,
            &["OrderId", "Body", "Note"],
            &[
                &"before",
                &r#"{"total_cents": 500, "status": "paid"}"#,
                &"legacy",
            ],
        )])
        .await
        .unwrap();
}

async fn backend_on(database: &str, table: &str) -> SpannerBackend {
    let mut config = common::config(database, "us-east1");
    config
        .native
        .insert(
            "orders",
            NativeTable::new(table, "OrderId", "Body").unwrap(),
        )
        .unwrap();
    let backend = SpannerBackend::connect(config).await.unwrap();
    let _one = DDL.lock().await;
    backend.create_tables().await.expect("adopts the table");
    backend
}

async fn plain_sql(backend: &SpannerBackend, sql: &str, key: &str) -> Vec<Option<String>> {
    let mut tx = backend.spanner().single().await.unwrap();
    let mut stmt = Statement::new(sql);
    stmt.add_param("k", &key);
    let mut rows = tx.query(stmt).await.unwrap();
    let mut out = Vec::new();
    while let Some(row) = rows.next().await.unwrap() {
        out.push(row.column::<Option<String>>(0).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_by_hand_is_adopted_and_read_by_plain_sql() {
    let Some((_, db)) = common::emulator() else {
        return;
    };
    let table = table_name("ShopOrders");
    hand_made(&db, &table).await;
    let backend = backend_on(&db, &table).await;
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let session = client.session();
    let orders = client
        .collection::<Order, Critical>("orders", &session)
        .unwrap();

    // The row from before quorate: version 1, its document.
    let before = orders.get("before").await.unwrap();
    assert_eq!(before.version(), Some(Version(1)));
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
    assert_eq!(shipped.version, created.version.next());
    let status = format!(
        "SELECT JSON_VALUE(Body, '$.status') FROM {table} \
         WHERE OrderId = @k AND quorate_deleted IS NOT TRUE"
    );
    assert_eq!(
        plain_sql(&backend, &status, "o-1").await,
        [Some("shipped".to_owned())]
    );
    let note = format!("SELECT Note FROM {table} WHERE OrderId = @k");
    orders
        .put("before", &order, Precondition::IfVersion(Version(1)))
        .await
        .unwrap();
    assert_eq!(
        plain_sql(&backend, &note, "before").await,
        [Some("legacy".to_owned())],
        "the application's own columns are left alone"
    );

    // A delete is a tombstone row other readers skip, and the version goes
    // on when the record comes back.
    let gone = orders
        .delete("o-1", Precondition::IfVersion(shipped.version))
        .await
        .unwrap();
    assert!(plain_sql(&backend, &status, "o-1").await.is_empty());
    let again = orders
        .put("o-1", &order, Precondition::IfAbsent)
        .await
        .unwrap();
    assert_eq!(again.version, gone.version.next());

    // One multi-record write over the native table and quorate's own.
    let stock = client
        .collection::<u64, Critical>("stock", &session)
        .unwrap();
    let book = common::key("book");
    stock.put(&book, &3, Precondition::IfAbsent).await.unwrap();
    let mut tx = client.transaction(&session);
    orders
        .put_in(&mut tx, "o-2", &order, Precondition::IfAbsent)
        .unwrap();
    stock
        .put_in(&mut tx, &book, &2, Precondition::IfVersion(Version(1)))
        .unwrap();
    tx.commit().await.unwrap();
    let total = format!("SELECT JSON_VALUE(Body, '$.total_cents') FROM {table} WHERE OrderId = @k");
    assert_eq!(
        plain_sql(&backend, &total, "o-2").await,
        [Some("1250".to_owned())]
    );
    let mut tx = client.transaction(&session);
    orders
        .put_in(&mut tx, "o-2", &order, Precondition::IfAbsent)
        .unwrap();
    stock.put_in(&mut tx, &book, &0, Precondition::Any).unwrap();
    match tx.commit().await {
        Err(Error::Conflict { key, current }) => {
            assert_eq!(key, "orders/o-2");
            assert_eq!(current, Some(Version(1)));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(stock.get(&book).await.unwrap().value.unwrap().value, 2);

    // Values a JSON column cannot hold, refused before anything is sent.
    let elsewhere = common::key("elsewhere");
    let deep = format!("{}1{}", "[".repeat(81), "]".repeat(81));
    for bad in [&b"not json"[..], b"", b"\xff", deep.as_bytes()] {
        let e = client
            .write(
                &session,
                "orders/raw",
                bytes::Bytes::copy_from_slice(bad),
                Precondition::Any,
                &WriteOptions::default(),
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
        tx.put(elsewhere.clone(), "1".into(), Precondition::Any);
        assert!(matches!(tx.commit().await, Err(Error::InvalidInput(_))));
    }
    assert!(plain_sql(&backend, &note, "raw").await.is_empty());
    assert!(client
        .read(&session, &elsewhere, ReadPolicy::Strong)
        .await
        .unwrap()
        .value
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_holds_on_a_native_table() {
    let Some((_, db)) = common::emulator() else {
        return;
    };
    let table = table_name("ConfOrders");
    hand_made(&db, &table).await;
    // The query path here is the typed collection query.
    let query = quorate_spanner::conformance::QueryHook::new(
        |client: Client<SpannerBackend>, session, policy, key: String| async move {
            use quorate_spanner::{Peripheral, SelectRecords, SqlRead};
            let row_key = key.strip_prefix("orders/").unwrap_or(&key).to_owned();
            let orders = client.collection::<serde_json::Value, Peripheral>("orders", &session)?;
            let q = orders
                .select_with(policy, &SqlRead::new("OrderId = @k").param("k", &row_key))
                .await?;
            Ok(q.rows
                .iter()
                .find(|(k, _)| *k == row_key)
                .map(|(_, r)| r.version))
        },
    );
    let mut fixture = Fixture::new(backend_on(&db, &table).await).with_query(query);
    fixture.prefix = format!("orders/{}", fixture.prefix);
    let report = run_all(&fixture).await;
    assert!(report
        .iter()
        .any(|(name, _)| *name == "read_your_writes_through_a_query"));
    for (name, result) in &report {
        println!("{name}: {result:?}");
    }
    assert!(report.iter().all(|(_, r)| r.is_ok()), "{report:#?}");
    let count = plain_sql(
        &fixture.backend,
        &format!("SELECT CAST(COUNT(*) AS STRING) FROM {table} WHERE STARTS_WITH(OrderId, @k)"),
        fixture.prefix.trim_start_matches("orders/"),
    )
    .await;
    assert_ne!(
        count,
        [Some("0".to_owned())],
        "the cases wrote to the native table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_that_do_not_fit_are_named_with_what_is_wrong() {
    let Some((_, db)) = common::emulator() else {
        return;
    };
    let table = table_name("TextOrders");
    ddl(
        &db,
        vec![format!(
            "CREATE TABLE {table} (Id INT64 NOT NULL, OrderId STRING(MAX), Body STRING(MAX)) PRIMARY KEY (Id)"
        )],
    )
    .await;
    let mut config = common::config(&db, "us-east1");
    config
        .native
        .insert(
            "orders",
            NativeTable::new(&table, "OrderId", "Body").unwrap(),
        )
        .unwrap();
    let backend = SpannerBackend::connect(config).await.unwrap();
    let e = {
        let _one = DDL.lock().await;
        backend.create_tables().await.unwrap_err()
    };
    let text = e.to_string();
    assert!(matches!(e, Error::InvalidInput(_)), "{text}");
    assert!(text.contains("column Body"), "{text}");
    assert!(text.contains("primary key"), "{text}");
    // One table, one collection (names ignore case).
    let mut config = common::config(&db, "us-east1");
    config
        .native
        .insert("a", NativeTable::new(&table, "OrderId", "Body").unwrap())
        .unwrap();
    config
        .native
        .insert(
            "b",
            NativeTable::new(&table.to_ascii_lowercase(), "OrderId", "Body").unwrap(),
        )
        .unwrap();
    assert!(matches!(
        SpannerBackend::connect(config).await,
        Err(Error::InvalidInput(_))
    ));
    let mut config = common::config(&db, "us-east1");
    config
        .native
        .insert(
            "orders",
            NativeTable::new("NoSuchTable", "Id", "Body").unwrap(),
        )
        .unwrap();
    let e = SpannerBackend::connect(config)
        .await
        .unwrap()
        .check_schema()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_read_under_the_session_and_advance_it() {
    use quorate_spanner::{Point, SpannerQuery, SqlRead};
    let Some((_, db)) = common::emulator() else {
        return;
    };
    let table = table_name("QueryOrders");
    hand_made(&db, &table).await;
    let client = Client::new(backend_on(&db, &table).await, ClientConfig::default()).unwrap();
    let session = client.session();
    let orders = client
        .collection::<Order, Critical>("orders", &session)
        .unwrap();
    let written = orders
        .put(
            "q-1",
            &Order {
                status: "open".into(),
                total_cents: 10,
            },
            Precondition::IfAbsent,
        )
        .await
        .unwrap();
    let open = SqlRead::new(format!(
        "SELECT OrderId FROM {table} WHERE JSON_VALUE(Body, '$.status') = @status \
         AND quorate_deleted IS NOT TRUE ORDER BY OrderId"
    ))
    .param("status", &"open");
    for policy in [ReadPolicy::Session, ReadPolicy::Strong] {
        let q = client.spanner_query(&session, policy, &open).await.unwrap();
        let ids: Vec<String> = q.rows.iter().map(|r| r.column(0).unwrap()).collect();
        assert_eq!(ids, ["q-1"], "{policy}");
        assert!(q.freshness.point >= Some(written.point), "{policy}");
        assert!(session.point() >= q.freshness.point, "the session advanced");
    }
    // A session that has seen a point a little ahead (a busier moment
    // elsewhere) reads at or after it: the read waits for it rather than
    // returning what is older.
    let ahead = Point {
        wall: written.point.wall.max(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        ) + 400_000_000,
        logical: 0,
    };
    let later = client.session();
    later.observe_point(Some(ahead));
    let q = client
        .spanner_query(&later, ReadPolicy::Session, &open)
        .await
        .unwrap();
    assert!(q.freshness.point >= Some(ahead), "{:?}", q.freshness);
    assert_eq!(
        q.freshness.role,
        quorate_spanner::ReplicaRole::Follower,
        "served by the replicas with the session's bound, not escalated"
    );
    // A statement Spanner refuses is a typed, permanent error.
    let Err(e) = client
        .spanner_query(&session, ReadPolicy::Session, &SqlRead::new("SELEKT 1"))
        .await
    else {
        panic!("a statement Spanner refuses returned rows");
    };
    assert_eq!(
        e.retryability(),
        quorate_spanner::Retryability::Permanent,
        "{e}"
    );
}

/// An application's own unique index on its native table refuses a record:
/// a permanent error, not an idempotency clash retried until the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_s_unique_index_refusing_a_record_is_permanent() {
    let Some((_, db)) = common::emulator() else {
        return;
    };
    let table = table_name("Users");
    ddl(
        &db,
        vec![
            format!(
                "CREATE TABLE {table} (Id STRING(MAX) NOT NULL, Doc JSON, \
                 Email STRING(MAX) AS (JSON_VALUE(Doc, '$.email')) STORED) PRIMARY KEY (Id)"
            ),
            format!("CREATE UNIQUE INDEX {table}ByEmail ON {table} (Email)"),
        ],
    )
    .await;
    let mut config = common::config(&db, "us-east1");
    config
        .native
        .insert("users", NativeTable::new(&table, "Id", "Doc").unwrap())
        .unwrap();
    let backend = SpannerBackend::connect(config).await.unwrap();
    {
        let _one = DDL.lock().await;
        backend.create_tables().await.unwrap();
    }
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
    assert_eq!(
        e.retryability(),
        quorate_spanner::Retryability::Permanent,
        "{}",
        e.report()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_tables_waits_out_an_open_read_write_transaction() {
    let Some((_, db)) = common::emulator() else {
        return;
    };
    let table = table_name("BusyOrders");
    hand_made(&db, &table).await;
    let raw = SpannerBackend::connect(common::config(&db, "us-east1"))
        .await
        .unwrap();
    let _one = DDL.lock().await;
    // Another service's read-write transaction, open across the schema
    // change: the emulator refuses schema changes while it is.
    // (The emulator runs one transaction at a time, so the other tests'
    // transactions may abort it before it reads: it is begun again.)
    let mut tx = None;
    for _ in 0..100 {
        let mut open = raw.spanner().begin_read_write_transaction().await.unwrap();
        let mut stmt = Statement::new(format!("SELECT Note FROM {table} WHERE OrderId = @k"));
        stmt.add_param("k", &"before");
        let read = match open.query(stmt).await {
            Ok(mut rows) => rows.next().await.map(|row| row.is_some()),
            Err(status) => Err(status),
        };
        match read {
            Ok(found) => {
                assert!(found, "the row written before quorate");
                tx = Some(open);
                break;
            }
            Err(status) if status.code() == gcloud_gax::grpc::Code::Aborted => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    let mut tx = tx.expect("a read-write transaction began within 100 attempts");
    let mut config = common::config(&db, "us-east1");
    config
        .native
        .insert(
            "orders",
            NativeTable::new(&table, "OrderId", "Body").unwrap(),
        )
        .unwrap();
    let backend = SpannerBackend::connect(config).await.unwrap();
    let create = tokio::spawn(async move { backend.create_tables().await });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    // The emulator runs one transaction at a time: the retried schema
    // change may already have taken priority and aborted this one.
    let ended: Result<_, quorate_spanner::gcloud_spanner::client::Error> =
        tx.end(Ok(()), None).await;
    if let Err(e) = ended {
        assert!(e.to_string().contains("aborted"), "{e}");
    }
    create
        .await
        .unwrap()
        .expect("the schema change waited for the transaction to end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_is_queried_typed_under_its_policy() {
    use quorate_spanner::{Peripheral, ReadPolicy, SelectRecords, SqlRead};
    let Some((_, db)) = common::emulator() else {
        return;
    };
    let table = table_name("SelectOrders");
    hand_made(&db, &table).await;
    let client = Client::new(backend_on(&db, &table).await, ClientConfig::default()).unwrap();
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
        .select(&SqlRead::new("JSON_VALUE(Body, '$.status') = @s").param("s", &"open"))
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
    let all = orders.select(&SqlRead::new("")).await.unwrap();
    let keys: Vec<&str> = all.rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "b", "before"]);
    // Another session that only queried reads no older than the query.
    let reader = client.session();
    let peripheral = client
        .collection::<Order, Peripheral>("orders", &reader)
        .unwrap();
    let seen = peripheral
        .select_with(
            ReadPolicy::Session,
            &SqlRead::new("OrderId = @k").param("k", &"b"),
        )
        .await
        .unwrap();
    assert_eq!(seen.rows.len(), 1);
    assert!(reader.point() >= seen.freshness.point);
    // A document that does not decode as the type fails typed.
    let wrong = client
        .collection::<u64, Critical>("orders", &session)
        .unwrap();
    assert!(matches!(
        wrong.select(&SqlRead::new("")).await,
        Err(Error::Serialization(_))
    ));
    // quorate's parameter name is refused before anything is sent.
    assert!(matches!(
        orders
            .select(&SqlRead::new("OrderId = @quorate_prefix").param("quorate_prefix", &"a"))
            .await,
        Err(Error::InvalidInput(_))
    ));

    // A collection in quorate's own table: only its own records, whatever
    // other collections' keys sort next to them.
    let tag = table_name("c");
    let mine = client
        .collection::<Order, Critical>(&tag, &session)
        .unwrap();
    let neighbour = client
        .collection::<Order, Critical>(&format!("{tag}-x"), &session)
        .unwrap();
    let longer = client
        .collection::<Order, Critical>(&format!("{tag}0"), &session)
        .unwrap();
    for c in [&mine, &neighbour, &longer] {
        c.put("k", &order("open", 1), Precondition::IfAbsent)
            .await
            .unwrap();
    }
    mine.put("l", &order("open", 2), Precondition::IfAbsent)
        .await
        .unwrap();
    let own = mine.select(&SqlRead::new("")).await.unwrap();
    let keys: Vec<&str> = own.rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["k", "l"]);
    let filtered = mine
        .select(&SqlRead::new("version = @v").param("v", &1i64))
        .await
        .unwrap();
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
