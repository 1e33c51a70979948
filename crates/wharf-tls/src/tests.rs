//! Real handshakes (tokio-rustls client and server over an in-memory pipe) against
//! the real store and resolver.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wharf_testkit::tls::AnyCert;

use super::*;

fn client(alpn: &[&[u8]]) -> ClientConfig {
    let p = provider();
    let mut c = ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(p)))
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    c
}

/// (chain PEM, key PEM) of a fresh self-signed ECDSA P-256 certificate.
fn pem_for(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Handshakes with `sni` (an IP literal sends no SNI) and returns the served
/// leaf's names and the negotiated ALPN, or the handshake error.
async fn handshake(
    store: &Arc<CertStore>,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<(Vec<String>, Option<Vec<u8>>), String> {
    handshake_with(store, sni, alpn, false).await
}

/// [`handshake`] against a server with `strict_sni` set as given.
async fn handshake_with(
    store: &Arc<CertStore>,
    sni: &str,
    alpn: &[&[u8]],
    strict_sni: bool,
) -> Result<(Vec<String>, Option<Vec<u8>>), String> {
    let server = tokio_rustls::TlsAcceptor::from(
        crate::server_config_with(store.clone(), true, strict_sni).unwrap(),
    );
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client(alpn)));
    let (a, b) = tokio::io::duplex(64 * 1024);
    let srv = tokio::spawn(async move {
        let mut s = server.accept(b).await.map_err(|e| e.to_string())?;
        s.write_all(b"x").await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    });
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut c = connector
        .connect(name, a)
        .await
        .map_err(|e| e.to_string())?;
    let mut one = [0u8; 1];
    c.read_exact(&mut one).await.map_err(|e| e.to_string())?;
    srv.await.unwrap()?;
    let (_, conn) = c.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].clone();
    Ok((
        names_of(&leaf).unwrap(),
        conn.alpn_protocol().map(|p| p.to_vec()),
    ))
}

fn store_with(certs: &[&[&str]]) -> Arc<CertStore> {
    let store = Arc::new(CertStore::new().unwrap());
    for names in certs {
        let (c, k) = pem_for(names);
        store
            .insert_pem(CertSource::Acme, c.as_bytes(), k.as_bytes())
            .unwrap();
    }
    store
}

#[tokio::test]
async fn sni_picks_exact_then_wildcard_else_default() {
    let store = store_with(&[&["a.example.org"], &["*.example.org"], &["other.test"]]);
    let names = |r: Result<(Vec<String>, _), String>| r.unwrap().0;
    assert_eq!(
        names(handshake(&store, "a.example.org", &[]).await),
        ["a.example.org"]
    );
    assert_eq!(
        names(handshake(&store, "B.Example.org", &[]).await),
        ["*.example.org"]
    );
    // One label only (RFC 6125): neither the bare suffix nor two labels match.
    assert_eq!(
        names(handshake(&store, "example.org", &[]).await),
        ["wharf.invalid"]
    );
    assert_eq!(
        names(handshake(&store, "x.y.example.org", &[]).await),
        ["wharf.invalid"]
    );
    assert_eq!(
        names(handshake(&store, "unknown.test", &[]).await),
        ["wharf.invalid"]
    );
    // An IP address as server name: no SNI extension is sent.
    assert_eq!(
        names(handshake(&store, "127.0.0.1", &[]).await),
        ["wharf.invalid"]
    );
    assert!(store.covers("z.example.org"));
    assert!(!store.covers("example.org"));
}

