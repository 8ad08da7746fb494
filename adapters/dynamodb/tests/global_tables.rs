//! `create_tables` against a loopback server that answers as DynamoDB does
//! for global tables (DynamoDB Local has none): the requests it sends, in
//! which AWS region, and that a second call changes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use quorate_dynamodb::aws_sdk_dynamodb::{self, config::BehaviorVersion};
use quorate_dynamodb::{DynamoBackend, DynamoConfig, Mode, Region, RegionClient};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request the server took: its operation, the AWS region it was
/// signed for, and its body.
#[derive(Clone, Debug)]
struct Seen {
    op: String,
    region: String,
    body: Value,
}

#[derive(Default)]
struct Table {
    /// Describes left before the table (or a replica) reports ACTIVE.
    creating: u32,
    replicas: Vec<(String, u32)>,
    consistency: Option<String>,
}

#[derive(Default)]
struct State {
    seen: Vec<Seen>,
    /// Tables by AWS region and name.
    tables: HashMap<(String, String), Table>,
}

fn answer(state: &mut State, seen: &Seen) -> (u16, Value) {
    let name = seen.body["TableName"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let at = (seen.region.clone(), name.clone());
    let not_found = || {
        (
            400,
            json!({"__type": "com.amazonaws.dynamodb.v20120810#ResourceNotFoundException",
                   "message": format!("Requested resource not found: Table: {name} not found")}),
        )
    };
    match seen.op.as_str() {
        "CreateTable" => {
            if state.tables.contains_key(&at) {
                return (
                    400,
                    json!({"__type": "com.amazonaws.dynamodb.v20120810#ResourceInUseException",
                           "message": "Table already exists"}),
                );
            }
            state.tables.insert(
                at,
                Table {
                    creating: 2,
                    ..Table::default()
                },
            );
            (
                200,
                json!({"TableDescription": {"TableName": name, "TableStatus": "CREATING"}}),
            )
        }
        "DescribeTable" => {
            let Some(t) = state.tables.get_mut(&at) else {
                return not_found();
            };
            let status = if t.creating > 0 {
                t.creating -= 1;
                "CREATING"
            } else {
                "ACTIVE"
            };
            let replicas: Vec<Value> = t
                .replicas
                .iter_mut()
                .map(|(r, left)| {
                    let s = if *left > 0 {
                        *left -= 1;
                        "CREATING"
                    } else {
                        "ACTIVE"
                    };
                    json!({"RegionName": r, "ReplicaStatus": s})
                })
                .collect();
            let mut table = json!({"TableName": name, "TableStatus": status, "Replicas": replicas});
            if let Some(c) = &t.consistency {
                table["MultiRegionConsistency"] = json!(c);
            }
            (200, json!({ "Table": table }))
        }
        "UpdateTable" => {
            let Some(t) = state.tables.get_mut(&at) else {
                return not_found();
            };
            for u in seen.body["ReplicaUpdates"].as_array().into_iter().flatten() {
                let r = u["Create"]["RegionName"].as_str().unwrap().to_owned();
                t.replicas.push((r, 2));
            }
            if let Some(c) = seen.body["MultiRegionConsistency"].as_str() {
                t.consistency = Some(c.to_owned());
            }
            (
                200,
                json!({"TableDescription": {"TableName": name, "TableStatus": "UPDATING"}}),
            )
        }
        "UpdateTimeToLive" => (
            200,
            json!({"TimeToLiveSpecification": seen.body["TimeToLiveSpecification"].clone()}),
        ),
        other => (
            400,
            json!({"__type": "com.amazonaws.dynamodb.v20120810#UnknownOperationException",
                   "message": format!("{other} is not answered here")}),
        ),
    }
}

/// Serves one connection's requests (HTTP/1.1, kept alive).
async fn serve(mut socket: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Value =
            serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
        buf.drain(..head_end + length);
        let op = header("x-amz-target")
            .and_then(|t| t.split('.').nth(1).map(str::to_owned))
            .unwrap_or_default();
        // Credential=<key>/<date>/<region>/dynamodb/aws4_request
        let region = header("authorization")
            .and_then(|a| a.split("Credential=").nth(1).map(str::to_owned))
            .and_then(|c| c.split('/').nth(2).map(str::to_owned))
            .unwrap_or_default();
        let seen = Seen { op, region, body };
        let (status, reply) = {
            let mut s = state.lock().unwrap();
            let reply = answer(&mut s, &seen);
            s.seen.push(seen);
            reply
        };
        let reply = reply.to_string();
        let response = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: {}\r\n\r\n{reply}",
            if status == 200 { "OK" } else { "Bad Request" },
            reply.len()
        );
        if socket.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn server() -> (String, Arc<Mutex<State>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(Mutex::new(State::default()));
    let s = state.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket, s.clone()));
        }
    });
    (endpoint, state)
}

fn config(endpoint: &str, regions: &[(&str, &str)], mode: Mode) -> DynamoConfig {
    let clients = regions
        .iter()
        .map(|(name, aws)| RegionClient {
            region: Region::new(name).unwrap(),
            client: aws_sdk_dynamodb::Client::from_conf(
                aws_sdk_dynamodb::Config::builder()
                    .behavior_version(BehaviorVersion::latest())
                    .region(aws_sdk_dynamodb::config::Region::new(aws.to_string()))
                    .endpoint_url(endpoint)
                    .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                        "k", "s", None, None, "static",
                    ))
                    .build(),
            ),
        })
        .collect();
    let mut c = DynamoConfig::new("global", "orders", clients, regions[0].0).unwrap();
    c.mode = mode;
    c
}

