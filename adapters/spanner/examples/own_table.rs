//! quorate on your own tables: an orders table and a stock table that
//! exist already, used as they are, with a checkout that moves both in one
//! read-write transaction.
//!
//! `cargo run -p quorate-spanner --example spanner_own_table` against the Spanner
//! emulator (`scripts/spanner start` prints `SPANNER_EMULATOR_HOST` and
//! `QUORATE_SPANNER_DATABASE`). On Cloud Spanner, leave
//! `SPANNER_EMULATOR_HOST` unset: Application Default Credentials are used.

use quorate_spanner::gcloud_spanner::mutation::insert;
use quorate_spanner::gcloud_spanner::statement::Statement;
use quorate_spanner::{
    Client, ClientConfig, Critical, Error, NativeTable, Precondition, ReadPolicy, SpannerBackend,
    SpannerConfig, SpannerQuery, SqlRead,
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

/// The team's tables as they exist today (created here only so that the
/// example runs on an empty emulator database).
async fn existing_tables(database: &str) -> Result<(), Error> {
    use gcloud_googleapis::spanner::admin::database::v1::UpdateDatabaseDdlRequest;
    use quorate_spanner::gcloud_spanner::admin::{client::Client as Admin, AdminClientConfig};
    // The emulator needs no credentials; Cloud Spanner takes your
    // Application Default Credentials.
    let config = if std::env::var_os("SPANNER_EMULATOR_HOST").is_some() {
        AdminClientConfig::default()
    } else {
        AdminClientConfig::default()
            .with_auth()
            .await
            .map_err(|e| Error::InvalidInput(format!("Spanner credentials: {e}")))?
    };
    let admin = Admin::new(config)
        .await
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let mut op = admin
        .database()
        .update_database_ddl(
            UpdateDatabaseDdlRequest {
                database: database.to_owned(),
                statements: vec![
                    "CREATE TABLE IF NOT EXISTS ShopOrders (OrderId STRING(64) NOT NULL, Body JSON) PRIMARY KEY (OrderId)".into(),
                    "CREATE TABLE IF NOT EXISTS ShopStock (Sku STRING(64) NOT NULL, Doc JSON) PRIMARY KEY (Sku)".into(),
                ],
                ..Default::default()
            },
            None,
        )
        .await
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    op.wait(None)
        .await
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let database = std::env::var("QUORATE_SPANNER_DATABASE").map_err(|_| {
        Error::InvalidInput("set QUORATE_SPANNER_DATABASE (scripts/spanner start)".into())
    })?;
    existing_tables(&database).await?;

    let mut config = SpannerConfig::new(&database, &["us-east1", "europe-west1"], "us-east1")?;
    // The emulator runs one read-write transaction at a time.
    config.serialize_read_write = std::env::var_os("SPANNER_EMULATOR_HOST").is_some();
    config
        .native
        .insert("orders", NativeTable::new("ShopOrders", "OrderId", "Body")?)?;
    config
        .native
        .insert("stock", NativeTable::new("ShopStock", "Sku", "Doc")?)?;
    let backend = SpannerBackend::connect(config).await?;
    // quorate's idempotency table, and its bookkeeping columns on yours.
    backend.create_tables().await?;
    // Stock written by another service, without quorate.
    let spanner = backend.spanner();
    let fail = |e: &dyn std::fmt::Display| Error::InvalidInput(e.to_string());
    let mut read = spanner.single().await.map_err(|e| fail(&e))?;
    let mut rows = read
        .query(Statement::new(
            "SELECT Sku FROM ShopStock WHERE Sku = 'book'",
        ))
        .await
        .map_err(|e| fail(&e))?;
    if rows.next().await.map_err(|e| fail(&e))?.is_none() {
        spanner
            .apply(vec![insert(
                "ShopStock",
                &["Sku", "Doc"],
                &[&"book", &r#"{"on_hand": 5}"#],
            )])
            .await
            .map_err(|e| fail(&e))?;
    }

    let client = Client::new(backend, ClientConfig::default())?;
    let session = client.session();
    let orders = client.collection::<Order, Critical>("orders", &session)?;
    let stock = client.collection::<Stock, Critical>("stock", &session)?;

    // Checkout: the order is placed and the stock taken in one read-write
    // transaction, or neither; each conditioned on the version read.
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

    // Any SQL over the same rows, under the session: it sees the checkout.
    let placed = client
        .spanner_query(
            &session,
            ReadPolicy::Session,
            &SqlRead::new(
                "SELECT OrderId FROM ShopOrders WHERE JSON_VALUE(Body, '$.status') = 'placed' \
                 AND quorate_deleted IS NOT TRUE AND OrderId = @id",
            )
            .param("id", &order_id),
        )
        .await?;
    assert_eq!(placed.rows.len(), 1, "the session's own order");
    println!(
        "placed orders with this id, by SQL: {}, read in {} ({}) at {:?}",
        placed.rows.len(),
        placed.freshness.region,
        placed.freshness.role.label(),
        placed.freshness.point
    );
    Ok(())
}
