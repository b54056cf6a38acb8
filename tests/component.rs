//! The XEP-0114 stream against a server we control byte for byte.
//!
//! Prosody cannot be told to send a malformed stanza, stay silent on cue, or drop the socket
//! mid-stream, so this test plays the server's side of the component protocol on a raw socket
//! and drives pushgate's real stream, router and store (SQLite in a temp dir).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{PushEndpoint, TestGateway, requester};
use pushgate::fronts::xmpp::stream::{self, StreamConfig};
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
    task: tokio::task::JoinHandle<stream::Ended>,
    /// Holds the gateway's database.
    _gw: TestGateway,
}

async fn start(idle_ping: Duration) -> (Harness, Conn) {
    start_with(idle_ping, "").await
}

/// Starts pushgate and accepts its connection: the stream is up. `extra` is appended to the
/// `[component]` section and may open sections of its own.
async fn start_with(idle_ping: Duration, extra: &str) -> (Harness, Conn) {
    let mut h = launch(idle_ping, extra).await;
    let c = accept(&h.listener).await;
    wait_connected(&mut h, true).await;
    (h, c)
}

async fn launch(idle_ping: Duration, extra: &str) -> Harness {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut gw = TestGateway::sqlite(&format!(
        "[component]\njid = \"push.test\"\nsecret = \"component-secret\"\n{extra}\n\
         [providers.webpush]\nkind = \"webpush\"\nallow_http = true\nallow_private_addresses = true\n\
         [providers.up]\nkind = \"webpush\"\n",
    ))
    .await;
    let cfg = StreamConfig {
        server: listener.local_addr().unwrap().to_string(),
        max_reconnect_delay: Duration::from_secs(2),
        idle_ping,
        ..StreamConfig::new(&gw.config)
    };
    let (stop, stop_rx) = watch::channel(false);
    let (connected_tx, connected) = watch::channel(false);
    let outbox = gw.take_outbox();
    let task = tokio::spawn(stream::run(
        gw.gw.clone(),
        cfg,
        outbox,
        stop_rx,
        connected_tx,
    ));
    Harness {
        listener,
        stop,
        connected,
        task,
        _gw: gw,
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
    let (h, mut c) = start(Duration::from_secs(60)).await;

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

    c.ping("p1").await;
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
    let (h, mut c) = start(Duration::from_secs(60)).await;

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
    // Prosody cannot read an <error/> in another namespace: it must be in jabber:component:accept.
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
    let (h, mut c) = start(Duration::from_secs(60)).await;

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
    c.ping("p2").await;
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
    let (h, mut c) = start(Duration::from_secs(1)).await;

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
    let (mut h, c) = start(Duration::from_secs(60)).await;

    drop(c); // the server dies without closing the stream
    wait_connected(&mut h, false).await;
    let mut c = accept(&h.listener).await;
    wait_connected(&mut h, true).await;
    c.ping("p3").await;
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
    let (h, c) = start(Duration::from_secs(60)).await;
    let (mut reader, mut writer) = c.socket.into_split();
    let send = tokio::spawn(async move {
        let mut batch = String::new();
        for i in 0..N {
            let server = requester("example.org").with_id(&format!("f{i}"));
            let request = if i % 2 == 0 {
                server.publish(Some(&format!("n{i}")), None, &[])
            } else {
                server.ping()
            };
            batch.push_str(request.as_xml());
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

/// Everything pushgate sent, read until `marker` shows up (or it stays silent for `WAIT`).
impl Conn {
    async fn until(&mut self, marker: &str) -> String {
        while !self.buf.contains(marker) {
            self.fill().await;
        }
        self.buf.clone()
    }

    /// Registers `token` for `user` with the Tigase dialect and returns the node.
    async fn register(&mut self, user: &str, token: &str) -> String {
        let id = format!("reg-{user}-{}", token.len());
        let request = requester(&format!("{user}@example.org/phone"))
            .with_id(&id)
            .submit(
                "register-device",
                &[("provider", "webpush"), ("device-token", token)],
            );
        self.send(request.as_xml()).await;
        let reply = self.iq_with(&format!("id='{id}'")).await;
        let start = reply
            .find("var='node'")
            .unwrap_or_else(|| panic!("no node: {reply}"));
        let value = reply[start..].find("<value>").unwrap() + start + 7;
        let end = reply[value..].find("</value>").unwrap() + value;
        reply[value..end].to_owned()
    }

    /// A ping from the server, as request `id`.
    async fn ping(&mut self, id: &str) {
        self.send(requester("example.org").with_id(id).ping().as_xml())
            .await;
    }

    async fn publish(&mut self, id: &str, node: &str) {
        self.publish_body(id, node, "hi").await;
    }

    /// A publish as Prosody sends it, with `body` as the last message's body.
    async fn publish_body(&mut self, id: &str, node: &str, body: &str) {
        let request = requester("example.org").with_id(id).publish(
            Some(node),
            None,
            &[("last-message-body", body)],
        );
        self.send(request.as_xml()).await;
    }
}

/// No new connection within a short while: the stream was never dropped.
async fn assert_no_reconnect(h: &Harness) {
    assert!(*h.connected.borrow(), "stream is down");
    assert!(
        timeout(Duration::from_millis(300), h.listener.accept())
            .await
            .is_err(),
        "pushgate reconnected"
    );
}

/// What users of any server can send the component: each hostile stanza is refused with an
/// error the sender can read, and the stream and everybody else carry on.
#[tokio::test]
async fn hostile_stanzas_are_refused_and_the_stream_survives() {
    let (h, mut c) = start(Duration::from_secs(60)).await;

    // 14,000 nested elements: this overflowed the stack and killed the process.
    let mut deep = String::from("<message id='deep' from='mallory@example.org/x' to='push.test'>");
    deep.push_str(&"<a>".repeat(14_000));
    deep.push_str(&"</a>".repeat(14_000));
    deep.push_str("</message>");
    c.send(&deep).await;
    let reply = c.until("id='deep'").await;
    assert!(
        reply.contains("type='error'") && reply.contains("<policy-violation"),
        "{reply}"
    );
    assert!(reply.contains("nested too deeply"), "{reply}");

    // A 9,000-byte attribute: this dropped the stream.
    c.send(&format!(
        "<iq type='set' id='long' from='mallory@example.org/x' to='push.test' x='{}'>\
         <ping xmlns='urn:xmpp:ping'/></iq>",
        "A".repeat(9_000)
    ))
    .await;
    let reply = c.iq_with("id='long'").await;
    assert!(reply.contains("<policy-violation"), "{reply}");
    assert!(reply.contains("to='mallory@example.org/x'"), "{reply}");

    // Larger than the stanza limit (256 KiB), without an id: skipped, nobody to answer.
    c.send(&format!(
        "<message from='mallory@example.org/x' to='push.test'><body>{}</body></message>",
        "B".repeat(300 * 1024)
    ))
    .await;
    // Too many elements, and a form far beyond any real one.
    let mut wide = String::from(
        "<iq type='set' id='wide' from='mallory@example.org/x' to='push.test'>\
         <command xmlns='http://jabber.org/protocol/commands' node='register-device'>\
         <x xmlns='jabber:x:data' type='submit'>",
    );
    for i in 0..5000 {
        wide.push_str(&format!("<field var='f{i}'><value>v</value></field>"));
    }
    wide.push_str("</x></command></iq>");
    c.send(&wide).await;
    let reply = c.iq_with("id='wide'").await;
    assert!(
        reply.contains("<policy-violation") && reply.contains("too many elements"),
        "{reply}"
    );

    // Everybody else is still served on the same stream.
    c.ping("after").await;
    assert!(c.iq_with("id='after'").await.contains("type='result'"));
    assert_no_reconnect(&h).await;
    h.stop.send(true).unwrap();
}

/// An HTTP server that accepts connections and never answers, counting the connections open.
async fn tarpit() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push/tarpit", listener.local_addr().unwrap());
    let open = Arc::new(AtomicUsize::new(0));
    let count = open.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (url, open)
}

/// A push service that answers every request `201 Created` at once.
async fn healthy_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push/ok", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    // Headers, then a body of content-length bytes: one request, one answer.
                    let text = String::from_utf8_lossy(&seen).to_string();
                    let Some(head_end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length: usize = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if seen.len() < head_end + 4 + length {
                        continue;
                    }
                    seen.drain(..head_end + 4 + length);
                    let _ = socket
                        .write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
                        .await;
                }
            });
        }
    });
    url
}

