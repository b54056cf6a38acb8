//! The XMPP server's side of XEP-0114, as far as the benchmark needs it: the handshake, the
//! publishes and register-device commands it sends, and just enough parsing of the replies to
//! count them by kind.

use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::webpush_sink::find;
use crate::{BoxError, COMPONENT, DOMAIN, MARK, SECRET, STREAM_ID};

/// Accepts pushgate's connection and does the server side of the XEP-0114 handshake.
pub(crate) async fn handshake(listener: &TcpListener) -> Result<TcpStream, BoxError> {
    let (mut socket, _) = listener.accept().await?;
    socket.set_nodelay(true)?;
    let mut buf = String::new();
    let mut chunk = [0u8; 4096];
    let mut read_more = async |socket: &mut TcpStream, buf: &mut String| -> Result<(), BoxError> {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Err("pushgate closed the connection during the handshake".into());
        }
        buf.push_str(std::str::from_utf8(&chunk[..n])?);
        Ok(())
    };
    while !buf
        .find("<stream:stream")
        .is_some_and(|at| buf[at..].contains('>'))
    {
        read_more(&mut socket, &mut buf).await?;
    }
    if !buf.contains(COMPONENT) {
        return Err(format!("unexpected stream header: {buf}").into());
    }
    buf.clear();
    socket
        .write_all(
            format!(
                "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
                 xmlns='jabber:component:accept' id='{STREAM_ID}' from='{COMPONENT}'>"
            )
            .as_bytes(),
        )
        .await?;
    while !buf.contains("</handshake>") {
        read_more(&mut socket, &mut buf).await?;
    }
    let digest: String = Sha1::digest(format!("{STREAM_ID}{SECRET}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if !buf.contains(&format!("<handshake>{digest}</handshake>")) {
        return Err(format!("wrong handshake digest: {buf}").into());
    }
    socket.write_all(b"<handshake/>").await?;
    Ok(socket)
}

pub(crate) fn publish_stanza(seq: usize, node: &str) -> String {
    // The shape Prosody's mod_cloud_notify sends with push summaries including bodies.
    format!(
        "<iq type='set' id='b{seq}' from='{DOMAIN}' to='{COMPONENT}'>\
         <pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{node}'><item>\
         <notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>\
         <field var='message-count'><value>1</value></field>\
         <field var='last-message-sender'><value>juliet@capulet.example/balcony</value></field>\
         <field var='last-message-body'><value>{MARK}{seq} wherefore art thou</value></field>\
         </x></notification></item></publish></pubsub></iq>"
    )
}
/// A single-stage Tigase `register-device` (XEP-0050 execute with a submitted XEP-0004 form, as
/// Martin and Siskin send it) from user `u<seq>`. The token is one of ours: no XML escaping.
pub(crate) fn register_stanza(seq: usize, provider: &str, token: &str) -> String {
    format!(
        "<iq type='set' id='b{seq}' from='u{seq}@{DOMAIN}/phone' to='{COMPONENT}'>\
         <command xmlns='http://jabber.org/protocol/commands' node='register-device' action='execute'>\
         <x xmlns='jabber:x:data' type='submit'>\
         <field var='provider'><value>{provider}</value></field>\
         <field var='device-token'><value>{token}</value></field>\
         </x></command></iq>"
    )
}

/// The first complete `<iq …>` in `buf` and the offset just past it.
pub(crate) fn next_iq(buf: &[u8]) -> Option<(&[u8], usize)> {
    let start = find(buf, b"<iq")?;
    let open_end = start + buf[start..].iter().position(|&b| b == b'>')?;
    let end = if buf[open_end - 1] == b'/' {
        open_end + 1
    } else {
        open_end + find(&buf[open_end..], b"</iq>")? + 5
    };
    Some((&buf[start..end], end))
}

/// The value of `name='…'` (or `name="…"`) in the opening tag of `xml`.
pub(crate) fn attr<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = &xml[..xml.find('>')?];
    for quote in ['\'', '"'] {
        let key = format!(" {name}={quote}");
        if let Some(at) = open.find(&key) {
            let rest = &open[at + key.len()..];
            return rest.find(quote).map(|e| &rest[..e]);
        }
    }
    None
}

/// For a register-device reply: `completed` (a result whose command completed with a `node`),
/// `result:<status>` for any other result, or `error:<condition>`.
pub(crate) fn command_reply_kind(iq: &str) -> String {
    if attr(iq, "type") != Some("result") {
        return reply_kind(iq);
    }
    let status = iq
        .find("<command")
        .and_then(|at| attr(&iq[at..], "status"))
        .unwrap_or("?");
    if status == "completed" && (iq.contains("var='node'") || iq.contains("var=\"node\"")) {
        "completed".into()
    } else {
        format!("result:{status}")
    }
}

/// `result`, or `error:<condition>`.
pub(crate) fn reply_kind(iq: &str) -> String {
    match attr(iq, "type") {
        Some("result") => "result".into(),
        Some("error") => {
            let condition = iq.find("<error").and_then(|at| {
                let inner = &iq[at..];
                let inner = &inner[inner.find('>')? + 1..];
                let mut rest = inner;
                // The first child that is not <text>.
                while let Some(lt) = rest.find('<') {
                    let name: String = rest[lt + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                        .collect();
                    if !name.is_empty() && name != "text" {
                        return Some(name);
                    }
                    rest = &rest[lt + 1..];
                }
                None
            });
            format!("error:{}", condition.unwrap_or_else(|| "?".into()))
        }
        other => format!("type:{}", other.unwrap_or("?")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_replies_are_told_apart() {
        let done = "<iq type=\"result\" id=\"b1\"><command xmlns=\"http://jabber.org/protocol/commands\" node=\"register-device\" status=\"completed\"><x xmlns=\"jabber:x:data\" type=\"result\"><field var=\"node\"><value>n</value></field></x></command></iq>";
        assert_eq!(command_reply_kind(done), "completed");
        let executing = "<iq type='result' id='b2'><command status='executing'/></iq>";
        assert_eq!(command_reply_kind(executing), "result:executing");
        let refused = "<iq type='error' id='b3'><error type='modify'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>";
        assert_eq!(command_reply_kind(refused), "error:not-acceptable");
        let stanza = register_stanza(7, "apns", "ab");
        assert!(stanza.contains("from='u7@bench.example/phone'"), "{stanza}");
        assert!(stanza.contains("<field var='device-token'><value>ab</value></field>"));
    }
}
