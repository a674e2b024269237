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
use serde::Deserialize;
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

/// One object of a kind kube-nft uses, typed.
// Sizes differ (a Node is about twice a Service), but an object only passes from the loader
// to its sink, by value, once: boxing would cost an allocation per object and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Object {
    /// `v1 Service`.
    Service(Service),
    /// `discovery.k8s.io/v1 EndpointSlice`.
    EndpointSlice(EndpointSlice),
    /// `v1 Endpoints`.
    Endpoints(Endpoints),
    /// `v1 Node`.
    Node(Node),
    /// `networking.k8s.io/v1 ServiceCIDR` (v1beta1 relabelled).
    ServiceCidr(ServiceCIDR),
}

impl Snapshot {
    /// Adds an object, in input order.
    pub fn push(&mut self, object: Object) {
        match object {
            Object::Service(o) => self.services.push(o),
            Object::EndpointSlice(o) => self.endpoint_slices.push(o),
            Object::Endpoints(o) => self.endpoints.push(o),
            Object::Node(o) => self.nodes.push(o),
            Object::ServiceCidr(o) => self.service_cidrs.push(o),
        }
    }
}

/// Reads every source into one snapshot.
///
/// Each source is JSON (one value or several concatenated) or multi-document YAML; empty and
/// null documents are ignored. `List` and typed `*List` documents are flattened. Objects of
/// unused kinds are counted in [`Loaded::skipped`]; objects that fail to deserialize become
/// diagnostics. Only unparseable text fails the whole load.
pub fn load(sources: &[Source]) -> Result<Loaded, LoadError> {
    let mut snapshot = Snapshot::default();
    let mut loaded = load_each(sources, |object| snapshot.push(object))?;
    loaded.snapshot = snapshot;
    Ok(loaded)
}

/// [`load`], handing each object to `sink` as soon as it is read instead of keeping a
/// snapshot (the returned [`Loaded::snapshot`] is empty), so a caller that folds objects into a
/// compact form never holds the whole input twice. The items of a JSON `List` are read one at a
/// time: `kubectl get … -o json` of a large cluster is one such document, and as a
/// `serde_json::Value` tree it takes about ten times its text. YAML documents are read whole.
pub fn load_each(sources: &[Source], mut sink: impl FnMut(Object)) -> Result<Loaded, LoadError> {
    let mut loaded = Loaded::default();
    for source in sources {
        let mut loader = Loader {
            loaded: &mut loaded,
            sink: &mut sink,
        };
        if let Some(result) = stream_json(source, &mut loader) {
            result?;
            continue;
        }
        for (index, doc) in documents(source)?.into_iter().enumerate() {
            loader.document(&source.origin, index, doc)?;
        }
    }
    Ok(loaded)
}

/// Where [`load_each`] files what it reads.
struct Loader<'a, F: FnMut(Object)> {
    loaded: &'a mut Loaded,
    sink: &'a mut F,
}

impl<F: FnMut(Object)> Loader<'_, F> {
    /// One whole document (0-based `index` in its source).
    fn document(&mut self, origin: &str, index: usize, doc: Value) -> Result<(), LoadError> {
        match doc {
            Value::Null => {}
            Value::Object(_) => self.object(origin, doc, None),
            Value::Array(items) => {
                // A bare array of objects is read like the items of a `List`.
                for item in items {
                    self.object(origin, item, None);
                }
            }
            other => {
                return Err(LoadError::NotAnObject {
                    origin: origin.to_owned(),
                    document: index + 1,
                    found: json_type(&other),
                })
            }
        }
        Ok(())
    }
}

