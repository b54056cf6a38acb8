//! XEP-0050 ad-hoc command envelopes: the `<command/>` a client sends and the one we answer.
//!
//! xmpp-parsers has no XEP-0050 types. Sessions are stateless on purpose: a request carrying a
//! submitted form is complete in itself, so a two-stage flow works even when ejabberd
//! load-balances the two stages onto different pushgate instances.

use minidom::Element;
use minidom::rxml::xml_ncname;
use xmpp_parsers::minidom;

use crate::error::Fault;
use crate::fronts::xmpp::forms::{self, Form};

pub const NS: &str = "http://jabber.org/protocol/commands";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Execute,
    Next,
    Prev,
    Complete,
    Cancel,
}

impl Action {
    fn parse(s: Option<&str>) -> Result<Self, Fault> {
        Ok(match s {
            None | Some("execute") => Action::Execute,
            Some("next") => Action::Next,
            Some("prev") => Action::Prev,
            Some("complete") => Action::Complete,
            Some("cancel") => Action::Cancel,
            Some(other) => return Err(Fault::BadRequest(format!("unknown action '{other}'"))),
        })
    }
}

/// A received `<command/>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRequest {
    pub node: String,
    pub action: Action,
    pub sessionid: Option<String>,
    /// The first data form inside, if any. A `cancel` form counts as a cancel action.
    pub form: Option<Form>,
}

impl TryFrom<&Element> for CommandRequest {
    type Error = Fault;

    fn try_from(el: &Element) -> Result<Self, Fault> {
        if !el.is("command", NS) {
            return Err(Fault::BadRequest("not an ad-hoc command".into()));
        }
        let node = el
            .attr("node")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Fault::BadRequest("command without node".into()))?
            .to_owned();
        let mut action = Action::parse(el.attr("action"))?;
        let form = el
            .children()
            .find(|c| c.is("x", forms::NS))
            .and_then(|x| Form::parse(x).ok());
        if form.as_ref().is_some_and(Form::is_cancel) {
            action = Action::Cancel;
        }
        Ok(CommandRequest {
            node,
            action,
            sessionid: el.attr("sessionid").map(str::to_owned),
            form,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Executing,
    Completed,
    Canceled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Executing => "executing",
            Status::Completed => "completed",
            Status::Canceled => "canceled",
        }
    }
}

/// A `<command/>` to answer with.
#[derive(Debug)]
pub struct CommandResponse {
    pub node: String,
    pub sessionid: String,
    pub status: Status,
    pub form: Option<Element>,
    /// An `info` note for humans.
    pub note: Option<String>,
}

impl CommandResponse {
    /// A finished command with its result form.
    pub fn completed(req: &CommandRequest, form: Option<Element>) -> Self {
        CommandResponse {
            node: req.node.clone(),
            sessionid: session_of(req),
            status: Status::Completed,
            form,
            note: None,
        }
    }

    /// The first stage of a two-stage command: a blank form to fill in.
    pub fn executing(req: &CommandRequest, form: Element) -> Self {
        CommandResponse {
            node: req.node.clone(),
            sessionid: session_of(req),
            status: Status::Executing,
            form: Some(form),
            note: None,
        }
    }

    pub fn canceled(req: &CommandRequest) -> Self {
        CommandResponse {
            node: req.node.clone(),
            sessionid: session_of(req),
            status: Status::Canceled,
            form: None,
            note: None,
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

fn session_of(req: &CommandRequest) -> String {
    req.sessionid
        .clone()
        .unwrap_or_else(|| crate::ids::NodeId::generate().as_str().to_owned())
}

impl From<CommandResponse> for Element {
    fn from(r: CommandResponse) -> Element {
        let mut el = Element::builder("command", NS)
            .attr(xml_ncname!("node").into(), r.node)
            .attr(xml_ncname!("sessionid").into(), r.sessionid)
            .attr(xml_ncname!("status").into(), r.status.as_str())
            .build();
        if r.status == Status::Executing {
            el.append_child(
                Element::builder("actions", NS)
                    .attr(xml_ncname!("execute").into(), "complete")
                    .append(Element::bare("complete", NS))
                    .build(),
            );
        }
        if let Some(note) = r.note {
            el.append_child(
                Element::builder("note", NS)
                    .attr(xml_ncname!("type").into(), "info")
                    .append(note)
                    .build(),
            );
        }
        if let Some(form) = r.form {
            el.append_child(form);
        }
        el
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(xml: &str) -> Result<CommandRequest, Fault> {
        CommandRequest::try_from(&xml.parse::<Element>().unwrap())
    }

    #[test]
    fn single_stage_martin_style() {
        let r = req("<command xmlns='http://jabber.org/protocol/commands' node='register-device' action='execute'>\
              <x xmlns='jabber:x:data' type='submit'>\
                <field var='provider'><value>webpush</value></field>\
                <field var='device-token'><value>https://e/1</value></field>\
              </x></command>")
        .unwrap();
        assert_eq!(r.action, Action::Execute);
        assert_eq!(r.form.unwrap().value("device-token"), Some("https://e/1"));
    }

    #[test]
    fn missing_action_means_execute_and_cancel_form_means_cancel() {
        let r = req("<command xmlns='http://jabber.org/protocol/commands' node='n'/>").unwrap();
        assert_eq!((r.action, r.form), (Action::Execute, None));
        let r = req(
            "<command xmlns='http://jabber.org/protocol/commands' node='n' action='complete'>\
                     <x xmlns='jabber:x:data' type='cancel'/></command>",
        )
        .unwrap();
        assert_eq!(r.action, Action::Cancel);
    }

    #[test]
    fn refuses_nodeless_and_unknown_actions() {
        assert!(matches!(
            req("<command xmlns='http://jabber.org/protocol/commands'/>"),
            Err(Fault::BadRequest(_))
        ));
        assert!(matches!(
            req("<command xmlns='http://jabber.org/protocol/commands' node='n' action='dance'/>"),
            Err(Fault::BadRequest(_))
        ));
    }

    #[test]
    fn response_round_trips_through_the_parser() {
        let r = req("<command xmlns='http://jabber.org/protocol/commands' node='register-device' sessionid='s1'/>").unwrap();
        let form = crate::fronts::xmpp::forms::FormBuilder::new("form").build();
        let el: Element = CommandResponse::executing(&r, form).into();
        assert_eq!(el.attr("status"), Some("executing"));
        assert_eq!(el.attr("sessionid"), Some("s1"));
        assert!(el.get_child("actions", NS).is_some());
        let back = CommandRequest::try_from(&el).unwrap();
        assert_eq!(back.node, "register-device");
        assert!(back.form.is_some());
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_attributes(node in ".{0,40}", action in ".{0,12}", sid in ".{0,20}") {
            let el = Element::builder("command", NS)
                .attr(xml_ncname!("node").into(), node)
                .attr(xml_ncname!("action").into(), action)
                .attr(xml_ncname!("sessionid").into(), sid)
                .build();
            let _ = CommandRequest::try_from(&el);
        }
    }
}
