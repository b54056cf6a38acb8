//! The XEP-0114 stream against a server we control byte for byte.
//!
//! Prosody cannot be told to send a malformed stanza, stay silent on cue, or drop the socket
//! mid-stream, so this test plays the server's side of the component protocol on a raw socket
//! and drives pushgate's real stream, router and store (SQLite in a temp dir).

use std::sync::Arc;
use std::time::Duration;

use pushgate::config::Config;
use pushgate::gateway::Gateway;
use pushgate::storage::Store;
use pushgate::stream::{self, StreamConfig};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;

const SECRET: &str = "component-secret";
const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    listener: TcpListener,
    stop: watch::Sender<bool>,
    connected: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start(idle_ping: Duration) -> Harness {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_str(
        "[component]\njid = \"push.test\"\nsecret = \"component-secret\"\n\
         [providers.webpush]\nkind = \"webpush\"\nallow_http = true\nallow_private_addresses = true\n\
         [providers.up]\nkind = \"webpush\"\n",
    )
    .unwrap();
    let store = Store::open(&Store::sqlite_url_in(dir.path()).unwrap())
        .await
        .unwrap();
    let (gw, outbox): (Arc<Gateway>, _) = Gateway::new(&config, store).unwrap();
    let cfg = StreamConfig {
        jid: "push.test".parse().unwrap(),
        secret: SECRET.into(),
        server: listener.local_addr().unwrap().to_string(),
        max_reconnect_delay: Duration::from_secs(2),
        idle_ping,
    };
    let (stop, stop_rx) = watch::channel(false);
    let (connected_tx, connected) = watch::channel(false);
    let task = tokio::spawn(stream::run(gw, cfg, outbox, stop_rx, connected_tx));
    Harness {
        listener,
        stop,
        connected,
        task,
        _dir: dir,
    }
}

/// One accepted component connection, read as text.
struct Conn {
    socket: TcpStream,
    buf: String,
}

impl Conn {
    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = timeout(WAIT, self.socket.read(&mut chunk))
            .await
            .expect("pushgate went silent")
            .unwrap();
        assert!(
            n > 0,
            "pushgate closed the connection; got so far: {}",
            self.buf
        );
        self.buf.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
    }

    async fn send(&mut self, xml: &str) {
        self.socket.write_all(xml.as_bytes()).await.unwrap();
    }

    /// Waits for the `<iq>` whose opening tag contains `marker` and returns it whole.
    async fn iq_with(&mut self, marker: &str) -> String {
        loop {
            if let Some(at) = self.buf.find(marker) {
                let start = self.buf[..at].rfind("<iq").expect("marker outside an iq");
                let open_end = start + self.buf[start..].find('>').unwrap_or(usize::MAX - start);
                if open_end < self.buf.len() {
                    let end = if self.buf[..open_end].ends_with('/') {
                        Some(open_end + 1)
                    } else {
                        self.buf[open_end..].find("</iq>").map(|i| open_end + i + 5)
                    };
                    if let Some(end) = end {
                        let iq = self.buf[start..end].to_owned();
                        self.buf.replace_range(start..end, "");
                        return iq;
                    }
                }
            }
            self.fill().await;
        }
    }
}

