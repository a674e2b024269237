//! The input as received: Kubernetes objects parsed with k8s-openapi types, plus the loader that
//! turns JSON or multi-document YAML text into a [`Snapshot`]. Loading is deliberately lenient
//! per object and strict per document: text that is not YAML/JSON at all is a [`LoadError`]
//! (the user passed the wrong file), while one object that does not fit its schema becomes a
//! [`Diagnostic`] and is skipped, so a single bad object never hides the rest of the cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Diagnostic;

/// Every object kube-nft reads, exactly as the API server (or a file) gave it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `v1 Service`.
    pub services: Vec<Service>,
    /// `discovery.k8s.io/v1 EndpointSlice`.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// `v1 Endpoints` (legacy; mirrored into slices by `normalize`).
    pub endpoints: Vec<Endpoints>,
    /// `v1 Node`.
    pub nodes: Vec<Node>,
    /// `networking.k8s.io/v1 ServiceCIDR`.
    pub service_cidrs: Vec<ServiceCIDR>,
}

/// One input text and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// File path, or `-` for stdin; used to name the source in errors and diagnostics.
    pub origin: String,
    /// The whole text: JSON, or YAML with any number of `---` separated documents.
    pub text: String,
}

/// The result of [`load`]: the snapshot plus everything that was set aside on the way.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// Objects of the kinds kube-nft uses, in input order.
    pub snapshot: Snapshot,
    /// Objects that could not be read as their kind; each was skipped.
    pub diagnostics: Vec<Diagnostic>,
    /// Objects of kinds kube-nft does not use, counted by `apiVersion/kind` (or `kind` alone
    /// when the object has no `apiVersion`).
    pub skipped: BTreeMap<String, usize>,
}

/// A source that is not a YAML/JSON stream of objects.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// The text does not parse as YAML or JSON.
    #[error("{origin}{}: {message}", line_suffix(*.line))]
    Syntax {
        /// The source's origin.
        origin: String,
        /// 1-based line of the error, when the parser knows it.
        line: Option<u64>,
        /// The parser's message.
        message: String,
    },
    /// A document parsed but is a scalar rather than an object or a list of objects.
    #[error("{origin}: document {document} is not an object (found {found})")]
    NotAnObject {
        /// The source's origin.
        origin: String,
        /// 1-based index of the document in the source.
        document: usize,
        /// The JSON type that was found instead (`string`, `number`, `bool`).
        found: &'static str,
    },
}