#[tokio::test]
async fn alpn_h2_and_http11_are_negotiated() {
    let store = store_with(&[&["a.test"]]);
    let (_, p) = handshake(&store, "a.test", &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(p.as_deref(), Some(&b"h2"[..]));
    let (_, p) = handshake(&store, "a.test", &[b"http/1.1"]).await.unwrap();
    assert_eq!(p.as_deref(), Some(&b"http/1.1"[..]));
    let cfg = server_config(store.clone(), false).unwrap();
    assert_eq!(
        cfg.alpn_protocols,
        [b"http/1.1".to_vec(), b"acme-tls/1".to_vec()]
    );
}

#[tokio::test]
async fn tls_alpn_01_challenge_only_for_exactly_acme_tls_1() {
    let store = store_with(&[&["a.test"]]);
    // Without a challenge set, an acme-tls/1 handshake is refused.
    assert!(handshake(&store, "a.test", &[b"acme-tls/1"]).await.is_err());
    let (c, k) = pem_for(&["a.test", "challenge.invalid"]);
    let key = certified_key_from_pem(c.as_bytes(), k.as_bytes(), "challenge").unwrap();
    store.set_alpn_challenge("A.test", Some(key));
    let (names, p) = handshake(&store, "a.test", &[b"acme-tls/1"]).await.unwrap();
    assert_eq!(names, ["a.test", "challenge.invalid"]);
    assert_eq!(p.as_deref(), Some(&b"acme-tls/1"[..]));
    // Ordinary clients still get the real certificate.
    let (names, _) = handshake(&store, "a.test", &[b"h2"]).await.unwrap();
    assert_eq!(names, ["a.test"]);
    store.set_alpn_challenge("a.test", None);
    assert!(handshake(&store, "a.test", &[b"acme-tls/1"]).await.is_err());
}

#[tokio::test]
async fn self_signed_placeholders_give_way_to_issued_certificates() {
    let store = store_with(&[&["have.test"]]);
    let made = store
        .ensure_self_signed(&["have.test".into(), "new.test".into(), "*.wild.test".into()])
        .unwrap();
    assert_eq!(made, ["new.test", "*.wild.test"]);
    // Idempotent.
    assert!(store
        .ensure_self_signed(&["new.test".into()])
        .unwrap()
        .is_empty());
    // A name that cannot be in a certificate: an error, the others still get one.
    let e = store
        .ensure_self_signed(&["bücher.test".into(), "third.test".into()])
        .unwrap_err();
    assert!(e.to_string().contains("bücher.test"), "{e}");
    assert!(store.covers("third.test"));
    let info = store.lookup("new.test").unwrap();
    assert_eq!(info.source, CertSource::SelfSigned);
    assert_eq!(info.state, CertState::Pending);
    assert_eq!(
        handshake(&store, "new.test", &[]).await.unwrap().0,
        ["new.test"]
    );
    let (c, k) = pem_for(&["new.test"]);
    store
        .insert_pem(CertSource::Acme, c.as_bytes(), k.as_bytes())
        .unwrap();
    assert_eq!(store.lookup("new.test").unwrap().source, CertSource::Acme);
    let list = store.certificates();
    assert_eq!(list[0].source, CertSource::Default);
    assert_eq!(
        list.iter().filter(|c| c.names == ["new.test"]).count(),
        1,
        "the placeholder is dropped: {list:?}"
    );
    // Renewal of the same names replaces, not adds.
    let (c, k) = pem_for(&["new.test"]);
    let renewed = store
        .insert_pem(CertSource::Acme, c.as_bytes(), k.as_bytes())
        .unwrap();
    assert_eq!(store.lookup("new.test").unwrap().id, renewed.id);
    assert!(store.set_state(renewed.id, CertState::Failed("rate limited".into())));
    assert_eq!(
        store.lookup("new.test").unwrap().state,
        CertState::Failed("rate limited".into())
    );
    assert!(store.remove(renewed.id));
    assert!(!store.covers("new.test"));
}

#[test]
fn bad_input_is_a_clear_error() {
    let store = CertStore::new().unwrap();
    let (c, _) = pem_for(&["a.test"]);
    let (_, other_key) = pem_for(&["a.test"]);
    let e = store
        .insert_pem(CertSource::Acme, c.as_bytes(), other_key.as_bytes())
        .unwrap_err();
    assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
    let e = store
        .insert_pem(CertSource::Acme, b"garbage", other_key.as_bytes())
        .unwrap_err();
    assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
    let e = store
        .insert_pem(CertSource::Acme, c.as_bytes(), b"no key here")
        .unwrap_err();
    assert!(matches!(e, TlsError::NoKey { .. }), "{e}");
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn file_certificates_replace_and_keep_the_last_good_one() {
    let dir = Dir(std::env::temp_dir().join(format!("wharf-tls-unit-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let write = |name: &str, names: &[&str]| {
        let (c, k) = pem_for(names);
        let (cp, kp) = (
            dir.0.join(format!("{name}.pem")),
            dir.0.join(format!("{name}.key")),
        );
        std::fs::write(&cp, c).unwrap();
        std::fs::write(&kp, k).unwrap();
        (cp, kp)
    };
    let store = CertStore::new().unwrap();
    let a = write("a", &["a.test"]);
    let b = write("b", &["b.test"]);
    assert!(store.replace_files(vec![a.clone(), b.clone()]).is_empty());
    assert!(store.covers("a.test") && store.covers("b.test"));
    let old_a = store.lookup("a.test").unwrap();

    // a is broken now: the old a keeps serving; b is dropped from the list.
    std::fs::write(&a.0, "not a certificate").unwrap();
    let errs = store.replace_files(vec![a.clone()]);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].to_string().contains("a.pem"), "{}", errs[0]);
    assert_eq!(store.lookup("a.test").unwrap().id, old_a.id);
    assert!(!store.covers("b.test"));

    // A missing file names the path.
    let errs = check_files(&[(dir.0.join("nope.pem"), a.1.clone())]);
    assert!(errs[0].to_string().contains("nope.pem"), "{}", errs[0]);

    // Fixed: replaced by the new certificate.
    let a2 = write("a", &["a.test", "www.a.test"]);
    assert!(store.replace_files(vec![a2]).is_empty());
    let now = store.lookup("a.test").unwrap();
    assert_ne!(now.id, old_a.id);
    assert!(store.covers("www.a.test"));
    assert!(matches!(now.source, CertSource::File { .. }));
}

#[tokio::test]
async fn the_first_file_certificate_is_the_default() {
    let dir = Dir(std::env::temp_dir().join(format!("wharf-tls-default-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let pair = |name: &str| {
        let (c, k) = pem_for(&[name]);
        let (cp, kp) = (
            dir.0.join(format!("{name}.pem")),
            dir.0.join(format!("{name}.key")),
        );
        std::fs::write(&cp, c).unwrap();
        std::fs::write(&kp, k).unwrap();
        (cp, kp)
    };
    let store = Arc::new(CertStore::new().unwrap());
    assert_eq!(store.certificates()[0].source, CertSource::Default);
    assert!(store
        .replace_files(vec![pair("first.test"), pair("second.test")])
        .is_empty());
    assert_eq!(
        handshake(&store, "unknown.test", &[]).await.unwrap().0,
        ["first.test"]
    );
    assert_eq!(
        handshake(&store, "127.0.0.1", &[]).await.unwrap().0,
        ["first.test"]
    );
    assert_eq!(
        handshake(&store, "second.test", &[]).await.unwrap().0,
        ["second.test"]
    );
    assert!(store
        .certificates()
        .iter()
        .all(|c| c.source != CertSource::Default));
    // No files any more: the generated default again.
    assert!(store.replace_files(Vec::new()).is_empty());
    assert_eq!(
        handshake(&store, "unknown.test", &[]).await.unwrap().0,
        ["wharf.invalid"]
    );
}

/// A TLS 1.1-only ClientHello (no supported_versions extension) is refused with
/// an alert, never answered with a ServerHello.
#[tokio::test]
async fn tls_1_1_is_refused() {
    let store = store_with(&[&["a.test"]]);
    let server = tokio_rustls::TlsAcceptor::from(server_config(store, true).unwrap());
    let (mut a, b) = tokio::io::duplex(64 * 1024);
    let srv = tokio::spawn(async move { server.accept(b).await.is_ok() });
    // ClientHello body: version 3.2, random, empty session id, two suites
    // (ECDHE-RSA-AES128-SHA, AES128-SHA), null compression, no extensions.
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7u8; 32]);
    body.extend_from_slice(&[0x00, 0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f, 0x01, 0x00]);
    let mut hs = vec![0x01, 0x00, 0x00, u8::try_from(body.len()).unwrap()];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x02, 0x00, u8::try_from(hs.len()).unwrap()];
    rec.extend_from_slice(&hs);
    a.write_all(&rec).await.unwrap();
    let mut head = [0u8; 7];
    a.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 0x15, "an alert record, not a handshake: {head:?}");
    // Fatal; rustls answers handshake_failure (40) or protocol_version (70).
    assert_eq!(head[5], 2, "a fatal alert: {head:?}");
    assert!([40, 70].contains(&head[6]), "{head:?}");
    assert!(!srv.await.unwrap());
}

