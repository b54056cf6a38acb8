//! XEP-0004 data forms, read liberally and written plainly.
//!
//! Servers and clients disagree on form details: Tigase omits `type`, Prosody sends empty
//! `<field/>`s, ejabberd adds labels, `FORM_TYPE` is just another field. A strict parser would
//! turn each of those into a lost push, so this one only needs `var` names and values, and
//! ignores everything else.

use minidom::Element;
use minidom::rxml::xml_ncname;
use xmpp_parsers::minidom;

use super::xml;

pub const NS: &str = "jabber:x:data";

/// No form pushgate reads has more than a dozen fields; a form with more than this is not one
/// of ours, and reading it would only cost time.
pub const MAX_FIELDS: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormError {
    #[error("not a jabber:x:data form")]
    NotAForm,
    #[error("form has more than {MAX_FIELDS} fields")]
    TooManyFields,
}

/// A received form: its type (if any) and its fields in document order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Form {
    pub kind: Option<String>,
    pub fields: Vec<Field>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub var: String,
    pub values: Vec<String>,
}

impl Form {
    pub fn parse<E: xml::Element>(el: E) -> Result<Self, FormError> {
        if !el.is("x", NS) {
            return Err(FormError::NotAForm);
        }
        if el
            .children()
            .filter(|c| c.is("field", NS))
            .nth(MAX_FIELDS)
            .is_some()
        {
            return Err(FormError::TooManyFields);
        }
        let fields = el
            .children()
            .filter(|c| c.is("field", NS))
            .filter_map(|f| {
                let var = f.attr("var")?.to_owned();
                let values = f
                    .children()
                    .filter(|v| v.is("value", NS))
                    .map(|v| v.text().into_owned())
                    .collect();
                Some(Field { var, values })
            })
            .collect();
        Ok(Form {
            kind: el.attr("type").map(str::to_owned),
            fields,
        })
    }

    /// The first form child of `parent`, if any parses.
    pub fn find_in<E: xml::Element>(parent: E) -> Option<Self> {
        parent.children().find_map(|c| Form::parse(c).ok())
    }

    /// The first value of a field, trimmed; `None` when the field is missing or empty, because
    /// servers send empty fields for "no value".
    pub fn value(&self, var: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.var == var)
            .and_then(|f| f.values.first())
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// All values of a field joined by newlines (text-multi fields such as PEM blocks), trimmed;
    /// `None` when missing or empty.
    pub fn text(&self, var: &str) -> Option<String> {
        let field = self.fields.iter().find(|f| f.var == var)?;
        let joined = field.values.join("\n");
        let trimmed = joined.trim();
        (!trimmed.is_empty()).then(|| trimmed.to_owned())
    }

    pub fn form_type(&self) -> Option<&str> {
        self.value("FORM_TYPE")
    }

    pub fn is_cancel(&self) -> bool {
        self.kind.as_deref() == Some("cancel")
    }
}

/// Writes a form to send: `result` forms for command answers, `form` forms for blank forms.
pub struct FormBuilder {
    el: Element,
}

impl FormBuilder {
    pub fn new(kind: &str) -> Self {
        let el = Element::builder("x", NS)
            .attr(xml_ncname!("type").into(), kind)
            .build();
        Self { el }
    }

    pub fn title(mut self, title: &str) -> Self {
        self.el
            .append_child(Element::builder("title", NS).append(title).build());
        self
    }

    pub fn instructions(mut self, text: &str) -> Self {
        self.el
            .append_child(Element::builder("instructions", NS).append(text).build());
        self
    }

    /// A field with values. `ftype` is the XEP-0004 field type (`text-single`, `list-multi`, …).
    pub fn field<I, S>(self, var: &str, ftype: &str, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.field_full(
            var,
            ftype,
            None,
            false,
            values,
            std::iter::empty::<(&str, &str)>(),
        )
    }