fn line_suffix(line: Option<u64>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

/// Reads every source into one snapshot.
///
/// Each source is JSON (one value or several concatenated) or multi-document YAML; empty and
/// null documents are ignored. `List` and typed `*List` documents are flattened. Objects of
/// unused kinds are counted in [`Loaded::skipped`]; objects that fail to deserialize become
/// diagnostics. Only unparseable text fails the whole load.
pub fn load(sources: &[Source]) -> Result<Loaded, LoadError> {
    let mut loaded = Loaded::default();
    for source in sources {
        for (index, doc) in documents(source)?.into_iter().enumerate() {
            match doc {
                Value::Null => {}
                Value::Object(_) => loaded.object(&source.origin, doc, None),
                Value::Array(items) => {
                    // A bare array of objects is read like the items of a `List`.
                    for item in items {
                        loaded.object(&source.origin, item, None);
                    }
                }
                other => {
                    return Err(LoadError::NotAnObject {
                        origin: source.origin.clone(),
                        document: index + 1,
                        found: json_type(&other),
                    })
                }
            }
        }
    }
    Ok(loaded)
}

/// Splits one source into documents. Text that looks like JSON is read as a JSON stream first
/// (its errors carry exact lines); if that fails it may still be YAML (a flow sequence also
/// starts with `[`), so YAML gets the last word, but a JSON error is reported for JSON-looking
/// text that neither parser accepts.
fn documents(source: &Source) -> Result<Vec<Value>, LoadError> {
    let trimmed = source.text.trim_start();
    let json = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let stream = serde_json::Deserializer::from_str(&source.text).into_iter::<Value>();
        match stream.collect::<Result<Vec<Value>, _>>() {
            Ok(docs) => return Ok(docs),
            Err(e) => Some(LoadError::Syntax {
                origin: source.origin.clone(),
                line: Some(e.line() as u64),
                message: e.to_string(),
            }),
        }
    } else {
        None
    };
    serde_saphyr::from_multiple::<Value>(&source.text).map_err(|e| {
        json.unwrap_or_else(|| LoadError::Syntax {
            origin: source.origin.clone(),
            line: e.location().map(|l| l.line()),
            // The plain message: the snippet rendering is multi-line and repeats the source.
            message: e.without_snippet().to_string(),
        })
    })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `(apiVersion, kind)` of a list's items when the list is typed (`ServiceList` → `Service`).
type Inferred<'a> = Option<(&'a str, &'a str)>;

impl Loaded {
    /// Files one object (or the items of a list) into the snapshot.
    fn object(&mut self, origin: &str, mut value: Value, inferred: Inferred<'_>) {
        let Value::Object(map) = &mut value else {
            let found = json_type(&value);
            self.diagnostics.push(Diagnostic::new(
                origin,
                "",
                "",
                ".",
                format!("list item is a {found}, not an object; skipped"),
            ));
            return;
        };
        // Items of typed lists may omit apiVersion/kind; fill them in from the list so the
        // k8s-openapi deserializer and the dispatch below see a complete object.
        if let Some((api_version, kind)) = inferred {
            map.entry("apiVersion")
                .or_insert_with(|| Value::String(api_version.to_owned()));
            map.entry("kind")
                .or_insert_with(|| Value::String(kind.to_owned()));
        }
        let api_version = str_field(&value, "apiVersion").to_owned();
        let kind = str_field(&value, "kind").to_owned();

        if let Some(list_kind) = kind.strip_suffix("List") {
            if let Some(Value::Array(items)) = value.get_mut("items").map(Value::take) {
                let item_type =
                    (!list_kind.is_empty()).then_some((api_version.as_str(), list_kind));
                for item in items {
                    self.object(origin, item, item_type);
                }
                return;
            }
        }

        match (api_version.as_str(), kind.as_str()) {
            ("v1", "Service") => push(&mut self.diagnostics, &mut self.snapshot.services, value),
            ("discovery.k8s.io/v1", "EndpointSlice") => push(
                &mut self.diagnostics,
                &mut self.snapshot.endpoint_slices,
                value,
            ),
            ("v1", "Endpoints") => push(&mut self.diagnostics, &mut self.snapshot.endpoints, value),
            ("v1", "Node") => push(&mut self.diagnostics, &mut self.snapshot.nodes, value),
            ("networking.k8s.io/v1", "ServiceCIDR") => push(
                &mut self.diagnostics,
                &mut self.snapshot.service_cidrs,
                value,
            ),
            ("networking.k8s.io/v1beta1", "ServiceCIDR") => {
                // v1beta1 has the same schema; k8s-openapi checks apiVersion, so relabel it.
                if let Value::Object(map) = &mut value {
                    map.insert(
                        "apiVersion".to_owned(),
                        Value::String("networking.k8s.io/v1".to_owned()),
                    );
                }
                push(
                    &mut self.diagnostics,
                    &mut self.snapshot.service_cidrs,
                    value,
                )
            }
            (_, "") => {
                let (namespace, name) = metadata(&value);
                self.diagnostics.push(Diagnostic::new(
                    origin,
                    namespace,
                    name,
                    "kind",
                    "object has no kind; skipped",
                ));
            }
            ("", kind) => *self.skipped.entry(kind.to_owned()).or_default() += 1,
            (api_version, kind) => {
                *self
                    .skipped
                    .entry(format!("{api_version}/{kind}"))
                    .or_default() += 1
            }
        }
    }
}

/// Deserializes one object into its k8s-openapi type, or records why it could not be.
fn push<T: DeserializeOwned>(diagnostics: &mut Vec<Diagnostic>, into: &mut Vec<T>, value: Value) {
    let kind = str_field(&value, "kind").to_owned();
    let (namespace, name) = metadata(&value);
    // serde_path_to_error tracks where in the object deserialization failed, so the
    // diagnostic names the field (`spec.ports[0].port`) instead of the whole object.
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(object) => into.push(object),
        Err(e) => {
            let field = e.path().to_string();
            diagnostics.push(Diagnostic::new(
                kind,
                namespace,
                name,
                field,
                format!("{}; object skipped", e.into_inner()),
            ))
        }
    }
}