fn ops(state: &Arc<Mutex<State>>, op: &str) -> Vec<Seen> {
    state
        .lock()
        .unwrap()
        .seen
        .iter()
        .filter(|s| s.op == op)
        .cloned()
        .collect()
}

#[tokio::test]
async fn create_tables_makes_global_tables_with_a_replica_per_region() {
    let (endpoint, state) = server().await;
    let regions = [
        ("eu", "eu-west-1"),
        ("us", "us-east-1"),
        ("ap", "ap-south-1"),
    ];
    let backend = DynamoBackend::new(config(&endpoint, &regions, Mode::Eventual)).unwrap();
    backend
        .create_tables()
        .await
        .expect("create the global tables");

    let created = ops(&state, "CreateTable");
    assert_eq!(created.len(), 2, "{created:?}");
    for c in &created {
        assert_eq!(c.region, "eu-west-1", "created in the first region only");
        assert_eq!(c.body["StreamSpecification"]["StreamEnabled"], json!(true));
        assert_eq!(
            c.body["StreamSpecification"]["StreamViewType"],
            json!("NEW_AND_OLD_IMAGES")
        );
    }
    let updates = ops(&state, "UpdateTable");
    let mut replicas: Vec<(String, String)> = updates
        .iter()
        .map(|u| {
            assert_eq!(u.region, "eu-west-1");
            let creates = u.body["ReplicaUpdates"].as_array().unwrap();
            assert_eq!(creates.len(), 1, "MREC adds one replica per call");
            assert!(u.body.get("MultiRegionConsistency").is_none());
            (
                u.body["TableName"].as_str().unwrap().to_owned(),
                creates[0]["Create"]["RegionName"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    replicas.sort();
    assert_eq!(
        replicas,
        [
            ("orders", "ap-south-1"),
            ("orders", "us-east-1"),
            ("orders-idempotency", "ap-south-1"),
            ("orders-idempotency", "us-east-1"),
        ]
        .map(|(t, r)| (t.to_owned(), r.to_owned()))
    );
    let ttl = ops(&state, "UpdateTimeToLive");
    assert_eq!(ttl.len(), 1, "TTL is set once, on the global table");
    assert_eq!(ttl[0].body["TableName"], json!("orders-idempotency"));
    assert_eq!(
        ttl[0].body["TimeToLiveSpecification"]["AttributeName"],
        json!("expires_at")
    );
    // Each replica was waited out: the last describe of each table saw it
    // ACTIVE (the fake reports CREATING twice first).
    assert!(ops(&state, "DescribeTable").len() >= 2 * (1 + 2 + 2 * 2));

    // Again: everything exists, nothing is added.
    backend.create_tables().await.expect("a second call");
    assert_eq!(
        ops(&state, "UpdateTable").len(),
        4,
        "no replica added twice"
    );
}

#[tokio::test]
async fn create_tables_makes_mrsc_tables_in_one_call_without_ttl() {
    let (endpoint, state) = server().await;
    let regions = [
        ("eu", "eu-west-1"),
        ("us", "us-east-1"),
        ("ap", "ap-south-1"),
    ];
    let backend = DynamoBackend::new(config(&endpoint, &regions, Mode::Strong)).unwrap();
    backend
        .create_tables()
        .await
        .expect("create the MRSC tables");
    let updates = ops(&state, "UpdateTable");
    assert_eq!(updates.len(), 2, "one call per table: {updates:?}");
    for u in &updates {
        assert_eq!(u.body["MultiRegionConsistency"], json!("STRONG"));
        let regions: Vec<&str> = u.body["ReplicaUpdates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["Create"]["RegionName"].as_str().unwrap())
            .collect();
        assert_eq!(regions, ["us-east-1", "ap-south-1"]);
    }
    assert!(
        ops(&state, "UpdateTimeToLive").is_empty(),
        "MRSC refuses TTL"
    );
}

#[tokio::test]
async fn tables_of_one_backend_must_share_a_consistency_mode() {
    let (endpoint, state) = server().await;
    let regions = [("eu", "eu-west-1"), ("us", "us-east-1")];
    {
        let mut s = state.lock().unwrap();
        for (_, aws) in regions {
            for (table, mode) in [("orders", "STRONG"), ("orders-idempotency", "EVENTUAL")] {
                s.tables.insert(
                    (aws.to_owned(), table.to_owned()),
                    Table {
                        consistency: Some(mode.to_owned()),
                        ..Table::default()
                    },
                );
            }
        }
    }
    let err = DynamoBackend::connect(config(&endpoint, &regions, Mode::Eventual))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("orders-idempotency")
            && err
                .to_string()
                .contains("one multi-Region consistency mode"),
        "{err}"
    );
    // Both strong: the backend takes the tables' mode over its own.
    state
        .lock()
        .unwrap()
        .tables
        .values_mut()
        .for_each(|t| t.consistency = Some("STRONG".into()));
    let backend = DynamoBackend::connect(config(&endpoint, &regions, Mode::Eventual))
        .await
        .unwrap();
    assert_eq!(backend.mode(), Mode::Strong);
}
