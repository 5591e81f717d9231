//! Record formats: how a row's columns become an `Example`.
//!
//! - `alpaca`: instruction/input/output; user = instruction (+ "\n" + input when non-empty),
//!   assistant = output; `instruction` and `input` are kept in `extra`.
//! - `conversations`: a list of {role, content[, metadata, tools]} (ChatGLM3) or
//!   {from, value} (ShareGPT: human/gpt); a system turn's `tools` go to `extra["tools"]`.
//! - `text`: one `Role::Text` message.
//! - `text_label`: user = text, assistant = label; an integer label with class names becomes
//!   the class name with "_" replaced by " " (the RAFT recipe); `extra["label"]` keeps the raw.
//! - `prompt_response`: prompt -> user, response -> assistant, optional system column.
//! - `raw`: no messages, every column in `extra` (for custom templates).
//!
//! Column names default to the role names and are overridden by the recipe's `columns` table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::DataError;
use super::example::{Example, Message, Role};
use super::row::{json_type_name, Fields, Location};
use super::transform::missing_in_row;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordFormat {
    Alpaca,
    Conversations,
    Text,
    TextLabel,
    PromptResponse,
    #[default]
    Raw,
}

impl RecordFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            RecordFormat::Alpaca => "alpaca",
            RecordFormat::Conversations => "conversations",
            RecordFormat::Text => "text",
            RecordFormat::TextLabel => "text_label",
            RecordFormat::PromptResponse => "prompt_response",
            RecordFormat::Raw => "raw",
        }
    }

    /// (role, default column, required). A role whose default is `None` is read only when the
    /// recipe maps it to a column.
    pub fn roles(&self) -> &'static [(&'static str, Option<&'static str>, bool)] {
        match self {
            RecordFormat::Alpaca => &[
                ("instruction", Some("instruction"), true),
                ("input", Some("input"), false),
                ("output", Some("output"), true),
                ("system", None, false),
            ],
            RecordFormat::Conversations => &[("conversations", Some("conversations"), true)],
            RecordFormat::Text => &[("text", Some("text"), true)],
            RecordFormat::TextLabel => {
                &[("text", Some("text"), true), ("label", Some("label"), true)]
            }
            RecordFormat::PromptResponse => &[
                ("prompt", Some("prompt"), true),
                ("response", Some("response"), true),
                ("system", None, false),
            ],
            RecordFormat::Raw => &[],
        }
    }
}

/// A record format with its column names resolved.
#[derive(Clone, Debug)]
pub struct Formatter {
    pub format: RecordFormat,
    /// role -> column name (only roles that are read).
    cols: BTreeMap<&'static str, String>,
    classes: Option<Vec<String>>,
}

impl Formatter {
    /// `columns`: role -> column name overrides; `classes`: label names for `text_label`.
    pub fn new(
        format: RecordFormat,
        columns: &BTreeMap<String, String>,
        classes: Option<&[String]>,
    ) -> Result<Self, DataError> {
        let roles = format.roles();
        if let Some(bad) = columns
            .keys()
            .find(|k| !roles.iter().any(|r| r.0 == k.as_str()))
        {
            let names: Vec<&str> = roles.iter().map(|r| r.0).collect();
            return Err(DataError::Spec(format!(
                "columns: unknown role '{bad}' for format \"{}\" (expected one of: {})",
                format.as_str(),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )));
        }
        if classes.is_some() && format != RecordFormat::TextLabel {
            return Err(DataError::Spec(format!(
                "classes: only used by format \"text_label\", not \"{}\"",
                format.as_str()
            )));
        }
        let mut cols = BTreeMap::new();
        for &(role, default, _) in roles {
            if let Some(c) = columns.get(role).map(String::as_str).or(default) {
                cols.insert(role, c.to_string());
            }
        }
        Ok(Formatter {
            format,
            cols,
            classes: classes.map(|c| c.iter().map(|n| n.replace('_', " ")).collect()),
        })
    }

    /// Column read for `role`, if any.
    pub fn column(&self, role: &str) -> Option<&str> {
        self.cols.get(role).map(String::as_str)
    }

    /// Columns every row must have.
    pub fn required_columns(&self) -> Vec<String> {
        self.format
            .roles()
            .iter()
            .filter(|r| r.2)
            .filter_map(|r| self.cols.get(r.0).cloned())
            .collect()
    }

    /// Uses these class names when `text_label` got none from the recipe (HF ClassLabel names
    /// found in `dataset_info.json`).
    pub fn set_default_classes(&mut self, names: &[String]) {
        if self.format == RecordFormat::TextLabel && self.classes.is_none() {
            self.classes = Some(names.iter().map(|n| n.replace('_', " ")).collect());
        }
    }

