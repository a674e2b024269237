//! `labelSelector` and `fieldSelector` as the API server parses and applies them. Label
//! selectors have the full set-based string syntax (`k`, `!k`, `k=v`, `k==v`, `k!=v`,
//! `k in (a,b)`, `k notin (a,b)`, `k>1`, `k<1`; a comma is AND). The quirk worth knowing: the
//! negative operators `!=` and `notin` also match objects that do not carry the label at all,
//! which is what makes kube-proxy's `!service.kubernetes.io/service-proxy-name` style selectors
//! and `k!=v` differ. Field selectors are the `=`/`==`/`!=` terms over the few fields the real
//! API server indexes for each kind; any other field is a 400, as upstream.

use std::collections::BTreeSet;

use serde_json::Value;

use super::resources::Resource;

/// A selector the API server would reject with 400 Bad Request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement in {selector:?}: {reason}")]
pub(crate) struct SelectorError {
    selector: String,
    reason: String,
}

fn fail(selector: &str, reason: impl Into<String>) -> SelectorError {
    SelectorError {
        selector: selector.to_owned(),
        reason: reason.into(),
    }
}

/// A parsed `labelSelector`: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Exists,
    DoesNotExist,
    Equals(String),
    NotEquals(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    GreaterThan(i64),
    LessThan(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Not,
    Equals,
    DoubleEquals,
    NotEquals,
    Open,
    Close,
    Comma,
    Greater,
    Less,
}

fn tokenize(selector: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = selector.chars().peekable();
    while let Some(c) = chars.next() {
        let token = match c {
            c if c.is_whitespace() => continue,
            '!' if chars.peek() == Some(&'=') => {
                chars.next();
                Token::NotEquals
            }
            '!' => Token::Not,
            '=' if chars.peek() == Some(&'=') => {
                chars.next();
                Token::DoubleEquals
            }
            '=' => Token::Equals,
            '(' => Token::Open,
            ')' => Token::Close,
            ',' => Token::Comma,
            '>' => Token::Greater,
            '<' => Token::Less,
            c => {
                let mut word = String::from(c);
                while let Some(&next) = chars.peek() {
                    if next.is_whitespace() || "!=(),<>".contains(next) {
                        break;
                    }
                    word.push(next);
                    chars.next();
                }
                Token::Word(word)
            }
        };
        tokens.push(token);
    }
    tokens
}

impl LabelSelector {
    /// Parses the string form; the empty string selects everything.
    pub(crate) fn parse(selector: &str) -> Result<LabelSelector, SelectorError> {
        let tokens = tokenize(selector);
        let mut requirements = Vec::new();
        let mut at = 0;
        while at < tokens.len() {
            let (requirement, next) = parse_requirement(selector, &tokens, at)?;
            requirements.push(requirement);
            at = next;
            match tokens.get(at) {
                None => {}
                Some(Token::Comma) if at + 1 < tokens.len() => at += 1,
                Some(Token::Comma) => return Err(fail(selector, "trailing comma")),
                Some(other) => {
                    return Err(fail(
                        selector,
                        format!("found {other:?}, expected ',' or end"),
                    ))
                }
            }
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether an object with these labels (`metadata.labels`, absent = none) is selected.
    pub(crate) fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            match (&r.op, value) {
                (Op::Exists, v) => v.is_some(),
                (Op::DoesNotExist, v) => v.is_none(),
                (Op::Equals(want), Some(v)) => v == want,
                (Op::NotEquals(want), Some(v)) => v != want,
                (Op::In(set), Some(v)) => set.contains(v),
                (Op::NotIn(set), Some(v)) => !set.contains(v),
                (Op::GreaterThan(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v > *n),
                (Op::LessThan(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v < *n),
                // Kubernetes: the negative operators select objects without the label too.
                (Op::NotEquals(_) | Op::NotIn(_), None) => true,
                (_, None) => false,
            }
        })
    }
}

fn parse_requirement(
    selector: &str,
    tokens: &[Token],
    at: usize,
) -> Result<(Requirement, usize), SelectorError> {
    let word = |i: usize| match tokens.get(i) {
        Some(Token::Word(w)) => Some(w.clone()),
        _ => None,
    };
    if tokens.get(at) == Some(&Token::Not) {
        let key = word(at + 1).ok_or_else(|| fail(selector, "expected a key after '!'"))?;
        let op = Op::DoesNotExist;
        return Ok((Requirement { key, op }, at + 2));
    }
    let key = word(at).ok_or_else(|| fail(selector, "expected a key"))?;
    let at = at + 1;
    // `k=` (an empty value) is legal: the value token is optional for equality operators.
    let value_at = |i: usize| match tokens.get(i) {
        Some(Token::Word(w)) => (w.clone(), i + 1),
        _ => (String::new(), i),
    };
    let (op, next) = match tokens.get(at) {
        None | Some(Token::Comma) => (Op::Exists, at),
        Some(Token::Equals | Token::DoubleEquals) => {
            let (v, next) = value_at(at + 1);
            (Op::Equals(v), next)
        }
        Some(Token::NotEquals) => {
            let (v, next) = value_at(at + 1);
            (Op::NotEquals(v), next)
        }
        Some(Token::Greater | Token::Less) => {
            let n = word(at + 1)
                .and_then(|w| w.parse::<i64>().ok())
                .ok_or_else(|| fail(selector, format!("{key}: expected an integer")))?;
            let op = if tokens[at] == Token::Greater {
                Op::GreaterThan(n)
            } else {
                Op::LessThan(n)
            };
            (op, at + 2)
        }
        Some(Token::Word(w)) if w == "in" || w == "notin" => {
            let (set, next) = parse_set(selector, tokens, at + 1)?;
            let op = if w == "in" {
                Op::In(set)
            } else {
                Op::NotIn(set)
            };
            (op, next)
        }
        Some(other) => {
            return Err(fail(
                selector,
                format!("{key}: found {other:?}, expected an operator"),
            ))
        }
    };
    Ok((Requirement { key, op }, next))
}

fn parse_set(
    selector: &str,
    tokens: &[Token],
    mut at: usize,
) -> Result<(BTreeSet<String>, usize), SelectorError> {
    if tokens.get(at) != Some(&Token::Open) {
        return Err(fail(selector, "expected '(' after in/notin"));
    }
    at += 1;
    let mut set = BTreeSet::new();
    loop {
        match tokens.get(at) {
            Some(Token::Word(w)) => {
                set.insert(w.clone());
                at += 1;
            }
            Some(Token::Comma) => at += 1,
            Some(Token::Close) if !set.is_empty() => return Ok((set, at + 1)),
            Some(Token::Close) => {
                return Err(fail(
                    selector,
                    "for 'in', 'notin' operators, values set can't be empty",
                ))
            }
            _ => return Err(fail(selector, "unterminated value set")),
        }
    }
}

/// A parsed `fieldSelector`: `field=value`, `field==value` and `field!=value` terms, ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses the string form for objects of `resource`, rejecting fields it cannot select on.
    pub(crate) fn parse(
        selector: &str,
        resource: &Resource,
    ) -> Result<FieldSelector, SelectorError> {
        let mut terms = Vec::new();
        for term in split_unescaped(selector, ',') {
            if term.trim().is_empty() {
                continue;
            }
            let (field, equal, value) = if let Some((f, v)) = split_once_unescaped(&term, "!=") {
                (f, false, v)
            } else if let Some((f, v)) = split_once_unescaped(&term, "==") {
                (f, true, v)
            } else if let Some((f, v)) = split_once_unescaped(&term, "=") {
                (f, true, v)
            } else {
                return Err(fail(
                    selector,
                    format!("invalid field selector term {term:?}"),
                ));
            };
            let field = field.trim().to_owned();
            if !resource.field_labels().contains(&field.as_str()) {
                return Err(fail(
                    selector,
                    format!(
                        "field label not supported: {field} (for {}; supported: {})",
                        resource.kind,
                        resource.field_labels().join(", ")
                    ),
                ));
            }
            terms.push((field, equal, unescape(value.trim())));
        }
        Ok(FieldSelector { terms })
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.terms
            .iter()
            .all(|(field, equal, value)| (field_value(object, field) == *value) == *equal)
    }
}

/// The string value the API server compares a field selector with; absent fields are "" (and
/// an absent boolean is "false", as Go's zero value prints).
fn field_value(object: &Value, field: &str) -> String {
    let mut at = object;
    for part in field.split('.') {
        match at.get(part) {
            Some(v) => at = v,
            None if field == "spec.unschedulable" => return "false".to_owned(),
            None => return String::new(),
        }
    }
    match at {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Splits at `sep` where it is not escaped with a backslash (field selector values may contain
/// `\,` and `\=`); escapes are kept for [`unescape`].
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let last = parts.last_mut().expect("parts is never empty");
        if c == '\\' {
            last.push(c);
            if let Some(next) = chars.next() {
                last.push(next);
            }
        } else if c == sep {
            parts.push(String::new());
        } else {
            last.push(c);
        }
    }
    parts
}

fn split_once_unescaped<'a>(s: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if s[i..].starts_with(op) {
            return Some((&s[..i], &s[i + op.len()..]));
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::apiserver::resources::RESOURCES;

    fn labels(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn selects(selector: &str, l: Value) -> bool {
        LabelSelector::parse(selector)
            .unwrap()
            .matches(Some(&labels(l)))
    }

    #[test]
    fn kube_proxy_selector() {
        let sel = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
        assert!(selects(sel, json!({})));
        assert!(selects(sel, json!({"app": "x"})));
        assert!(!selects(sel, json!({"service.kubernetes.io/headless": ""})));
        assert!(!selects(
            sel,
            json!({"service.kubernetes.io/service-proxy-name": "cilium"})
        ));
        assert!(LabelSelector::parse(sel).unwrap().matches(None));
    }

    #[test]
    fn every_operator() {
        let l = json!({"a": "1", "b": "x", "c": ""});
        for (sel, want) in [
            ("", true),
            ("a", true),
            ("z", false),
            ("!z", true),
            ("!a", false),
            ("a=1", true),
            ("a==1", true),
            ("a = 1", true),
            ("a=2", false),
            ("a!=2", true),
            ("z!=2", true),
            ("a!=1", false),
            ("c=", true),
            ("c=,a=1", true),
            ("b in (x, y)", true),
            ("b in (y)", false),
            ("z in (y)", false),
            ("b notin (y)", true),
            ("z notin (y)", true),
            ("b notin (x,y)", false),
            ("a>0", true),
            ("a<1", false),
            ("z>0", false),
            ("a=1,b in (x),!z", true),
            ("a=1,b in (x),z", false),
        ] {
            assert_eq!(selects(sel, l.clone()), want, "{sel}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for sel in [
            "a in ()", "a in (x", "a,", "!", "a b", "a>x", "=x", "a in x",
        ] {
            assert!(LabelSelector::parse(sel).is_err(), "{sel}");
        }
    }

    #[test]
    fn field_selectors() {
        let services = &RESOURCES[0];
        assert_eq!(services.kind, "Service");
        let obj = json!({"metadata": {"name": "a,b", "namespace": "default"}, "spec": {"type": "ClusterIP"}});
        let sel = |s: &str| FieldSelector::parse(s, services).unwrap().matches(&obj);
        assert!(sel("metadata.name=a\\,b"));
        assert!(sel("metadata.name==a\\,b,metadata.namespace=default"));
        assert!(!sel("metadata.namespace!=default"));
        assert!(sel("spec.type=ClusterIP"));
        assert!(sel(""));
        assert!(FieldSelector::parse("spec.nope=1", services).is_err());
        assert!(FieldSelector::parse("metadata.name", services).is_err());
    }
}