fn str_field<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// `(namespace, name)` from raw metadata, for naming an object that failed to deserialize.
fn metadata(value: &Value) -> (String, String) {
    let meta = value.get("metadata");
    let get = |key| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    (get("namespace"), get("name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> Source {
        Source {
            origin: "test.yaml".to_owned(),
            text: text.to_owned(),
        }
    }

    fn load_one(text: &str) -> Loaded {
        match load(&[src(text)]) {
            Ok(loaded) => loaded,
            Err(e) => panic!("load failed: {e}"),
        }
    }

    #[test]
    fn multi_document_yaml_with_empty_documents() {
        let loaded = load_one(
            "---\napiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\n\
             spec:\n  clusterIP: 10.0.0.1\n  ports: [{port: 80}]\n---\n---\n~\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: a-1, namespace: ns}\naddressType: IPv4\nendpoints: []\n",
        );
        assert_eq!(loaded.snapshot.services.len(), 1);
        assert_eq!(loaded.snapshot.endpoint_slices.len(), 1);
        let spec = loaded.snapshot.services[0].spec.as_ref();
        assert_eq!(
            spec.and_then(|s| s.ports.as_ref()).map(|p| p[0].port),
            Some(80)
        );
        assert!(loaded.diagnostics.is_empty());
    }

    #[test]
    fn json_objects_including_concatenated_ones() {
        let loaded = load_one(
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}}
               {"apiVersion":"networking.k8s.io/v1","kind":"ServiceCIDR",
                "metadata":{"name":"kubernetes"},"spec":{"cidrs":["10.96.0.0/12"]}}"#,
        );
        assert_eq!(loaded.snapshot.nodes.len(), 1);
        assert_eq!(loaded.snapshot.service_cidrs.len(), 1);
    }

    #[test]
    fn lists_are_flattened_and_typed_list_items_get_their_kind() {
        let loaded = load_one(
            "apiVersion: v1\nkind: List\nitems:\n\
             - {apiVersion: v1, kind: Node, metadata: {name: n1}}\n\
             - apiVersion: v1\n  kind: ServiceList\n  items:\n  - metadata: {name: s, namespace: d}\n\
             - {apiVersion: networking.k8s.io/v1beta1, kind: ServiceCIDR, metadata: {name: c}}\n",
        );
        assert_eq!(loaded.snapshot.nodes.len(), 1);
        assert_eq!(loaded.snapshot.services.len(), 1);
        assert_eq!(loaded.snapshot.service_cidrs.len(), 1);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    }

    #[test]
    fn malformed_object_becomes_a_diagnostic_and_the_rest_load() {
        let loaded = load_one(
            "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: ns}\n\
             spec:\n  ports: [{port: abc}]\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: good, namespace: ns}\n",
        );
        assert_eq!(loaded.snapshot.services.len(), 1);
        assert_eq!(loaded.diagnostics.len(), 1);
        let d = &loaded.diagnostics[0];
        assert_eq!(
            (d.kind.as_str(), d.namespace.as_str(), d.name.as_str()),
            ("Service", "ns", "bad")
        );
        assert!(d.message.contains("abc"), "{}", d.message);
        assert!(d.message.ends_with("object skipped"), "{}", d.message);
    }

    #[test]
    fn unknown_kinds_are_counted() {
        let loaded = load_one(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: c}\n---\n\
             kind: Thing\n",
        );
        let expected: BTreeMap<String, usize> = [
            ("Thing".to_owned(), 1),
            ("apps/v1/Deployment".to_owned(), 1),
            ("v1/ConfigMap".to_owned(), 2),
        ]
        .into();
        assert_eq!(loaded.skipped, expected);
        assert!(loaded.diagnostics.is_empty());
    }

    #[test]
    fn object_without_kind_is_a_diagnostic() {
        let loaded = load_one("metadata: {name: x}\n");
        assert_eq!(loaded.diagnostics.len(), 1);
        assert_eq!(loaded.diagnostics[0].field, "kind");
        assert_eq!(loaded.diagnostics[0].kind, "test.yaml");
    }

    #[test]
    fn yaml_syntax_error_names_origin_and_line() {
        let err = load(&[src("apiVersion: v1\nkind: Service\nmetadata: {name: [\n")])
            .expect_err("must fail");
        let LoadError::Syntax { origin, line, .. } = &err else {
            panic!("unexpected error {err:?}");
        };
        assert_eq!(origin, "test.yaml");
        assert!(line.is_some());
        assert!(err.to_string().starts_with("test.yaml:"), "{err}");
    }

    #[test]
    fn json_syntax_error_names_origin_and_line() {
        let err = load(&[src("{\"kind\": \"Service\",\n \"x\": [1}")]).expect_err("must fail");
        assert!(
            matches!(&err, LoadError::Syntax { line: Some(2), .. }),
            "{err:?}"
        );
    }

    #[test]
    fn yaml_flow_sequence_is_not_mistaken_for_json() {
        let loaded = load_one("[{apiVersion: v1, kind: Node, metadata: {name: n1}}]\n");
        assert_eq!(loaded.snapshot.nodes.len(), 1);
    }

    #[test]
    fn scalar_document_is_an_error() {
        let err = load(&[src("just text\n")]).expect_err("must fail");
        assert!(matches!(
            err,
            LoadError::NotAnObject {
                document: 1,
                found: "string",
                ..
            }
        ));
    }
}