/// Accepts pushgate's connection and performs the server side of the XEP-0114 handshake,
/// checking the digest: SHA-1 of stream id + secret, lower-case hex.
async fn accept(listener: &TcpListener) -> Conn {
    let (socket, _) = timeout(WAIT, listener.accept())
        .await
        .expect("pushgate did not connect")
        .unwrap();
    let mut c = Conn {
        socket,
        buf: String::new(),
    };
    while !(c.buf.contains("<stream:stream") && c.buf.trim_end().ends_with('>')) {
        c.fill().await;
    }
    assert!(
        c.buf.contains("jabber:component:accept"),
        "header: {}",
        c.buf
    );
    assert!(c.buf.contains("push.test"), "header: {}", c.buf);
    c.buf.clear();
    c.send(
        "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
            xmlns='jabber:component:accept' id='sid-42' from='push.test'>",
    )
    .await;
    while !c.buf.contains("</handshake>") {
        c.fill().await;
    }
    let digest: String = Sha1::digest(format!("sid-42{SECRET}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        c.buf.contains(&format!("<handshake>{digest}</handshake>")),
        "handshake: {}",
        c.buf
    );
    c.buf.clear();
    c.send("<handshake/>").await;
    c
}

async fn wait_connected(h: &mut Harness, want: bool) {
    timeout(WAIT, h.connected.wait_for(|c| *c == want))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn answers_disco_ping_and_unknown_requests() {
    let mut h = start(Duration::from_secs(60)).await;
    let mut c = accept(&h.listener).await;
    wait_connected(&mut h, true).await;

    c.send(
        "<iq type='get' id='d1' from='user@example.org/phone' to='push.test'>\
            <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
    )
    .await;
    let info = c.iq_with("id='d1'").await;
    assert!(info.contains("type='result'"), "{info}");
    assert!(
        info.contains("category='pubsub'") && info.contains("type='push'"),
        "{info}"
    );
    for feature in [
        "urn:xmpp:push:0",
        "http://jabber.org/protocol/commands",
        "jabber:x:data",
        "var='webpush'",
        "var='up'",
    ] {
        assert!(info.contains(feature), "missing {feature}: {info}");
    }

    c.send("<iq type='get' id='d2' from='user@example.org/phone' to='push.test'>\
            <query xmlns='http://jabber.org/protocol/disco#items' node='http://jabber.org/protocol/commands'/></iq>").await;
    let items = c.iq_with("id='d2'").await;
    for node in [
        "register-device",
        "unregister-device",
        "register-push-webpush",
        "unregister-push-up",
    ] {
        assert!(
            items.contains(&format!("node='{node}'")),
            "missing {node}: {items}"
        );
    }

    c.send("<iq type='get' id='p1' from='example.org' to='push.test'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let pong = c.iq_with("id='p1'").await;
    assert!(
        pong.contains("type='result'") && pong.contains("to='example.org'"),
        "{pong}"
    );

    c.send("<iq type='get' id='u1' from='example.org' to='push.test'><query xmlns='jabber:iq:version'/></iq>").await;
    let unknown = c.iq_with("id='u1'").await;
    assert!(
        unknown.contains("type='error'") && unknown.contains("service-unavailable"),
        "{unknown}"
    );

    h.stop.send(true).unwrap();
    timeout(WAIT, h.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn publish_errors_are_written_in_the_stream_namespace() {
    let mut h = start(Duration::from_secs(60)).await;
    let mut c = accept(&h.listener).await;
    wait_connected(&mut h, true).await;

    c.send(
        "<iq type='set' id='pub1' from='example.org' to='push.test'>\
            <pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='no-such-node'><item>\
            <notification xmlns='urn:xmpp:push:0'/></item></publish></pubsub></iq>",
    )
    .await;
    let reply = c.iq_with("id='pub1'").await;
    assert!(reply.contains("type='error'"), "{reply}");
    assert!(
        reply.contains("<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'"),
        "{reply}"
    );
    assert!(reply.contains("<error type='cancel'"), "{reply}");
    // Prosody cannot read an <error/> in another namespace (xep0357-interop.md §4.4).
    assert!(!reply.contains("jabber:client"), "{reply}");

    // A publish from a user's full JID is not a server's publish.
    c.send(
        "<iq type='set' id='pub2' from='user@example.org/res' to='push.test'>\
            <pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='x'/></pubsub></iq>",
    )
    .await;
    let reply = c.iq_with("id='pub2'").await;
    assert!(
        reply.contains("<forbidden") && reply.contains("type='auth'"),
        "{reply}"
    );
    h.stop.send(true).unwrap();
}

#[tokio::test]
async fn malformed_stanza_is_answered_and_the_stream_survives() {
    let mut h = start(Duration::from_secs(60)).await;
    let mut c = accept(&h.listener).await;
    wait_connected(&mut h, true).await;

    // An IQ get must carry exactly one payload: this one carries none.
    c.send("<iq type='get' id='bad1' from='example.org' to='push.test'/>")
        .await;
    let reply = c.iq_with("id='bad1'").await;
    assert!(
        reply.contains("type='error'") && reply.contains("bad-request"),
        "{reply}"
    );

    // Unparsable sender: nobody to answer, but the stream must stay up.
    c.send("<message from='a@@b' to='push.test'><body>x</body></message>")
        .await;
    c.send("<iq type='get' id='p2' from='example.org' to='push.test'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let pong = c.iq_with("id='p2'").await;
    assert!(pong.contains("type='result'"), "{pong}");
    assert!(
        *h.connected.borrow(),
        "stream dropped after a malformed stanza"
    );
    h.stop.send(true).unwrap();
}

#[tokio::test]
async fn quiet_stream_is_pinged_not_dropped() {
    let mut h = start(Duration::from_secs(1)).await;
    let mut c = accept(&h.listener).await;
    wait_connected(&mut h, true).await;

    let ping = c.iq_with("pushgate-ping-").await;
    assert!(
        ping.contains("type='get'") && ping.contains("urn:xmpp:ping"),
        "{ping}"
    );
    assert!(
        ping.contains("to='test'"),
        "ping goes to the hosting server: {ping}"
    );
    let id_start = ping.find("id='").unwrap() + 4;
    let id = &ping[id_start..id_start + ping[id_start..].find('\'').unwrap()];
    c.send(&format!(
        "<iq type='result' id='{id}' from='test' to='push.test'/>"
    ))
    .await;

    // Still the same connection after several idle periods.
    let second = c.iq_with("pushgate-ping-").await;
    assert_ne!(second, ping);
    assert!(*h.connected.borrow());
    h.stop.send(true).unwrap();
}

#[tokio::test]
async fn reconnects_after_the_server_goes_away() {
    let mut h = start(Duration::from_secs(60)).await;
    let c = accept(&h.listener).await;
    wait_connected(&mut h, true).await;

    drop(c); // the server dies without closing the stream
    wait_connected(&mut h, false).await;
    let mut c = accept(&h.listener).await;
    wait_connected(&mut h, true).await;
    c.send("<iq type='get' id='p3' from='example.org' to='push.test'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert!(c.iq_with("id='p3'").await.contains("type='result'"));

    // A clean close by the server, and a refused handshake, are retried too.
    c.send("</stream:stream>").await;
    wait_connected(&mut h, false).await;
    {
        let (mut socket, _) = timeout(WAIT, h.listener.accept()).await.unwrap().unwrap();
        let mut buf = [0u8; 1024];
        let _ = socket.read(&mut buf).await;
        socket
            .write_all(b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
                xmlns='jabber:component:accept' id='x' from='push.test'><stream:error>\
                <not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>")
            .await
            .unwrap();
    }
    let _c = accept(&h.listener).await;
    wait_connected(&mut h, true).await;
    h.stop.send(true).unwrap();
    timeout(WAIT, h.task).await.unwrap().unwrap();
}

/// Thousands of requests at once, replies read as they come: every request is answered. Guards
/// against the loop waiting for in-flight capacity while replies pile up unsent (a deadlock the
/// benchmark found at 10,000 publishes/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_requests_is_answered_in_full() {
    const N: usize = 6000;
    let mut h = start(Duration::from_secs(60)).await;
    let c = accept(&h.listener).await;
    wait_connected(&mut h, true).await;
    let (mut reader, mut writer) = c.socket.into_split();
    let send = tokio::spawn(async move {
        let mut batch = String::new();
        for i in 0..N {
            if i % 2 == 0 {
                batch.push_str(&format!(
                    "<iq type='set' id='f{i}' from='example.org' to='push.test'>\
                     <pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n{i}'><item>\
                     <notification xmlns='urn:xmpp:push:0'/></item></publish></pubsub></iq>"
                ));
            } else {
                batch.push_str(&format!(
                    "<iq type='get' id='f{i}' from='example.org' to='push.test'><ping xmlns='urn:xmpp:ping'/></iq>"
                ));
            }
            if batch.len() > 64 * 1024 {
                writer.write_all(batch.as_bytes()).await.unwrap();
                batch.clear();
            }
        }
        writer.write_all(batch.as_bytes()).await.unwrap();
        writer
    });
    let mut seen = 0;
    let mut text = String::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while seen < N {
        let n = timeout(Duration::from_secs(60), reader.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("stalled after {seen} of {N} replies"))
            .unwrap();
        assert!(n > 0, "connection closed after {seen} replies");
        text.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
        // Count replies by their complete id attribute (`id='f123'`), then drop what was counted;
        // an id cut by the chunk boundary waits for the next read.
        let mut consumed = 0;
        while let Some(at) = text[consumed..].find("id='f") {
            let start = consumed + at + 5;
            let Some(end) = text[start..].find('\'') else {
                break;
            };
            seen += 1;
            consumed = start + end + 1;
        }
        text.drain(..consumed);
    }
    let _writer = send.await.unwrap();
    h.stop.send(true).unwrap();
}