/// Position of the reply to request `id` in everything read so far.
fn reply_at(text: &str, id: &str) -> Option<usize> {
    text.find(&format!("id='{id}'"))
}

/// The whole reply to request `id`.
fn reply_of(text: &str, id: &str) -> String {
    let at = reply_at(text, id).unwrap_or_else(|| panic!("no reply to {id}: {text}"));
    let start = text[..at].rfind("<iq").unwrap();
    let end = text[at..].find("</iq>").map_or(text.len(), |e| at + e + 5);
    text[start..end].to_owned()
}

/// One push service that never answers holds only its own slots: publishes for it beyond its
/// slots and queue are queued for retry at once, the rest by the deadline, and a healthy
/// device's publish goes through meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarpit_endpoint_delays_nobody_else() {
    let (tarpit_url, tarpit_open) = tarpit().await;
    let healthy_url = healthy_endpoint().await;
    let (h, mut c) = start_with(
        Duration::from_secs(60),
        "publish_timeout_secs = 2\n[limits]\nhost_concurrency = 2\nhost_queue = 2\n",
    )
    .await;
    let slow = c.register("victim", &tarpit_url).await;
    let fine = c.register("alice", &healthy_url).await;

    for i in 0..10 {
        c.publish(&format!("t{i}"), &slow).await;
    }
    c.publish("healthy", &fine).await;
    let text = c.until("id='healthy'").await;
    let healthy = reply_at(&text, "healthy").unwrap();
    assert!(
        reply_of(&text, "healthy").contains("type='result'"),
        "{text}"
    );
    // Six were turned away from the slots at once (2 in progress, 2 waiting): those answers may
    // come first.
    let mut text = text;
    for i in 0..10 {
        text = c.until(&format!("id='t{i}'")).await;
    }
    let waited = (0..10)
        .filter(|i| {
            let at = reply_at(&text, &format!("t{i}")).unwrap();
            let reply = reply_of(&text, &format!("t{i}"));
            assert!(
                reply.contains("type='result'"),
                "t{i}, queued for retry: {reply}"
            );
            at > healthy
        })
        .count();
    assert!(
        waited >= 4,
        "the 4 publishes holding or awaiting tarpit slots are answered after the healthy one"
    );
    // host_concurrency, give or take a connection of a timed-out request still being closed
    // (the tarpit counts until it reads the end); without the slots there were 10.
    assert!(
        tarpit_open.load(std::sync::atomic::Ordering::SeqCst) <= 4,
        "at most host_concurrency connections to the tarpit"
    );
    assert_no_reconnect(&h).await;
    h.stop.send(true).unwrap();
}