    /// A field for the requester to fill in, with a label, a required flag and options.
    pub fn input<'a>(
        self,
        var: &str,
        ftype: &str,
        label: &str,
        required: bool,
        options: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        self.field_full(
            var,
            ftype,
            Some(label),
            required,
            std::iter::empty::<String>(),
            options,
        )
    }

    fn field_full<'a, I, S>(
        mut self,
        var: &str,
        ftype: &str,
        label: Option<&str>,
        required: bool,
        values: I,
        options: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut field = Element::builder("field", NS)
            .attr(xml_ncname!("var").into(), var)
            .attr(xml_ncname!("type").into(), ftype);
        if let Some(label) = label {
            field = field.attr(xml_ncname!("label").into(), label);
        }
        let mut field = field.build();
        if required {
            field.append_child(Element::bare("required", NS));
        }
        for (label, value) in options {
            field.append_child(
                Element::builder("option", NS)
                    .attr(xml_ncname!("label").into(), label)
                    .append(Element::builder("value", NS).append(value).build())
                    .build(),
            );
        }
        for v in values {
            field.append_child(Element::builder("value", NS).append(v.into()).build());
        }
        self.el.append_child(field);
        self
    }

    pub fn build(self) -> Element {
        self.el
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Form {
        Form::parse(&xml.parse::<Element>().unwrap()).unwrap()
    }

    #[test]
    fn reads_prosody_summary_with_empty_fields() {
        let f = parse(
            "<x xmlns='jabber:x:data' type='form'>\
               <field type='hidden' var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>\
               <field type='text-single' var='message-count'><value>1</value></field>\
               <field type='text-single' var='pending-subscription-count'/>\
               <field type='jid-single' var='last-message-sender'/>\
               <field type='text-single' var='last-message-body'><value>New Message!</value></field>\
             </x>",
        );
        assert_eq!(f.kind.as_deref(), Some("form"));
        assert_eq!(f.form_type(), Some("urn:xmpp:push:summary"));
        assert_eq!(f.value("message-count"), Some("1"));
        assert_eq!(f.value("last-message-sender"), None);
        assert_eq!(f.value("last-message-body"), Some("New Message!"));
    }

    #[test]
    fn forms_with_too_many_fields_are_refused() {
        let fields = |n: usize| {
            let mut xml = "<x xmlns='jabber:x:data'>".to_owned();
            for i in 0..n {
                xml.push_str(&format!("<field var='f{i}'><value>v</value></field>"));
            }
            xml.push_str("</x>");
            xml.parse::<Element>().unwrap()
        };
        assert_eq!(
            Form::parse(&fields(MAX_FIELDS)).unwrap().fields.len(),
            MAX_FIELDS
        );
        assert_eq!(
            Form::parse(&fields(MAX_FIELDS + 1)),
            Err(FormError::TooManyFields)
        );
    }

    #[test]
    fn reads_tigase_form_without_type() {
        let f = parse(
            "<x xmlns='jabber:x:data'><field var='message-count'><value> 0 </value></field></x>",
        );
        assert_eq!(f.kind, None);
        assert_eq!(f.value("message-count"), Some("0"));
    }

    #[test]
    fn multi_line_values_join() {
        let f = parse(
            "<x xmlns='jabber:x:data' type='submit'><field var='pem'>\
               <value>-----BEGIN X-----</value><value>AAAA</value><value>-----END X-----</value>\
             </field><field var='empty'><value> </value></field></x>",
        );
        assert_eq!(
            f.text("pem").as_deref(),
            Some("-----BEGIN X-----\nAAAA\n-----END X-----")
        );
        assert_eq!(f.text("empty"), None);
        assert_eq!(f.text("missing"), None);
    }

    #[test]
    fn refuses_other_elements() {
        let el: Element = "<x xmlns='urn:other'/>".parse().unwrap();
        assert_eq!(Form::parse(&el), Err(FormError::NotAForm));
    }

    #[test]
    fn builder_output_reads_back() {
        let el = FormBuilder::new("result")
            .field("node", "text-single", ["abc"])
            .field("features", "list-multi", ["a", "b"])
            .input(
                "provider",
                "list-single",
                "Provider",
                true,
                [("WebPush", "webpush")],
            )
            .build();
        let f = Form::parse(&el).unwrap();
        assert_eq!(f.kind.as_deref(), Some("result"));
        assert_eq!(f.value("node"), Some("abc"));
        assert_eq!(f.fields[1].values, vec!["a", "b"]);
        // option values are not field values
        assert_eq!(f.value("provider"), None);
    }
}
