//! quorate on your own tables: an orders table (partition key `customer`,
//! sort key `order_no`) and a stock table that exist already, used as they
//! are, with a checkout that moves both in one state transition.
//!
//! `cargo run -p quorate-dynamodb --example dynamodb_own_table` against DynamoDB
//! Local (`scripts/dynamodb start` prints `QUORATE_DYNAMODB_ENDPOINT`). On
//! AWS, build each region's client from `aws_config::defaults(..)` instead
//! (your credentials, your profile) and drop the endpoint.

use quorate_dynamodb::aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use quorate_dynamodb::aws_sdk_dynamodb::{self, config::BehaviorVersion};
use quorate_dynamodb::{
    Client, ClientConfig, Critical, DynamoBackend, DynamoConfig, Error, Home, KeyAttribute,
    NativeTable, PartitionQuery, Precondition, ReadPolicy, Region, RegionClient,
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

fn sdk(endpoint: &str, aws_region: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new(aws_region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "local", "local", None, None, "static",
        ))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// The team's tables as they exist today (created here only so that the
/// example runs on an empty DynamoDB Local).
async fn existing_tables(client: &aws_sdk_dynamodb::Client) -> Result<(), Error> {
    let key = |name: &str, kind: ScalarAttributeType, role: KeyType| {
        Ok::<_, Error>((
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(kind)
                .build()
                .map_err(|e| Error::InvalidInput(e.to_string()))?,
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(role)
                .build()
                .map_err(|e| Error::InvalidInput(e.to_string()))?,
        ))
    };
    let tables = [
        (
            "ShopOrders",
            vec![
                key("customer", ScalarAttributeType::S, KeyType::Hash)?,
                key("order_no", ScalarAttributeType::N, KeyType::Range)?,
            ],
        ),
        (
            "ShopStock",
            vec![key("sku", ScalarAttributeType::S, KeyType::Hash)?],
        ),
    ];
    for (table, keys) in tables {
        let mut create = client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest);
        for (definition, schema) in keys {
            create = create.attribute_definitions(definition).key_schema(schema);
        }
        // Already there: left as it is.
        let _ = create.send().await;
    }
    // Stock written by another service, without quorate.
    client
        .put_item()
        .table_name("ShopStock")
        .item("sku", AttributeValue::S("book".into()))
        .item("on_hand", AttributeValue::N("5".into()))
        .condition_expression("attribute_not_exists(sku)")
        .send()
        .await
        .map(drop)
        .or_else(|e| match e.as_service_error() {
            Some(s) if s.is_conditional_check_failed_exception() => Ok(()),
            _ => Err(Error::InvalidInput(e.to_string())),
        })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let endpoint = std::env::var("QUORATE_DYNAMODB_ENDPOINT").map_err(|_| {
        Error::InvalidInput("set QUORATE_DYNAMODB_ENDPOINT (scripts/dynamodb start)".into())
    })?;
    let mut regions = Vec::new();
    for (name, aws) in [("eu", "eu-west-1"), ("us", "us-east-1")] {
        let client = sdk(&endpoint, aws);
        existing_tables(&client).await?;
        regions.push(RegionClient {
            region: Region::new(name)?,
            client,
        });
    }

    // This service runs in "us"; each customer's orders live in "eu".
    let mut config = DynamoConfig::new("shop", "quorate_shop", regions, "us")?;
    config.home = Home::Region(Region::new("eu")?);
    let orders_table = NativeTable::new("ShopOrders", KeyAttribute::string("customer")?)?
        .sort_key(KeyAttribute::number("order_no")?)?;
    config.native.insert("orders", orders_table.clone())?;
    config.native.insert(
        "stock",
        NativeTable::new("ShopStock", KeyAttribute::string("sku")?)?,
    )?;
    // quorate's own tables (records and idempotency); yours are left as
    // they are.
    DynamoBackend::new(config.clone())?.create_tables().await?;
    let backend = DynamoBackend::connect(config).await?;

    let client = Client::new(backend, ClientConfig::default())?;
    let session = client.session();
    let orders = client.collection::<Order, Critical>("orders", &session)?;
    let stock = client.collection::<Stock, Critical>("stock", &session)?;

    // Checkout: the order is placed and the stock taken in one
    // TransactWriteItems, or neither; each conditioned on the version read.
    let customer = "customer-7";
    let order_no = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros().to_string())
        .unwrap_or_else(|_| "1".into());
    let order_key = orders_table.key(customer, Some(&order_no))?;
    let book = stock.get("book").await?;
    let Some(current) = book.value else {
        return Err(Error::InvalidInput("no stock record for book".into()));
    };
    let mut checkout = client.transaction(&session);
    orders.put_in(
        &mut checkout,
        &order_key,
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

    // The customer's orders, under the session: the new one is there.
    let mine = client
        .query_partition(&session, ReadPolicy::Session, "orders", customer)
        .await?;
    let key = format!("orders/{order_key}");
    assert!(
        mine.rows.iter().any(|(k, _)| *k == key),
        "the session's own order"
    );
    println!(
        "{} order(s) of {customer}, read in {} ({})",
        mine.rows.len(),
        mine.freshness.region,
        mine.freshness.role.label()
    );
    Ok(())
}