/// A stream up with `limit` and room for 100 pushes per host, and the node of a device whose
/// push service never answers; publishes are answered `wait` after 3 s.
async fn with_a_tarpit_device(limit: &str) -> (Harness, Conn, String) {
    let (tarpit_url, _) = tarpit().await;
    let (h, mut c) = start_with(
        Duration::from_secs(60),
        &format!(
            "publish_timeout_secs = 3\n[limits]\n{limit}\nhost_concurrency = 100\nhost_queue = 100\n"
        ),
    )
    .await;
    let node = c.register("victim", &tarpit_url).await;
    (h, c, node)
}

/// When every in-flight slot is taken, a new request is answered `wait` at once instead of
/// waiting behind the slow ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_house_answers_wait_at_once() {
    let (h, mut c, slow) = with_a_tarpit_device("max_in_flight = 16").await;
    for i in 0..16 {
        c.publish(&format!("t{i}"), &slow).await;
    }
    c.ping("extra").await;
    let text = c.until("id='extra'").await;
    let at = reply_at(&text, "extra").unwrap();
    let reply = reply_of(&text, "extra");
    assert!(
        reply.contains("type='wait'") && reply.contains("internal-server-error"),
        "{text}"
    );
    assert!(
        (0..16).all(|i| reply_at(&text, &format!("t{i}")).is_none_or(|t| t > at)),
        "the ping was answered before the stuck publishes: {text}"
    );
    for i in 0..16 {
        c.until(&format!("id='t{i}'")).await;
    }
    // Slots are free again: the next request is served normally.
    c.ping("later").await;
    assert!(c.iq_with("id='later'").await.contains("type='result'"));
    h.stop.send(true).unwrap();
}

/// Stanzas in flight hold at most `max_in_flight_bytes` between them: large ones waiting on a
/// slow provider do not pile up in memory; the next is answered `wait` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stanzas_in_flight_hold_a_bounded_number_of_bytes() {
    let (h, mut c, slow) = with_a_tarpit_device("max_in_flight_bytes = 1048576").await;
    let body = "B".repeat(250 * 1024);
    for i in 0..5 {
        c.publish_body(&format!("big{i}"), &slow, &body).await;
    }
    // Four of 251 KiB fit in 1 MiB; the fifth does not and is refused before the others
    // time out.
    let text = c.until("id='big4'").await;
    assert!(reply_of(&text, "big4").contains("type='wait'"), "{text}");
    assert!(
        (0..4).all(|i| reply_at(&text, &format!("big{i}")).is_none()),
        "the four in flight are still waiting for the tarpit: {text}"
    );
    h.stop.send(true).unwrap();
}