    pub fn to_example(&self, fields: Fields, loc: &Location) -> Result<Example, DataError> {
        let mut ex = Example {
            source: loc.to_string(),
            ..Example::default()
        };
        let get = |role: &str| -> Result<String, DataError> {
            let col = &self.cols[role];
            match fields.get(col) {
                None => Err(missing_in_row(loc, col, &fields)),
                Some(v) => text_value(v, col, loc),
            }
        };
        // Optional roles: missing or null reads as "".
        let get_opt = |role: &str| -> Result<Option<String>, DataError> {
            match self
                .cols
                .get(role)
                .and_then(|c| fields.get(c).map(|v| (c, v)))
            {
                None | Some((_, Value::Null)) => Ok(None),
                Some((c, v)) => text_value(v, c, loc).map(Some),
            }
        };
        let msg = |role: Role, content: String| Message {
            role,
            content,
            metadata: String::new(),
        };
        match self.format {
            RecordFormat::Alpaca => {
                let instruction = get("instruction")?;
                let input = get_opt("input")?.unwrap_or_default();
                let output = get("output")?;
                if let Some(s) = get_opt("system")? {
                    ex.messages.push(msg(Role::System, s));
                }
                let user = if input.is_empty() {
                    instruction.clone()
                } else {
                    format!("{instruction}\n{input}")
                };
                ex.messages.push(msg(Role::User, user));
                ex.messages.push(msg(Role::Assistant, output));
                ex.extra.insert("instruction".into(), instruction.into());
                ex.extra.insert("input".into(), input.into());
            }
            RecordFormat::PromptResponse => {
                if let Some(s) = get_opt("system")? {
                    ex.messages.push(msg(Role::System, s));
                }
                ex.messages.push(msg(Role::User, get("prompt")?));
                ex.messages.push(msg(Role::Assistant, get("response")?));
            }
            RecordFormat::Text => ex.messages.push(msg(Role::Text, get("text")?)),
            RecordFormat::TextLabel => {
                let text = get("text")?;
                let col = &self.cols["label"];
                let raw = fields
                    .get(col)
                    .ok_or_else(|| missing_in_row(loc, col, &fields))?;
                let label = self.label_text(raw, col, loc)?;
                ex.messages.push(msg(Role::User, text));
                ex.messages.push(msg(Role::Assistant, label));
                ex.extra.insert("label".into(), raw.clone());
            }
            RecordFormat::Conversations => {
                let col = &self.cols["conversations"];
                let turns = fields
                    .get(col)
                    .ok_or_else(|| missing_in_row(loc, col, &fields))?;
                conversation(turns, col, loc, &mut ex)?;
            }
            RecordFormat::Raw => ex.extra = fields,
        }
        Ok(ex)
    }

    fn label_text(&self, raw: &Value, col: &str, loc: &Location) -> Result<String, DataError> {
        let index = match raw {
            Value::Number(n) => n.as_u64(),
            Value::String(s) if self.classes.is_some() => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        match (index, &self.classes) {
            (Some(i), Some(classes)) => classes.get(i as usize).cloned().ok_or_else(|| {
                DataError::row(
                    loc,
                    format!(
                        "column '{col}': label {i} is out of range for {} classes",
                        classes.len()
                    ),
                )
            }),
            _ => text_value(raw, col, loc),
        }
    }
}

/// A text field: strings as they are, numbers and booleans printed; anything else is an error.
fn text_value(v: &Value, col: &str, loc: &Location) -> Result<String, DataError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(DataError::row(
            loc,
            format!(
                "column '{col}' should be a string, got {}",
                json_type_name(other)
            ),
        )),
    }
}

