//! Entry points for the fuzzer (`scripts/fuzz`, tests/fuzz) and for the regression tests that
//! replay what it found (tests/fuzz_regressions.rs): each takes arbitrary bytes and must neither
//! panic nor hang, whatever they are. They run the same code as the product, from the first
//! byte on: the framer, then the parsers a stanza, a form, a command, a configuration or an HTTP
//! request body goes through.

use pushgate_providers::framing::{Frame, Framer, Limits};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza::Stanza;

use crate::fronts::xmpp::adhoc::CommandRequest;
use crate::fronts::xmpp::forms::Form;
use crate::fronts::xmpp::publish::{PublishIq, PublishRequest};

const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
    xmlns:stream='http://etherx.jabber.org/streams' id='fuzz' from='push.example.org'>";

/// Small limits, so that the fuzzer reaches them often.
const SMALL: Limits = Limits {
    max_bytes: 4096,
    max_depth: 8,
    max_name_bytes: 32,
    max_attribute_bytes: 256,
    max_attributes: 8,
    max_elements: 64,
};

/// The framer on a stream cut into chunks at the places the first bytes choose: the frames must
/// not depend on how the bytes arrived, and every kept stanza must stay within the limits.
pub fn framing(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let mut whole = HEADER.to_vec();
    whole.extend_from_slice(rest);
    let at_once = frames(&[&whole]);
    let step = usize::from(cut).max(1);
    let pieces: Vec<&[u8]> = whole.chunks(step).collect();
    let chunked = frames(&pieces);
    assert_eq!(at_once, chunked, "frames depend on how the bytes arrived");
    if let Ok(frames) = &at_once {
        for frame in frames {
            if let Frame::Element { xml, .. } = frame {
                // The kept bytes plus the stream's namespace declarations.
                assert!(xml.len() <= SMALL.max_bytes + HEADER.len(), "{}", xml.len());
            }
        }
    }
}

fn frames(pieces: &[&[u8]]) -> Result<Vec<Frame>, pushgate_providers::framing::FramingError> {
    let mut framer = Framer::new(SMALL);
    let mut out = Vec::new();
    for piece in pieces {
        framer.feed(piece, &mut out)?;
    }
    Ok(out)
}

/// What a stanza from the server goes through: framing with the default limits, parsing on a
/// worker (the lean reading of publishes checked against the full parse), and every reading of
/// its payload (publish, command, data form).
pub fn stanza(data: &[u8]) {
    let mut input = HEADER.to_vec();
    input.extend_from_slice(data);
    let mut framer = Framer::new(Limits::default());
    let mut out = Vec::new();
    if framer.feed(&input, &mut out).is_err() {
        return;
    }
    for frame in out {
        let Frame::Element { xml, .. } = frame else {
            continue;
        };
        let full = xso::from_bytes::<Stanza>(&xml);
        // What the lean reading of publishes takes, it must read as the full parse does.
        if let Some(lean) = PublishIq::read(&xml) {
            let Ok(Stanza::Iq(Iq::Set {
                from: Some(from),
                to,
                id,
                payload,
            })) = &full
            else {
                panic!("read the lean way, refused by the full parse");
            };
            assert_eq!((&lean.from, &lean.to, &lean.id), (from, to, id));
            assert_eq!(lean.request, PublishRequest::try_from(payload));
        }
        if let Ok(stanza) = full {
            payloads(stanza);
        }
        if let Ok(el) = Element::from_reader(&xml[..]) {
            read_element(&el);
        }
    }
}

fn payloads(stanza: Stanza) {
    if let Stanza::Iq(Iq::Get { payload, .. } | Iq::Set { payload, .. }) = stanza {
        read_element(&payload);
    }
}

/// Every reading pushgate has for an element and its children.
fn read_element(el: &Element) {
    for e in std::iter::once(el).chain(el.children()) {
        if let Ok(publish) = PublishRequest::try_from(e) {
            let _ = publish.notification(
                "user@example.org",
                crate::fronts::xmpp::publish::WithoutSummary::Message,
            );
        }
        let _ = CommandRequest::try_from(e);
        let _ = Form::parse(e);
    }
}

/// The configuration loader on arbitrary text: an error naming a key, never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = crate::config::Config::from_toml_str(text) {
        // What `run` derives from a loaded configuration must not panic either.
        let _ = config.component_jid();
        let _ = config.admins();
        let _ = config.publish_timeout();
        let _ = config.limits.stanza_limits();
        let _ = crate::core::Providers::from_config(&config);
    }
}

/// The body of Siskin's REST unregister: a reason or a request, never a panic.
pub fn rest_json(data: &[u8]) {
    let _ = crate::fronts::http::unregister::parse(data);
}