const CONFLICT: &str = "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
    <text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Replaced by new connection</text>\
    </stream:error></stream:stream>";

#[tokio::test]
async fn replaced_by_another_instance_it_stands_by() {
    // max_reconnect_delay is 2 s in this harness: the stand-by lasts that long, where a lost
    // stream is retried after 0.25 s.
    let (h, mut c) = start(Duration::from_secs(60)).await;
    c.send(CONFLICT).await;
    let lost = std::time::Instant::now();
    let _next = accept(&h.listener).await;
    assert!(
        lost.elapsed() >= Duration::from_millis(1900),
        "knocked again after {:?}",
        lost.elapsed()
    );
    h.stop.send(true).unwrap();
    assert_eq!(
        timeout(WAIT, h.task).await.unwrap().unwrap(),
        stream::Ended::Shutdown
    );
}

#[tokio::test]
async fn replaced_with_when_replaced_exit_it_steps_down() {
    let (h, mut c) = start_with(Duration::from_secs(60), "when_replaced = \"exit\"").await;
    c.send(CONFLICT).await;
    assert_eq!(
        timeout(WAIT, h.task).await.unwrap().unwrap(),
        stream::Ended::Replaced,
        "stepped down without being told to stop"
    );
    // And it did not knock again.
    assert!(
        timeout(Duration::from_millis(500), h.listener.accept())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_lost_stream_is_retried_at_once() {
    let (h, c) = start(Duration::from_secs(60)).await;
    drop(c);
    let lost = std::time::Instant::now();
    let _next = accept(&h.listener).await;
    assert!(
        lost.elapsed() < Duration::from_secs(1),
        "retried after {:?}",
        lost.elapsed()
    );
    h.stop.send(true).unwrap();
    timeout(WAIT, h.task).await.unwrap().unwrap();
}

/// On shutdown the stream stays open until what was taken on is answered, and what arrives
/// meanwhile is served too: a publish routed to a closing instance (ejabberd spreads them over
/// every connection of the component) is answered, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_what_is_in_flight_before_closing() {
    let endpoint = PushEndpoint::start().await;
    let (h, mut c) = start(Duration::from_secs(60)).await;
    let node = c.register("alice", &endpoint.url("d1")).await;
    endpoint.hold();
    c.publish("before", &node).await;
    endpoint.arrived().await;

    h.stop.send(true).unwrap();
    c.publish("during", &node).await;
    endpoint.arrived().await;
    endpoint.release();
    endpoint.release();
    let text = c.until("</stream:stream>").await;
    let closed = text.find("</stream:stream>").unwrap();
    for id in ["before", "during"] {
        let at = reply_at(&text, id).unwrap_or_else(|| panic!("no reply to {id}: {text}"));
        assert!(
            at < closed,
            "{id} answered before the stream closed: {text}"
        );
        assert!(reply_of(&text, id).contains("type='result'"), "{text}");
    }
    assert_eq!(endpoint.received(), 2);
    assert_eq!(
        timeout(WAIT, h.task).await.unwrap().unwrap(),
        stream::Ended::Shutdown
    );
}

/// A publish the server wrote before it read our `</stream:stream>` (the two cross on the wire;
/// ejabberd keeps routing to a closing connection until it has processed the close) is still
/// read and delivered, though it can no longer be answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_crossing_our_close_is_delivered() {
    let endpoint = PushEndpoint::start().await;
    let (h, mut c) = start(Duration::from_secs(60)).await;
    let node = c.register("alice", &endpoint.url("d1")).await;

    h.stop.send(true).unwrap();
    let text = c.until("</stream:stream>").await;
    assert!(!text.contains("<iq"), "nothing was in flight: {text}");
    c.publish("crossing", &node).await;
    timeout(WAIT, endpoint.arrived())
        .await
        .expect("the crossing publish was not delivered");
    c.send("</stream:stream>").await;
    assert_eq!(
        timeout(WAIT, h.task).await.unwrap().unwrap(),
        stream::Ended::Shutdown
    );
    assert_eq!(endpoint.received(), 1);
}

/// After our close pushgate waits for the server's end of stream only so long: a server that
/// never closes its side does not hold the shutdown.
#[tokio::test]
async fn a_server_that_never_closes_does_not_hold_the_shutdown() {
    let (h, mut c) = start(Duration::from_secs(60)).await;
    h.stop.send(true).unwrap();
    c.until("</stream:stream>").await;
    assert_eq!(
        timeout(WAIT, h.task)
            .await
            .expect("still waiting for the server's end of stream")
            .unwrap(),
        stream::Ended::Shutdown
    );
    drop(c);
}