/// Reads a ChatGLM3 (`role`/`content`) or ShareGPT (`from`/`value`) turn list into `ex`.
fn conversation(
    turns: &Value,
    col: &str,
    loc: &Location,
    ex: &mut Example,
) -> Result<(), DataError> {
    let err = |m: String| DataError::row(loc, m);
    let turns = match turns {
        Value::Array(t) => t,
        other => {
            return Err(err(format!(
                "column '{col}' should be a list of messages, got {}",
                json_type_name(other)
            )))
        }
    };
    if turns.is_empty() {
        return Err(err(format!("column '{col}' has no messages")));
    }
    for (i, t) in turns.iter().enumerate() {
        let Value::Object(t) = t else {
            return Err(err(format!(
                "{col}[{i}] should be an object, got {}",
                json_type_name(t)
            )));
        };
        let (role_key, content_key) = if t.contains_key("role") {
            ("role", "content")
        } else {
            ("from", "value")
        };
        let role_name = match t.get(role_key) {
            Some(Value::String(s)) => s.as_str(),
            _ => {
                return Err(err(format!(
                    "{col}[{i}] has no string \"role\" (or \"from\")"
                )))
            }
        };
        let role = Role::parse(role_name)
            .filter(|r| *r != Role::Text)
            .ok_or_else(|| err(format!("{col}[{i}]: unknown role '{role_name}'")))?;
        let content = match t.get(content_key) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            // Tool calls and results are sometimes stored as JSON; keep them as JSON text.
            Some(v) => v.to_string(),
        };
        let metadata = match t.get("metadata") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        };
        if let Some(tools) = t.get("tools").filter(|v| !v.is_null()) {
            ex.extra.insert("tools".into(), tools.clone());
        }
        ex.messages.push(Message {
            role,
            content,
            metadata,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::row::Pos;

    fn loc() -> Location {
        Location {
            file: "d.jsonl".into(),
            pos: Pos::Line(7),
        }
    }

    fn cols(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn conv(f: &Formatter, json: &str) -> Result<Example, String> {
        f.to_example(serde_json::from_str(json).unwrap(), &loc())
            .map_err(|e| e.to_string())
    }

    fn m(role: Role, content: &str) -> Message {
        Message {
            role,
            content: content.into(),
            metadata: String::new(),
        }
    }

    #[test]
    fn alpaca() {
        let f = Formatter::new(RecordFormat::Alpaca, &BTreeMap::new(), None).unwrap();
        assert_eq!(f.required_columns(), ["instruction", "output"]);
        let ex = conv(&f, r#"{"instruction": "将下列句子翻译成英语。", "input": "我喜欢学习。", "output": "I like studying."}"#).unwrap();
        assert_eq!(
            ex.messages,
            vec![
                m(Role::User, "将下列句子翻译成英语。\n我喜欢学习。"),
                m(Role::Assistant, "I like studying.")
            ]
        );
        assert_eq!(ex.source, "d.jsonl:7");
        assert_eq!(
            serde_json::Value::Object(ex.extra).to_string(),
            r#"{"instruction":"将下列句子翻译成英语。","input":"我喜欢学习。"}"#
        );
        // Renamed columns (Chinese-LLaMA's instruct/query/answer), empty and null input.
        let f = Formatter::new(
            RecordFormat::Alpaca,
            &cols(&[
                ("instruction", "instruct"),
                ("input", "query"),
                ("output", "answer"),
            ]),
            None,
        )
        .unwrap();
        for input in [r#""""#, "null"] {
            let ex = conv(
                &f,
                &format!(r#"{{"instruct": "i", "query": {input}, "answer": 5}}"#),
            )
            .unwrap();
            assert_eq!(
                ex.messages,
                vec![m(Role::User, "i"), m(Role::Assistant, "5")]
            );
        }
        assert_eq!(
            conv(&f, r#"{"instruct": "i", "answer": null}"#).unwrap_err(),
            "d.jsonl:7: column 'answer' should be a string, got null"
        );
        assert_eq!(
            conv(&f, r#"{"instruct": ["i"], "answer": "a"}"#).unwrap_err(),
            "d.jsonl:7: column 'instruct' should be a string, got an array"
        );
        assert_eq!(
            conv(&f, r#"{"instruction": "i", "answer": "a"}"#).unwrap_err(),
            "d.jsonl:7: no column 'instruct' (columns: instruction, answer)"
        );
    }

    #[test]
    fn conversations_chatglm3_and_sharegpt() {
        let f = Formatter::new(RecordFormat::Conversations, &BTreeMap::new(), None).unwrap();
        let ex = conv(
            &f,
            r#"{"conversations": [
                {"role": "system", "content": "你是助手", "tools": [{"name": "weather"}]},
                {"role": "user", "content": "北京天气"},
                {"role": "assistant", "metadata": "weather", "content": "tool_call(city='北京')"},
                {"role": "observation", "content": {"temp": 20}},
                {"role": "assistant", "content": "20度"}]}"#,
        )
        .unwrap();
        let mut call = m(Role::Assistant, "tool_call(city='北京')");
        call.metadata = "weather".into();
        assert_eq!(
            ex.messages,
            vec![
                m(Role::System, "你是助手"),
                m(Role::User, "北京天气"),
                call,
                m(Role::Observation, r#"{"temp":20}"#),
                m(Role::Assistant, "20度"),
            ]
        );
        assert_eq!(ex.extra["tools"].to_string(), r#"[{"name":"weather"}]"#);
        let f = Formatter::new(
            RecordFormat::Conversations,
            &cols(&[("conversations", "items")]),
            None,
        )
        .unwrap();
        let ex = conv(
            &f,
            r#"{"items": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}"#,
        )
        .unwrap();
        assert_eq!(
            ex.messages,
            vec![m(Role::User, "hi"), m(Role::Assistant, "hello")]
        );
        assert_eq!(
            conv(&f, r#"{"items": [{"role": "robot", "content": "x"}]}"#).unwrap_err(),
            "d.jsonl:7: items[0]: unknown role 'robot'"
        );
        assert_eq!(
            conv(&f, r#"{"items": "text"}"#).unwrap_err(),
            "d.jsonl:7: column 'items' should be a list of messages, got a string"
        );
        assert_eq!(
            conv(&f, r#"{"items": []}"#).unwrap_err(),
            "d.jsonl:7: column 'items' has no messages"
        );
    }

    #[test]
    fn text_label_with_classes() {
        let classes = ["Unlabeled", "complaint", "no_complaint"].map(String::from);
        let f = Formatter::new(
            RecordFormat::TextLabel,
            &cols(&[("text", "Tweet text"), ("label", "Label")]),
            Some(&classes),
        )
        .unwrap();
        let ex = conv(&f, r#"{"Tweet text": "@EE good upload", "Label": 2}"#).unwrap();
        assert_eq!(
            ex.messages,
            vec![
                m(Role::User, "@EE good upload"),
                m(Role::Assistant, "no complaint")
            ]
        );
        assert_eq!(ex.extra["label"], 2);
        let ex = conv(&f, r#"{"Tweet text": "t", "Label": "1"}"#).unwrap();
        assert_eq!(ex.messages[1], m(Role::Assistant, "complaint"));
        assert_eq!(
            conv(&f, r#"{"Tweet text": "t", "Label": 3}"#).unwrap_err(),
            "d.jsonl:7: column 'Label': label 3 is out of range for 3 classes"
        );
        // Without classes the label is used as text.
        let f = Formatter::new(RecordFormat::TextLabel, &BTreeMap::new(), None).unwrap();
        let ex = conv(&f, r#"{"text": "好", "label": "positive"}"#).unwrap();
        assert_eq!(ex.messages[1], m(Role::Assistant, "positive"));
        let ex = conv(&f, r#"{"text": "好", "label": 1}"#).unwrap();
        assert_eq!(ex.messages[1], m(Role::Assistant, "1"));
    }

    #[test]
    fn prompt_response_text_raw_and_spec_errors() {
        let f = Formatter::new(
            RecordFormat::PromptResponse,
            &cols(&[
                ("prompt", "content"),
                ("response", "summary"),
                ("system", "sys"),
            ]),
            None,
        )
        .unwrap();
        let ex = conv(
            &f,
            r#"{"content": "类型#裤", "summary": "宽松", "sys": "s"}"#,
        )
        .unwrap();
        assert_eq!(
            ex.messages,
            vec![
                m(Role::System, "s"),
                m(Role::User, "类型#裤"),
                m(Role::Assistant, "宽松")
            ]
        );
        assert!(ex.extra.is_empty());
        let ex = conv(&f, r#"{"content": "p", "summary": "r"}"#).unwrap();
        assert_eq!(ex.messages.len(), 2);

        let f = Formatter::new(RecordFormat::Text, &cols(&[("text", "review")]), None).unwrap();
        let ex = conv(&f, r#"{"review": "早餐太差", "label": 0}"#).unwrap();
        assert_eq!(ex.messages, vec![m(Role::Text, "早餐太差")]);

        let f = Formatter::new(RecordFormat::Raw, &BTreeMap::new(), None).unwrap();
        let ex = conv(&f, r#"{"b": 1, "a": [true]}"#).unwrap();
        assert!(ex.messages.is_empty());
        assert_eq!(
            serde_json::Value::Object(ex.extra).to_string(),
            r#"{"b":1,"a":[true]}"#
        );

        let e = Formatter::new(RecordFormat::Alpaca, &cols(&[("prompt", "x")]), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "columns: unknown role 'prompt' for format \"alpaca\" (expected one of: instruction, input, output, system)"
        );
        let e =
            Formatter::new(RecordFormat::Text, &BTreeMap::new(), Some(&["a".into()])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "classes: only used by format \"text_label\", not \"text\""
        );
    }
}
