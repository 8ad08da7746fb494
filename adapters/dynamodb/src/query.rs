//! Queries of a partition under a read policy, through the client.

use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use quorate::{Client, Collection, DataClass, Error, Queried, ReadPolicy, Records, Session};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::DynamoBackend;

/// The records of one partition of a native table with a sort key, in
/// sort-key order: each record's key (`<collection>/<partition>/<sort>`)
/// and its version and value. Tombstones are left out.
pub type Partition = Records<Bytes>;

/// Queries of a partition under a read policy in a session (`use
/// quorate_dynamodb::PartitionQuery`).
///
/// An eventually consistent `Query` of a replica can return each item it
/// has at a version the session may check, but it cannot show that an item
/// is missing (replication is per item, and an item created or re-created
/// there later may not have arrived): no follower result proves a session's
/// writes or a staleness bound. So every partition query is served as a
/// strong one, `ConsistentRead` in the partition's home region (any region
/// of a table with multi-Region strong consistency), whatever the policy
/// asked; its freshness says so. The session records every record's
/// version and the newest write time seen.
///
/// ```no_run
/// use quorate_dynamodb::{Client, DynamoBackend, PartitionQuery, ReadPolicy};
///
/// # async fn demo(client: Client<DynamoBackend>) -> Result<(), quorate_dynamodb::Error> {
/// let session = client.session();
/// let orders = client
///     .query_partition(&session, ReadPolicy::Session, "orders", "customer-7")
///     .await?;
/// for (key, record) in &orders.rows {
///     println!("{key} at {}", record.version);
/// }
/// # Ok(()) }
/// ```
pub trait PartitionQuery {
    /// Reads every record of `partition` in `collection`'s native table
    /// (see the trait's documentation for how `policy` is served).
    fn query_partition(
        &self,
        session: &Session,
        policy: ReadPolicy,
        collection: &str,
        partition: &str,
    ) -> impl std::future::Future<Output = Result<Queried<Partition>, Error>> + Send;
}

impl PartitionQuery for Client<DynamoBackend> {
    async fn query_partition(
        &self,
        session: &Session,
        policy: ReadPolicy,
        collection: &str,
        partition: &str,
    ) -> Result<Queried<Partition>, Error> {
        let _ = policy;
        let backend = self.backend();
        // Checked before anything is sent.
        backend.partition_of(collection, partition)?;
        let home = format!("{collection}/{partition}");
        let queried = self
            .query(session, ReadPolicy::Strong, Some(&home), |plan| {
                let region = plan.region.clone();
                async move {
                    backend
                        .query_partition(&region, collection, partition)
                        .await
                }
            })
            .await?;
        for (key, record) in &queried.rows {
            session.observe(key, Some(record.version), None);
        }
        Ok(queried)
    }
}

/// Typed queries of a partition of a collection's native table (`use
/// quorate_dynamodb::PartitionRecords`): its records, decoded, in
/// sort-key order, read in the collection's session.
///
/// As for [`PartitionQuery`], the query is served strong whatever the
/// collection's default policy: `ConsistentRead` in the partition's home
/// region. The session records every record's version.
///
/// ```no_run
/// use quorate_dynamodb::{Critical, DynamoBackend, PartitionRecords};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct Order { status: String }
///
/// # async fn demo(client: quorate_dynamodb::Client<DynamoBackend>) -> Result<(), quorate_dynamodb::Error> {
/// let session = client.session();
/// let orders = client.collection::<Order, Critical>("orders", &session)?;
/// let placed = orders.partition("customer-7").await?;
/// for (key, order) in &placed.rows {
///     // `key` is `customer-7/<sort key>`, the record's key in the collection.
///     println!("{key} at {}: {}", order.version, order.value.status);
/// }
/// # Ok(()) }
/// ```
pub trait PartitionRecords {
    /// The collection's records' type.
    type Item;

    /// Every record of `partition`, each as its key in the collection
    /// (`<partition>/<sort key>`) with its version and value. Tombstones
    /// are left out.
    fn partition(
        &self,
        partition: &str,
    ) -> impl std::future::Future<Output = Result<Queried<Records<Self::Item>>, Error>> + Send;
}

impl<T, C> PartitionRecords for Collection<T, C, DynamoBackend>
where
    T: Serialize + DeserializeOwned + Send + Sync,
    C: DataClass,
{
    type Item = T;

    async fn partition(&self, partition: &str) -> Result<Queried<Records<T>>, Error> {
        let backend = self.client().backend();
        let name = self.name();
        // Checked before anything is sent.
        backend.partition_of(name, partition)?;
        let strip = name.len() + 1;
        self.query_with(C::strong(), Some(partition), |plan| {
            let region = plan.region.clone();
            async move {
                let (rows, freshness) = backend.query_partition(&region, name, partition).await?;
                let rows = rows
                    .into_iter()
                    .map(|(key, record)| (key.get(strip..).unwrap_or_default().to_owned(), record))
                    .collect();
                Ok((rows, freshness))
            }
        })
        .await
    }
}

/// A sort key's value as the text of a record's key.
pub(crate) fn sort_text(v: &AttributeValue) -> Option<&str> {
    match v {
        AttributeValue::S(s) | AttributeValue::N(s) => Some(s),
        _ => None,
    }
}
