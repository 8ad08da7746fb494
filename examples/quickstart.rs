//! quorate in five minutes, on the embedded simulator.
//!
//! `cargo run --release --example quickstart`
//!
//! - critical data (strict reads only) beside peripheral data (may be stale);
//! - a session token carried from one service to another as a string;
//! - a conditional-write conflict;
//! - the freshness every read reports.

use std::time::Duration;

use quorate::sim::{Sim, SimConfig};
use quorate::{
    Client, ClientConfig, Critical, Error, Peripheral, Precondition, Read, ReadPolicy, Staleness,
    StrictRead,
};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Order {
    item: String,
    state: String,
}

fn show<T: std::fmt::Debug>(what: &str, read: &Read<T>) {
    let f = &read.freshness;
    println!(
        "{what:<34} {:<40} served in {:<9} by {:<8} staleness ≤ {:?}",
        format!("{:?}", read.value.as_ref().map(|v| (&v.value, v.version))),
        f.region.as_str(),
        f.role.label(),
        f.staleness_bound.unwrap_or(Duration::MAX),
    );
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), Error> {
    // Three regions; the leaseholder lives in eu-west. Virtual time: this
    // runs instantly and the same way every time.
    let sim = Sim::new(SimConfig::new(["eu-west", "us-east", "ap-south"])?)?;

    // The checkout service runs in us-east.
    let checkout = Client::new(sim.at("us-east")?, ClientConfig::default())?;
    let session = checkout.session();
    let orders = checkout.collection::<Order, Critical>("orders", &session)?;
    let order = Order {
        item: "book".into(),
        state: "placed".into(),
    };
    let created = orders.put("o-1", &order, Precondition::IfAbsent).await?;
    println!(
        "created o-1 as {} at {} in {}",
        created.version, created.point, created.region
    );

    // Critical reads are strong or session reads; a bounded-staleness read
    // on `orders` would not compile.
    show("checkout: strong read", &orders.get("o-1").await?);
    show(
        "checkout: session read",
        &orders.get_with("o-1", StrictRead::Session).await?,
    );

    // The session travels to the shipping service (ap-south) as a header.
    let header = checkout.encode_token(&session);
    println!("quorate-session: {header}");
    let shipping = Client::new(sim.at("ap-south")?, ClientConfig::default())?;
    let continued = shipping.resume_session(&header)?;
    let shipping_orders = shipping.collection::<Order, Critical>("orders", &continued)?;
    let seen = shipping_orders.get_with("o-1", StrictRead::Session).await?;
    show("shipping: session read", &seen);

    // A conditional write based on what shipping read...
    let version = seen.version().expect("read-your-writes across services");
    let shipped = Order {
        item: "book".into(),
        state: "shipped".into(),
    };
    shipping_orders
        .put("o-1", &shipped, Precondition::IfVersion(version))
        .await?;
    // ...and a second one based on the same, now outdated, read.
    let cancelled = Order {
        item: "book".into(),
        state: "cancelled".into(),
    };
    match orders
        .put("o-1", &cancelled, Precondition::IfVersion(version))
        .await
    {
        Err(Error::Conflict { current, .. }) => {
            println!("checkout: cancel refused, somebody committed first (now at {current:?})")
        }
        other => println!("checkout: unexpected {other:?}"),
    }

    // Peripheral data may be read stale, and says how stale.
    let feed = checkout.collection::<String, Peripheral>("feed", &session)?;
    feed.put("home", &"new arrivals".to_string(), Precondition::Any)
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bounded = ReadPolicy::BoundedStaleness(Staleness::new(Duration::from_secs(5))?);
    show(
        "feed: bounded-staleness read",
        &feed.get_with("home", bounded).await?,
    );
    Ok(())
}