/// Session resumption: a second connection with the client's stored session (a
/// ticket, TLS 1.3 and 1.2) resumes instead of a full handshake.
#[tokio::test]
async fn sessions_resume_with_tickets() {
    let store = store_with(&[&["a.test"]]);
    let server = tokio_rustls::TlsAcceptor::from(server_config(store, true).unwrap());
    for versions in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let p = provider();
        let client = ClientConfig::builder_with_provider(p.clone())
            .with_protocol_versions(&[versions])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(p)))
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let server = server.clone();
            let srv = tokio::spawn(async move {
                let mut s = server.accept(b).await.unwrap();
                // TLS 1.3 tickets are sent after the handshake: write some data so
                // the client reads them.
                s.write_all(b"x").await.unwrap();
                s.flush().await.unwrap();
                let mut end = [0u8; 1];
                let _ = s.read(&mut end).await;
            });
            let name = ServerName::try_from("a.test").unwrap();
            let mut c = connector.connect(name, a).await.unwrap();
            let mut one = [0u8; 1];
            c.read_exact(&mut one).await.unwrap();
            kinds.push(c.get_ref().1.handshake_kind());
            c.shutdown().await.unwrap();
            drop(c);
            srv.await.unwrap();
        }
        assert_eq!(
            kinds,
            [
                Some(rustls::HandshakeKind::Full),
                Some(rustls::HandshakeKind::Resumed)
            ],
            "{versions:?}"
        );
    }
}

#[tokio::test]
async fn strict_sni_refuses_no_name_and_unknown_names() {
    let store = store_with(&[&["a.example"], &["*.w.example"]]);
    // Default behaviour: no SNI and unknown names get the default certificate.
    assert!(handshake(&store, "127.0.0.1", &[]).await.is_ok());
    assert!(handshake(&store, "b.example", &[]).await.is_ok());
    // Strict: only names a certificate covers.
    let ok = handshake_with(&store, "a.example", &[], true)
        .await
        .unwrap();
    assert_eq!(ok.0, ["a.example"]);
    assert!(handshake_with(&store, "x.w.example", &[], true)
        .await
        .is_ok());
    assert!(handshake_with(&store, "b.example", &[], true)
        .await
        .is_err());
    assert!(handshake_with(&store, "127.0.0.1", &[], true)
        .await
        .is_err());
}
