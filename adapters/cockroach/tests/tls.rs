//! TLS to real PostgreSQL servers: `scripts/pg` gives every server a
//! certificate for 127.0.0.1 and localhost, signed by a certificate
//! authority of its own (`QUORATE_PG_CA`).

mod common;

use std::sync::Arc;

use quorate_cockroach::{
    Client, ClientConfig, Dialect, Endpoint, Error, PgBackend, PgConfig, Precondition, ReadPolicy,
    Region, Role, WriteOptions,
};

fn ca() -> Option<String> {
    quorate_cockroach::conformance::server_env(
        ["QUORATE_PG_CA"],
        "the PostgreSQL servers' certificate authority",
        "scripts/pg",
    )
    .map(|[ca]| ca)
}

/// The servers' endpoints with `tls` added to each connection string.
fn endpoints(s: &[String; 3], tls: &str) -> Vec<Endpoint> {
    let roles = [
        ("eu", Role::Primary),
        ("us", Role::Standby),
        ("ap", Role::Standby),
    ];
    s.iter()
        .zip(roles)
        .map(|(connection, (region, role))| Endpoint {
            region: Region::new(region).unwrap(),
            role,
            connection: format!("{connection} {tls}"),
        })
        .collect()
}

async fn encrypted(backend: &PgBackend, region: &str, policy: ReadPolicy) -> bool {
    use quorate_cockroach::SqlQuery;
    let client = Client::new(backend.clone(), ClientConfig::default()).unwrap();
    let session = client.session();
    let _ = region;
    let q = client
        .sql_query(
            &session,
            policy,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    q.rows[0].get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_reaches_primary_and_standbys_encrypted() {
    let Some(s) = common::servers() else { return };
    let Some(ca) = ca() else { return };
    common::backend(&s, "us").await;
    let config = PgConfig::new(
        "pg-test-cluster",
        Dialect::Postgres,
        endpoints(&s, &format!("sslmode=verify-full sslrootcert={ca}")),
        "us",
    )
    .unwrap();
    let backend = PgBackend::new(config).unwrap();
    // The primary (strong) and the local standby (bounded), both over TLS.
    assert!(encrypted(&backend, "eu", ReadPolicy::Strong).await);
    assert!(
        encrypted(
            &backend,
            "us",
            ReadPolicy::BoundedStaleness(
                quorate_cockroach::Staleness::new(std::time::Duration::from_secs(60)).unwrap()
            )
        )
        .await
    );
    // Writes and their idempotency work as without TLS.
    let client = Client::new(backend, ClientConfig::default()).unwrap();
    let session = client.session();
    let key = common::key("tls");
    let c = client
        .write(
            &session,
            &key,
            "1".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let r = client
        .read(&session, &key, ReadPolicy::Session)
        .await
        .unwrap();
    assert_eq!(r.version(), Some(c.version));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_form_and_an_own_rustls_configuration_connect() {
    let Some(s) = common::servers() else { return };
    let Some(ca) = ca() else { return };
    common::backend(&s, "us").await;
    // postgres://…?sslmode=verify-ca&sslrootcert=… (the path percent-encoded)
    let port = |c: &str| {
        c.split_whitespace()
            .find_map(|kv| kv.strip_prefix("port="))
            .unwrap()
            .to_owned()
    };
    let encoded: String = ca.replace('/', "%2F");
    let url = format!(
        "postgresql://postgres@localhost:{}/postgres?sslmode=verify-ca&sslrootcert={encoded}",
        port(&s[0])
    );
    let config = PgConfig::new(
        "pg-test-cluster",
        Dialect::Postgres,
        vec![Endpoint {
            region: Region::new("eu").unwrap(),
            role: Role::Primary,
            connection: url,
        }],
        "eu",
    )
    .unwrap();
    assert!(encrypted(&PgBackend::new(config).unwrap(), "eu", ReadPolicy::Strong).await);

    // The application's own rustls configuration: its roots.
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&ca).unwrap();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let own = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut config = PgConfig::new(
        "pg-test-cluster",
        Dialect::Postgres,
        endpoints(&s, "sslmode=require"),
        "eu",
    )
    .unwrap();
    config.tls = Some(Arc::new(own));
    assert!(encrypted(&PgBackend::new(config).unwrap(), "eu", ReadPolicy::Strong).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_settings_and_untrusted_servers_are_typed_errors() {
    let Some(s) = common::servers() else { return };
    let Some(_ca) = ca() else { return };
    // An unknown sslmode, a missing root file: refused when the backend is
    // built, naming what to fix, never the password.
    for (tls, names) in [
        ("sslmode=verify password=hunter2", "sslmode"),
        (
            "sslmode=verify-full sslrootcert=/no/such/ca.pem password=hunter2",
            "/no/such/ca.pem",
        ),
    ] {
        let config = PgConfig::new(
            "pg-test-cluster",
            Dialect::Postgres,
            endpoints(&s, tls),
            "us",
        )
        .unwrap();
        let Err(e) = PgBackend::new(config) else {
            panic!("{tls}: accepted");
        };
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        assert!(e.to_string().contains(names), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
    // A server whose certificate no trusted root signed: the system's
    // roots do not know the test CA. The handshake fails with an error
    // that says so, and nothing is written.
    let dir = std::env::temp_dir().join(format!("quorate-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let other = dir.join("other-ca.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=another CA", "-keyout"])
        .arg(dir.join("other-ca.key"))
        .arg("-out")
        .arg(&other)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let config = PgConfig::new(
        "pg-test-cluster",
        Dialect::Postgres,
        endpoints(
            &s,
            &format!("sslmode=verify-full sslrootcert={}", other.display()),
        ),
        "us",
    )
    .unwrap();
    let client = Client::new(PgBackend::new(config).unwrap(), ClientConfig::default()).unwrap();
    let session = client.session();
    let e = client
        .write(
            &session,
            &common::key("tls-untrusted"),
            "1".into(),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .unwrap_err();
    let text = format!("{e} {:?}", std::error::Error::source(&e));
    assert!(
        text.contains("certificate") || text.contains("TLS"),
        "the error does not say the certificate was refused: {e:?}"
    );
    // Permanent at once (no retries until the deadline), code `tls`.
    assert_eq!(e.code(), Some("tls"), "{}", e.report());
    assert_eq!(
        e.retryability(),
        quorate_cockroach::Retryability::Permanent,
        "{}",
        e.report()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_logins_are_bound_to_the_tls_session() {
    let Some(s) = common::servers() else { return };
    let Some(ca) = ca() else { return };
    // scripts/pg's password user, which may log in over TLS only, with
    // SCRAM; channel_binding=require fails unless the client binds the
    // login to the server's certificate and the server accepts it.
    let port = s[0]
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .unwrap()
        .to_owned();
    let connection = format!(
        "host=127.0.0.1 port={port} user=quorate_scram password=quorate-scram dbname=postgres \
         sslmode=verify-full sslrootcert={ca} channel_binding=require"
    );
    let config = PgConfig::new(
        "pg-test-cluster",
        Dialect::Postgres,
        vec![Endpoint {
            region: Region::new("eu").unwrap(),
            role: Role::Primary,
            connection,
        }],
        "eu",
    )
    .unwrap();
    let backend = PgBackend::new(config).unwrap();
    assert!(encrypted(&backend, "eu", ReadPolicy::Strong).await);
    let e = format!("{:?}", backend);
    assert!(!e.contains("quorate-scram"), "the password shows: {e}");
}