/// Reads a JSON source document by document, streaming the items of each `*List` (see
/// [`load_each`]), or returns `None` when the text does not look like JSON or does not parse
/// as JSON (it may still be YAML: [`documents`] decides and reports). A first pass reads only
/// each document's `kind` and `apiVersion` (JSON does not order keys, and `items` often comes
/// first); the second reads the documents again, feeding list items one at a time.
fn stream_json<F: FnMut(Object)>(
    source: &Source,
    loader: &mut Loader<'_, F>,
) -> Option<Result<(), LoadError>> {
    use serde::de::DeserializeSeed;

    let trimmed = source.text.trim_start();
    if !(trimmed.starts_with('{') || trimmed.starts_with('[')) {
        return None;
    }
    let heads = serde_json::Deserializer::from_str(&source.text)
        .into_iter::<Head>()
        .collect::<Result<Vec<Head>, _>>()
        .ok()?;
    let mut de = serde_json::Deserializer::from_str(&source.text);
    for (index, head) in heads.into_iter().enumerate() {
        let result = match head.list_items() {
            Some(inferred) => ListSeed {
                origin: &source.origin,
                inferred,
                loader: &mut *loader,
            }
            .deserialize(&mut de)
            .map(|_| ()),
            None => match Value::deserialize(&mut de) {
                Ok(doc) => {
                    if let Err(e) = loader.document(&source.origin, index, doc) {
                        return Some(Err(e));
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        // The first pass accepted this text, so only a bug could fail here.
        if let Err(e) = result {
            return Some(Err(LoadError::Syntax {
                origin: source.origin.clone(),
                line: Some(e.line() as u64),
                message: e.to_string(),
            }));
        }
    }
    Some(Ok(()))
}

/// What the first pass of [`stream_json`] keeps of a document: its kind and apiVersion when it
/// is an object whose `items` is an array.
#[derive(Default)]
struct Head {
    api_version: Option<String>,
    kind: Option<String>,
    items_array: bool,
}

impl Head {
    /// For a `*List` with an `items` array (what [`Loaded::object`] flattens): the type its items
    /// inherit (`ServiceList` → `v1 Service`; none for a plain `List`).
    fn list_items(&self) -> Option<Option<(String, String)>> {
        let kind = self.kind.as_deref()?;
        let list_kind = kind.strip_suffix("List")?;
        if !self.items_array {
            return None;
        }
        let api_version = self.api_version.clone().unwrap_or_default();
        Some((!list_kind.is_empty()).then(|| (api_version, list_kind.to_owned())))
    }
}

impl<'de> serde::Deserialize<'de> for Head {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Head, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Head;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON document")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Head, A::Error> {
                let mut head = Head::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        // As values: a kind that is not a string is the object's problem,
                        // reported when the object is read.
                        "kind" => head.kind = map.next_value::<Value>()?.as_str().map(Into::into),
                        "apiVersion" => {
                            head.api_version = map.next_value::<Value>()?.as_str().map(Into::into)
                        }
                        "items" => head.items_array = map.next_value::<IsArray>()?.0,
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(head)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Head, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Head::default())
            }
            fn visit_unit<E>(self) -> Result<Head, E> {
                Ok(Head::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Head, E> {
                Ok(Head::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Head, E> {
                Ok(Head::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Head, E> {
                Ok(Head::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Head, E> {
                Ok(Head::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<Head, E> {
                Ok(Head::default())
            }
        }
        de.deserialize_any(Visitor)
    }
}

/// Whether a value is an array (skipping it either way).
struct IsArray(bool);

impl<'de> serde::Deserialize<'de> for IsArray {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<IsArray, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = IsArray;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<IsArray, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(IsArray(true))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<IsArray, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(IsArray(false))
            }
            fn visit_unit<E>(self) -> Result<IsArray, E> {
                Ok(IsArray(false))
            }
            fn visit_bool<E>(self, _: bool) -> Result<IsArray, E> {
                Ok(IsArray(false))
            }
            fn visit_i64<E>(self, _: i64) -> Result<IsArray, E> {
                Ok(IsArray(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<IsArray, E> {
                Ok(IsArray(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<IsArray, E> {
                Ok(IsArray(false))
            }
            fn visit_str<E>(self, _: &str) -> Result<IsArray, E> {
                Ok(IsArray(false))
            }
        }
        de.deserialize_any(Visitor)
    }
}

/// The second pass over a `*List` document: every other field skipped, each item of `items`
/// filed as it is read.
struct ListSeed<'l, 'a, F: FnMut(Object)> {
    origin: &'l str,
    inferred: Option<(String, String)>,
    loader: &'l mut Loader<'a, F>,
}

impl<'de, F: FnMut(Object)> serde::de::DeserializeSeed<'de> for ListSeed<'_, '_, F> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de, F: FnMut(Object)> serde::de::Visitor<'de> for ListSeed<'_, '_, F> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a List object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "items" {
                map.next_value_seed(ItemsSeed {
                    origin: self.origin,
                    inferred: self.inferred.as_ref(),
                    loader: &mut *self.loader,
                })?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The `items` array of a [`ListSeed`].
struct ItemsSeed<'l, 'a, F: FnMut(Object)> {
    origin: &'l str,
    inferred: Option<&'l (String, String)>,
    loader: &'l mut Loader<'a, F>,
}

impl<'de, F: FnMut(Object)> serde::de::DeserializeSeed<'de> for ItemsSeed<'_, '_, F> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(Object)> serde::de::Visitor<'de> for ItemsSeed<'_, '_, F> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the items of a List")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inferred = self.inferred.map(|(v, k)| (v.as_str(), k.as_str()));
        // Borrowed from the text: an item is scanned, not built as a `Value` tree, unless it
        // needs the general path (see `Loader::item`).
        while let Some(item) = seq.next_element::<&'de serde_json::value::RawValue>()? {
            self.loader.item(self.origin, item.get(), inferred);
        }
        Ok(())
    }
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

impl<F: FnMut(Object)> Loader<'_, F> {
    /// Files one item of a JSON list, given as its text. An item that names one of the kinds
    /// kube-nft reads, with its exact apiVersion, is deserialized straight from the text: at 50k
    /// Services that saves about a third of the load's time (1.5 → 0.95 s) over building each
    /// item's `Value` tree first. Everything else (a kind inferred from a typed list, a nested list, a
    /// v1beta1 ServiceCIDR, an unused kind) and any item that fails takes [`Loader::object`],
    /// so its diagnostics are exactly those of the general path.
    fn item(&mut self, origin: &str, text: &str, inferred: Inferred<'_>) {
        fn direct<T: DeserializeOwned>(text: &str, wrap: fn(T) -> Object) -> Option<Object> {
            let mut de = serde_json::Deserializer::from_str(text);
            T::deserialize(&mut de).ok().map(wrap)
        }
        let head = serde_json::from_str::<Head>(text).unwrap_or_default();
        let object = match (head.api_version.as_deref(), head.kind.as_deref()) {
            (Some("v1"), Some("Service")) => direct(text, Object::Service),
            (Some("discovery.k8s.io/v1"), Some("EndpointSlice")) => {
                direct(text, Object::EndpointSlice)
            }
            (Some("v1"), Some("Endpoints")) => direct(text, Object::Endpoints),
            (Some("v1"), Some("Node")) => direct(text, Object::Node),
            _ => None,
        };
        match object {
            Some(object) => (self.sink)(object),
            None => match serde_json::from_str::<Value>(text) {
                Ok(value) => self.object(origin, value, inferred),
                // The first pass read the list whole, so this is only defensive.
                Err(e) => self.loaded.diagnostics.push(Diagnostic::new(
                    origin,
                    "",
                    "",
                    ".",
                    format!("list item is not JSON ({e}); skipped"),
                )),
            },
        }
    }

    /// Files one object (or the items of a list).
    fn object(&mut self, origin: &str, mut value: Value, inferred: Inferred<'_>) {
        let Value::Object(map) = &mut value else {
            let found = json_type(&value);
            self.loaded.diagnostics.push(Diagnostic::new(
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
            ("v1", "Service") => self.typed(value, Object::Service),
            ("discovery.k8s.io/v1", "EndpointSlice") => self.typed(value, Object::EndpointSlice),
            ("v1", "Endpoints") => self.typed(value, Object::Endpoints),
            ("v1", "Node") => self.typed(value, Object::Node),
            ("networking.k8s.io/v1", "ServiceCIDR") => self.typed(value, Object::ServiceCidr),
            ("networking.k8s.io/v1beta1", "ServiceCIDR") => {
                // v1beta1 has the same schema; k8s-openapi checks apiVersion, so relabel it.
                if let Value::Object(map) = &mut value {
                    map.insert(
                        "apiVersion".to_owned(),
                        Value::String("networking.k8s.io/v1".to_owned()),
                    );
                }
                self.typed(value, Object::ServiceCidr)
            }
            (_, "") => {
                let (namespace, name) = metadata(&value);
                self.loaded.diagnostics.push(Diagnostic::new(
                    origin,
                    namespace,
                    name,
                    "kind",
                    "object has no kind; skipped",
                ));
            }
            ("", kind) => *self.loaded.skipped.entry(kind.to_owned()).or_default() += 1,
            (api_version, kind) => {
                *self
                    .loaded
                    .skipped
                    .entry(format!("{api_version}/{kind}"))
                    .or_default() += 1
            }
        }
    }

    /// Deserializes one object into its k8s-openapi type and hands it on, or records why it
    /// could not be.
    fn typed<T: DeserializeOwned>(&mut self, value: Value, wrap: fn(T) -> Object) {
        let kind = str_field(&value, "kind").to_owned();
        let (namespace, name) = metadata(&value);
        // serde_path_to_error tracks where in the object deserialization failed, so the
        // diagnostic names the field (`spec.ports[0].port`) instead of the whole object.
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(object) => (self.sink)(wrap(object)),
            Err(e) => {
                let field = e.path().to_string();
                self.loaded.diagnostics.push(Diagnostic::new(
                    kind,
                    namespace,
                    name,
                    field,
                    format!("{}; object skipped", e.into_inner()),
                ))
            }
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

    /// What [`load`] makes of `text` when every document is first read whole (the YAML path
    /// and the pre-streaming JSON path), as a comparable string.
    fn whole_documents(text: &str) -> String {
        let mut snapshot = Snapshot::default();
        let mut loaded = Loaded::default();
        let mut sink = |o| snapshot.push(o);
        let mut loader = Loader {
            loaded: &mut loaded,
            sink: &mut sink,
        };
        for (i, doc) in documents(&src(text)).unwrap().into_iter().enumerate() {
            loader.document("test.yaml", i, doc).unwrap();
        }
        loaded.snapshot = snapshot;
        format!("{loaded:?}")
    }

    #[test]
    fn json_lists_stream_their_items_with_the_same_result() {
        let cases = [
            // `items` before `kind`, as `kubectl get -o json` and serde write it.
            r#"{"apiVersion":"v1","items":[
                {"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}},
                {"apiVersion":"v1","kind":"Service","metadata":{"name":"bad","namespace":"ns"},
                 "spec":{"ports":[{"port":"abc"}]}},
                {"apiVersion":"v1","kind":"ServiceList","items":[{"metadata":{"name":"s","namespace":"d"}}]},
                {"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"}},
                "not an object"
               ],"kind":"List","metadata":{"resourceVersion":""}}"#,
            // A typed list whose items carry no kind, the kind after the items.
            r#"{"items":[{"metadata":{"name":"s1","namespace":"d"}},{"metadata":{"name":"s2","namespace":"d"}}],
                "kind":"ServiceList","apiVersion":"v1"}
               {"apiVersion":"v1","kind":"Node","metadata":{"name":"n2"}}"#,
            // Every kind read straight from its text, a duplicate key (the last wins, as in a
            // `Value`), and items that take the general path: a v1beta1 ServiceCIDR, a known
            // kind under another apiVersion.
            r#"{"kind":"List","apiVersion":"v1","items":[
                {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
                 "metadata":{"name":"s-1","namespace":"d","labels":{"kubernetes.io/service-name":"s"}},
                 "addressType":"IPv4","endpoints":[{"addresses":["10.1.0.1"],"conditions":{"ready":true}}],
                 "ports":[{"port":8080,"protocol":"TCP"}]},
                {"apiVersion":"v1","kind":"Endpoints","metadata":{"name":"e","namespace":"d"},
                 "subsets":[{"addresses":[{"ip":"10.1.0.2"}],"ports":[{"port":80}]}]},
                {"apiVersion":"v1","kind":"Service","metadata":{"name":"dup","namespace":"d","name":"dup2"},
                 "spec":{"clusterIP":"10.0.0.9","ports":[{"port":80}]}},
                {"apiVersion":"networking.k8s.io/v1beta1","kind":"ServiceCIDR","metadata":{"name":"c"},
                 "spec":{"cidrs":["10.0.0.0/16"]}},
                {"apiVersion":"v2","kind":"Service","metadata":{"name":"v2"}}
               ]}"#,
            // A List whose `items` is not an array is an unused kind; a bare array of objects.
            r#"{"apiVersion":"v1","kind":"List","items":{"a":1}}
               [{"apiVersion":"v1","kind":"Node","metadata":{"name":"n3"}}]"#,
        ];
        for text in cases {
            let streamed = format!("{:?}", load_one(text));
            assert_eq!(streamed, whole_documents(text), "{text}");
        }
        let loaded = load_one(cases[0]);
        assert_eq!(loaded.snapshot.nodes.len(), 1);
        assert_eq!(loaded.snapshot.services.len(), 1);
        assert_eq!(loaded.diagnostics.len(), 2, "{:?}", loaded.diagnostics);
        assert_eq!(loaded.skipped.get("apps/v1/Deployment"), Some(&1));
        assert_eq!(load_one(cases[1]).snapshot.services.len(), 2);
        let loaded = load_one(cases[2]);
        assert_eq!(loaded.snapshot.endpoint_slices.len(), 1);
        assert_eq!(loaded.snapshot.endpoints.len(), 1);
        let names: Vec<_> = loaded
            .snapshot
            .services
            .iter()
            .map(|s| s.metadata.name.as_deref())
            .collect();
        assert_eq!(
            names,
            [Some("dup2")],
            "the last of duplicate keys, as a `Value` keeps it"
        );
        assert_eq!(loaded.snapshot.service_cidrs.len(), 1);
        assert_eq!(loaded.skipped.get("v2/Service"), Some(&1));
        assert_eq!(load_one(cases[3]).skipped.get("v1/List"), Some(&1));
    }

    #[test]
    fn load_each_hands_on_objects_and_keeps_no_snapshot() {
        let mut names = Vec::new();
        let loaded = load_each(
            &[src(r#"{"items":[{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}}],"kind":"List","apiVersion":"v1"}"#)],
            |o| {
                if let Object::Node(n) = o {
                    names.push(n.metadata.name.clone().unwrap_or_default());
                }
            },
        )
        .unwrap();
        assert_eq!(names, ["n1"]);
        assert!(loaded.snapshot.nodes.is_empty());
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
