//! quorate on your own tables: an orders table and an inventory table that
//! exist already, used as they are, with a checkout that moves both in
//! one state transition.
//!
//! `cargo run -p quorate-cockroach --example cockroach_own_table` against a
//! PostgreSQL primary with hot standbys (`scripts/pg start` prints the
//! variables it reads: `QUORATE_PG_PRIMARY`, `QUORATE_PG_STANDBY1`,
//! `QUORATE_PG_STANDBY2`). For CockroachDB, use `Dialect::Cockroach` and
//! one `Role::Gateway` endpoint per region.

use quorate_cockroach::{
    Client, ClientConfig, Critical, Dialect, Endpoint, Error, NativeTable, PgBackend, PgConfig,
    Precondition, ReadPolicy, Region, Role, SqlQuery,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    sku: String,
    quantity: u32,
    status: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stock {
    on_hand: u32,
}

fn env(name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|_| Error::InvalidInput(format!("set {name} (scripts/pg start)")))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (primary, standby) = (env("QUORATE_PG_PRIMARY")?, env("QUORATE_PG_STANDBY1")?);

    // The team's tables, as they are today: their own keys, JSONB documents,
    // a column quorate knows nothing about.
    let (admin, connection) = tokio_postgres::connect(&primary, tokio_postgres::NoTls)
        .await
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    tokio::spawn(connection);
    admin
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS shop_orders (order_id TEXT PRIMARY KEY, body JSONB NOT NULL, note TEXT);
             CREATE TABLE IF NOT EXISTS shop_stock (sku TEXT PRIMARY KEY, doc JSONB NOT NULL);
             INSERT INTO shop_stock (sku, doc) VALUES ('book', '{\"on_hand\": 5}') ON CONFLICT DO NOTHING;",
        )
        .await
        .map_err(|e| Error::InvalidInput(e.to_string()))?;

    // This service runs in "us", next to a standby; the primary is in "eu".
    let endpoints = vec![
        Endpoint {
            region: Region::new("eu")?,
            role: Role::Primary,
            connection: primary,
        },
        Endpoint {
            region: Region::new("us")?,
            role: Role::Standby,
            connection: standby,
        },
    ];
    let mut config = PgConfig::new("shop", Dialect::Postgres, endpoints, "us")?;
    config.native.insert(
        "orders",
        NativeTable::new("shop_orders", "order_id", "body")?,
    )?;
    config
        .native
        .insert("stock", NativeTable::new("shop_stock", "sku", "doc")?)?;
    let backend = PgBackend::new(config)?;
    // quorate's idempotency table, and its bookkeeping columns on yours
    // (rows already there become version 1).
    backend.create_schema().await?;

    let client = Client::new(backend, ClientConfig::default())?;
    let session = client.session();
    let orders = client.collection::<Order, Critical>("orders", &session)?;
    let stock = client.collection::<Stock, Critical>("stock", &session)?;

    // Checkout: the order is placed and the stock taken in one transition,
    // or neither; each record conditioned on the version read.
    let order_id = format!("o-{}", std::process::id());
    let book = stock.get("book").await?;
    let Some(current) = book.value else {
        return Err(Error::InvalidInput("no stock record for book".into()));
    };
    let mut checkout = client.transaction(&session);
    orders.put_in(
        &mut checkout,
        &order_id,
        &Order {
            sku: "book".into(),
            quantity: 1,
            status: "placed".into(),
        },
        Precondition::IfAbsent,
    )?;
    stock.put_in(
        &mut checkout,
        "book",
        &Stock {
            on_hand: current.value.on_hand.saturating_sub(1),
        },
        Precondition::IfVersion(current.version),
    )?;
    let done = checkout.commit().await?;
    println!("checkout committed: {:?}", done.versions);

    // Read-your-writes, from the standby when it has caught up.
    let placed = orders
        .get_with(&order_id, quorate_cockroach::StrictRead::Session)
        .await?;
    println!(
        "order {order_id}: {:?}, served by {} ({})",
        placed.value.map(|v| v.value.status),
        placed.freshness.region,
        placed.freshness.role.label()
    );

    // Any SQL over the same rows, under the session: it sees the checkout.
    let open = client
        .sql_query(
            &session,
            ReadPolicy::Session,
            "SELECT order_id FROM shop_orders WHERE body->>'status' = 'placed' AND NOT quorate_deleted AND order_id = $1",
            &[&order_id],
        )
        .await?;
    assert_eq!(open.rows.len(), 1, "the session's own order");
    println!(
        "placed orders with this id, by SQL: {}, read in {} ({})",
        open.rows.len(),
        open.freshness.region,
        open.freshness.role.label()
    );
    Ok(())
}
