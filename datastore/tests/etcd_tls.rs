//! The etcd backend's TLS options reach etcd: with the CA and a client certificate it works,
//! without a client certificate etcd refuses it, and bad TLS settings are named clearly.

use std::path::Path;

use brindle_datastore::testing::{EtcdServer, ServerTls};
use brindle_datastore::{EtcdConfig, EtcdStore, EtcdTls, Store, StoreError, Txn};
use futures_util::StreamExt;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

/// Writes a CA, a server certificate for 127.0.0.1 and a client certificate into `dir`.
fn write_certificates(dir: &Path) -> (ServerTls, EtcdTls) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca_params, ca_key);

    let issue = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, stem: &str| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).expect("sign");
        let (cert_path, key_path) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    };
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, ca_cert.pem()).expect("write CA");
    let (server_cert, server_key) = issue(
        vec!["127.0.0.1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "server",
    );
    let (client_cert, client_key) = issue(
        vec!["brindle-test".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
        "client",
    );
    (
        ServerTls {
            ca: ca.clone(),
            cert: server_cert,
            key: server_key,
        },
        EtcdTls {
            ca: Some(ca),
            cert: Some(client_cert),
            key: Some(client_key),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_authentication_works_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_tls, client_tls) = write_certificates(dir.path());
    let etcd = EtcdServer::start_tls(server_tls, client_tls.clone())
        .await
        .expect("start etcd with TLS");
    assert!(etcd.endpoint().starts_with("https://"));

    let store = EtcdStore::connect(&etcd.config())
        .await
        .expect("connect with client cert");
    let start = store.revision().await.expect("revision");
    let mut watch = store.watch("/tls/", start);
    let written = store
        .txn(Txn::new().put("/tls/key", "secret"))
        .await
        .expect("put over TLS");
    assert_eq!(
        store.get("/tls/key").await.expect("get").expect("key").value,
        b"secret"
    );
    let batch = watch.next().await.expect("event").expect("batch");
    assert_eq!(batch.revision, written);

    // The CA alone (no client certificate): etcd refuses the connection.
    let mut without_cert = etcd.config();
    without_cert.tls = Some(EtcdTls {
        ca: client_tls.ca.clone(),
        cert: None,
        key: None,
    });
    let refused = match EtcdStore::connect(&without_cert).await {
        Ok(store) => store.revision().await.map(drop),
        Err(error) => Err(error),
    };
    assert!(
        refused.is_err(),
        "etcd must refuse a client without a certificate"
    );
}

#[tokio::test]
async fn bad_tls_settings_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, client_tls) = write_certificates(dir.path());
    let mut config = EtcdConfig::new(vec!["https://127.0.0.1:1".into()]);
    config.tls = Some(EtcdTls {
        cert: None,
        ..client_tls.clone()
    });
    let error = EtcdStore::connect(&config)
        .await
        .err()
        .expect("certificate without key refused");
    assert!(
        matches!(&error, StoreError::InvalidRequest(m) if m.contains("certificate and key")),
        "{error}"
    );

    config.tls = Some(EtcdTls {
        ca: Some(dir.path().join("missing-ca.crt")),
        ..client_tls
    });
    let error = EtcdStore::connect(&config)
        .await
        .err()
        .expect("missing CA refused");
    assert!(
        matches!(&error, StoreError::InvalidRequest(m) if m.contains("missing-ca.crt")),
        "{error}"
    );

    let error = EtcdStore::connect(&EtcdConfig::new(Vec::new()))
        .await
        .err()
        .expect("no endpoints refused");
    assert!(error.to_string().contains("no etcd endpoints"), "{error}");
}
