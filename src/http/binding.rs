//! The routes of the HTTP/JSON face, read from the `google.api.http`
//! annotations of every service the server describes, so that the protos
//! stay the one source of truth. A [`Binding`] ties an HTTP method and a
//! path template (`/v1/{name=operations/*}:cancel`) to one gRPC method;
//! [`Bindings::find`] matches a request against them, most specific first.

use http::Method;
use prost_reflect::{DescriptorPool, MethodDescriptor, Value};
use tracing::warn;

use crate::pb::google::api::HttpRule;
use crate::pb::google::api::http_rule::Pattern;

/// How a bound method's answer is shaped over HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One JSON message; a create (a method with `operation_info`) answers
    /// 202 Accepted with a `Location`.
    Unary,
    /// A client stream whose messages carry pieces of the raw body in one
    /// bytes field: an upload read as it arrives.
    Upload,
    /// A server stream of raw bytes: a download.
    Download,
    /// A server stream of messages, as Server-Sent Events.
    Events,
    /// Not a method of its own: GetOperation, answered as the status
    /// monitor (202 while running, 303 to the result, or the error).
    Result,
}

/// One part of a path template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `*`: one segment.
    Any,
    /// `**`: the rest of the path, one segment or more.
    Rest,
}

/// A variable of a template: the request field it sets, from the parts
/// `start..end`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Variable {
    field: String,
    start: usize,
    end: usize,
}

/// A parsed path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    variables: Vec<Variable>,
    verb: Option<String>,
    /// As written in the annotation.
    text: String,
    /// The literal segments before the first variable, each after a `/`:
    /// a path without them is told apart without being split.
    prefix: String,
}

impl Template {
    /// Parses a template of the `google.api.http` grammar: literals, `*`,
    /// `**`, variables `{field}` or `{field=pattern}`, and a `:verb`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| format!("{text}: a template starts with /"))?;
        // The verb follows the last ':' that is outside every variable.
        let closed = rest.rfind('}').map_or(0, |i| i + 1);
        let (path, verb) = match rest[closed..].rfind(':') {
            Some(i) => (&rest[..closed + i], Some(rest[closed + i + 1..].to_owned())),
            None => (rest, None),
        };
        let mut parts = Vec::new();
        let mut variables = Vec::new();
        let mut chars = path;
        while !chars.is_empty() {
            if let Some(inner) = chars.strip_prefix('{') {
                let end = inner
                    .find('}')
                    .ok_or_else(|| format!("{text}: an unclosed variable"))?;
                let (field, pattern) = match inner[..end].split_once('=') {
                    Some((field, pattern)) => (field, pattern),
                    None => (&inner[..end], "*"),
                };
                if field.matches('.').count() > 1 {
                    return Err(format!(
                        "{text}: fields nested more than one deep are not supported"
                    ));
                }
                let start = parts.len();
                for segment in pattern.split('/') {
                    parts.push(segment_part(segment));
                }
                variables.push(Variable {
                    field: field.to_owned(),
                    start,
                    end: parts.len(),
                });
                chars = &inner[end + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                if end > 0 {
                    parts.push(segment_part(&chars[..end]));
                }
                chars = &chars[end..];
            }
            chars = chars.strip_prefix('/').unwrap_or(chars);
        }
        let rests = parts.iter().filter(|p| **p == Part::Rest).count();
        if rests > 1 {
            return Err(format!("{text}: at most one ** is supported"));
        }
        let prefix = parts
            .iter()
            .map_while(|part| match part {
                Part::Literal(literal) => Some(format!("/{literal}")),
                Part::Any | Part::Rest => None,
            })
            .collect();
        Ok(Self {
            parts,
            variables,
            verb,
            text: text.to_owned(),
            prefix,
        })
    }

    /// The template as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The `:verb`, if any.
    pub fn verb(&self) -> Option<&str> {
        self.verb.as_deref()
    }

    /// The fields the path sets.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.variables.iter().map(|v| v.field.as_str())
    }

    /// The field values `path` sets, when it matches.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        if !path.starts_with(&self.prefix) {
            return None;
        }
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            // Without a verb, a custom method's path is not this one's.
            None if path.rsplit('/').next().is_some_and(|s| s.contains(':')) => return None,
            None => path,
        };
        let segments: Vec<&str> = path.split('/').collect();
        let has_rest = self.parts.contains(&Part::Rest);
        let extra = if has_rest {
            segments.len().checked_sub(self.parts.len())?
        } else if segments.len() == self.parts.len() {
            0
        } else {
            return None;
        };
        // Where each part's segments begin, and end.
        let mut bounds = Vec::with_capacity(self.parts.len() + 1);
        let mut at = 0;
        for part in &self.parts {
            bounds.push(at);
            let width = if *part == Part::Rest { extra + 1 } else { 1 };
            let taken = &segments[at..at + width];
            let ok = match part {
                Part::Literal(literal) => taken[0] == literal,
                Part::Any | Part::Rest => taken.iter().all(|s| !s.is_empty()),
            };
            if !ok {
                return None;
            }
            at += width;
        }
        bounds.push(at);
        Some(
            self.variables
                .iter()
                .map(|v| {
                    let value = segments[bounds[v.start]..bounds[v.end]].join("/");
                    (v.field.clone(), value)
                })
                .collect(),
        )
    }

    /// The path with each `*` or `**` as a named parameter (`{id}`, or
    /// `{id1}`, `{id2}`... when there are several), as OpenAPI writes it;
    /// with those names.
    pub fn openapi_path(&self) -> (String, Vec<String>) {
        let wild = self
            .parts
            .iter()
            .filter(|p| !matches!(p, Part::Literal(_)))
            .count();
        let mut names = Vec::new();
        let mut path = String::new();
        for part in &self.parts {
            path.push('/');
            match part {
                Part::Literal(literal) => path.push_str(literal),
                Part::Any | Part::Rest => {
                    let name = if wild == 1 {
                        "id".to_owned()
                    } else {
                        format!("id{}", names.len() + 1)
                    };
                    path.push_str(&format!("{{{name}}}"));
                    names.push(name);
                }
            }
        }
        if let Some(verb) = &self.verb {
            path.push(':');
            path.push_str(verb);
        }
        (path, names)
    }

    /// How specific the template is: verbs first, then more literals, and
    /// `**` last, so that `/v1/operations/{id}/deliveries` is tried before
    /// `/v1/{name=operations/**}`.
    fn precedence(&self) -> (bool, usize, bool) {
        let literals = self
            .parts
            .iter()
            .filter(|p| matches!(p, Part::Literal(_)))
            .count();
        (
            self.verb.is_some(),
            literals,
            !self.parts.contains(&Part::Rest),
        )
    }
}

fn segment_part(segment: &str) -> Part {
    match segment {
        "*" => Part::Any,
        "**" => Part::Rest,
        literal => Part::Literal(literal.to_owned()),
    }
}

/// One HTTP route onto one gRPC method.
#[derive(Clone, Debug)]
pub struct Binding {
    pub method: Method,
    pub template: Template,
    /// `*` (the whole message), a field name, or empty (no body).
    pub body: String,
    pub rpc: MethodDescriptor,
    pub shape: Shape,
    /// Worked out once, as every request asks.
    grpc_path: String,
    creates: bool,
}

impl Binding {
    fn new(
        method: Method,
        template: Template,
        body: String,
        rpc: &MethodDescriptor,
        shape: Shape,
    ) -> Self {
        let grpc_path = format!("/{}/{}", rpc.parent_service().full_name(), rpc.name());
        let creates = rpc
            .parent_pool()
            .get_extension_by_name("google.longrunning.operation_info")
            .is_some_and(|ext| rpc.options().has_extension(&ext));
        Self {
            method,
            template,
            body,
            rpc: rpc.clone(),
            shape,
            grpc_path,
            creates,
        }
    }

    /// The gRPC path of the bound method, `/package.Service/Method`.
    pub fn grpc_path(&self) -> &str {
        &self.grpc_path
    }

    /// Whether the method creates an operation (it declares
    /// `google.longrunning.operation_info`).
    pub fn creates(&self) -> bool {
        self.creates
    }
}

/// The answer to "which route is this request?".
pub enum Found<'a> {
    Route(&'a Binding, Vec<(String, String)>),
    /// The path is known, under other methods.
    WrongMethod(Vec<Method>),
    None,
}

/// Every binding the server serves, most specific first.
#[derive(Clone, Debug, Default)]
pub struct Bindings {
    all: Vec<Binding>,
}

/// The status monitor's route, beside GetOperation's.
pub const RESULT_TEMPLATE: &str = "/v1/{name=operations/*}:result";
const GET_OPERATION: &str = "google.longrunning.Operations.GetOperation";

impl Bindings {
    /// Reads the annotations of every method in `pool`. A binding this
    /// face cannot serve is skipped with a warning.
    pub fn from_pool(pool: &DescriptorPool) -> Self {
        let mut all = Vec::new();
        let Some(ext) = pool.get_extension_by_name("google.api.http") else {
            return Self::default();
        };
        for service in pool.services() {
            for rpc in service.methods() {
                let options = rpc.options();
                if !options.has_extension(&ext) {
                    continue;
                }
                let Value::Message(rule) = options.get_extension(&ext).into_owned() else {
                    continue;
                };
                let Ok(rule) = rule.transcode_to::<HttpRule>() else {
                    continue;
                };
                let mut rules = vec![rule.clone()];
                rules.extend(rule.additional_bindings.iter().cloned());
                for rule in rules {
                    match binding(&rpc, &rule) {
                        Ok(Some(b)) => all.push(b),
                        Ok(None) => {}
                        Err(e) => warn!(rpc = rpc.full_name(), "HTTP binding skipped: {e}"),
                    }
                }
                if rpc.full_name() == GET_OPERATION
                    && let Ok(template) = Template::parse(RESULT_TEMPLATE)
                {
                    all.push(Binding::new(
                        Method::GET,
                        template,
                        String::new(),
                        &rpc,
                        Shape::Result,
                    ));
                }
            }
        }
        // Stable: equally specific bindings keep the protos' order.
        all.sort_by_key(|b| std::cmp::Reverse(b.template.precedence()));
        Self { all }
    }

    /// Every binding, most specific first.
    pub fn iter(&self) -> impl Iterator<Item = &Binding> {
        self.all.iter()
    }

    /// The binding `method path` reaches, with the fields its path sets.
    pub fn find(&self, method: &Method, path: &str) -> Found<'_> {
        let mut allowed = Vec::new();
        for binding in &self.all {
            if let Some(fields) = binding.template.matches(path) {
                if binding.method == *method {
                    return Found::Route(binding, fields);
                }
                if !allowed.contains(&binding.method) {
                    allowed.push(binding.method.clone());
                }
            }
        }
        if allowed.is_empty() {
            Found::None
        } else {
            Found::WrongMethod(allowed)
        }
    }
}

/// The field a path variable names in `input`: a field of its own, or
/// (`outer.inner`) a string field of one of its message fields.
pub(super) fn path_field(
    input: &prost_reflect::MessageDescriptor,
    field: &str,
) -> Option<prost_reflect::FieldDescriptor> {
    match field.split_once('.') {
        None => input.get_field_by_name(field),
        Some((outer, inner)) => match input.get_field_by_name(outer)?.kind() {
            prost_reflect::Kind::Message(message) => message.get_field_by_name(inner),
            _ => None,
        },
    }
}

/// One rule of `rpc` as a binding; None for a pattern this face does not
/// serve (custom HTTP methods).
fn binding(rpc: &MethodDescriptor, rule: &HttpRule) -> Result<Option<Binding>, String> {
    let (method, path) = match &rule.pattern {
        Some(Pattern::Get(p)) => (Method::GET, p),
        Some(Pattern::Put(p)) => (Method::PUT, p),
        Some(Pattern::Post(p)) => (Method::POST, p),
        Some(Pattern::Delete(p)) => (Method::DELETE, p),
        Some(Pattern::Patch(p)) => (Method::PATCH, p),
        Some(Pattern::Custom(_)) | None => return Ok(None),
    };
    let template = Template::parse(path)?;
    let input = rpc.input();
    for field in template.fields() {
        if path_field(&input, field).is_none() {
            return Err(format!("{path}: {} has no field {field}", input.name()));
        }
    }
    let shape = match (rpc.is_client_streaming(), rpc.is_server_streaming()) {
        (false, false) => Shape::Unary,
        (true, false) => {
            let field = input
                .get_field_by_name(&rule.body)
                .filter(|f| f.kind() == prost_reflect::Kind::Bytes && !f.is_list())
                .ok_or_else(|| {
                    "a client stream is served only with its body bound to one bytes field"
                        .to_owned()
                })?;
            let _ = field;
            Shape::Upload
        }
        (false, true) => {
            let output = rpc.output();
            let raw = output.fields().count() == 1
                && output
                    .fields()
                    .all(|f| f.kind() == prost_reflect::Kind::Bytes && !f.is_list());
            if raw { Shape::Download } else { Shape::Events }
        }
        (true, true) => return Err("bidirectional streams have no HTTP form".into()),
    };
    Ok(Some(Binding::new(
        method,
        template,
        rule.body.clone(),
        rpc,
        shape,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        Template::parse(template).unwrap().matches(path)
    }

    fn pair(field: &str, value: &str) -> Vec<(String, String)> {
        vec![(field.to_owned(), value.to_owned())]
    }

    #[test]
    fn templates_match_their_paths_and_only_those() {
        let get = "/v1/{name=operations/**}";
        assert_eq!(
            fields(get, "/v1/operations/abc"),
            Some(pair("name", "operations/abc"))
        );
        assert_eq!(fields(get, "/v1/operations"), None);
        assert_eq!(fields(get, "/v1/operations/abc:cancel"), None);
        assert_eq!(fields(get, "/v1/reports/abc"), None);

        let cancel = "/v1/{name=operations/**}:cancel";
        assert_eq!(
            fields(cancel, "/v1/operations/abc:cancel"),
            Some(pair("name", "operations/abc"))
        );
        assert_eq!(fields(cancel, "/v1/operations/abc:wait"), None);
        assert_eq!(fields(cancel, "/v1/operations/:cancel"), None);

        assert_eq!(
            fields("/v1/{name=operations}", "/v1/operations"),
            Some(pair("name", "operations"))
        );
        assert_eq!(
            fields("/v1/diagnostics:sleep", "/v1/diagnostics:sleep"),
            Some(vec![])
        );
        assert_eq!(
            fields(
                "/v1/{name=operations/*}/deliveries",
                "/v1/operations/x/deliveries"
            ),
            Some(pair("name", "operations/x"))
        );
        assert_eq!(
            fields(
                "/v1/{parent=shelves/*}/books/{book}",
                "/v1/shelves/s1/books/b2"
            ),
            Some(vec![
                ("parent".to_owned(), "shelves/s1".to_owned()),
                ("book".to_owned(), "b2".to_owned())
            ])
        );
    }

    #[test]
    fn openapi_paths_name_the_wildcards() {
        let t = Template::parse("/v1/{name=operations/**}:cancel").unwrap();
        assert_eq!(
            t.openapi_path(),
            (
                "/v1/operations/{id}:cancel".to_owned(),
                vec!["id".to_owned()]
            )
        );
    }

    #[test]
    fn the_protos_bind_every_public_method() {
        let bindings = Bindings::from_pool(crate::pb::descriptor_pool());
        let bound: Vec<(String, String)> = bindings
            .iter()
            .map(|b| (b.method.to_string(), b.template.text().to_owned()))
            .collect();
        for (method, path) in [
            ("GET", "/v1/{name=operations}"),
            ("GET", "/v1/{name=operations/**}"),
            ("DELETE", "/v1/{name=operations/**}"),
            ("POST", "/v1/{name=operations/**}:cancel"),
            ("POST", "/v1/{name=operations/**}:wait"),
            ("GET", "/v1/{name=operations/*}:watch"),
            ("GET", RESULT_TEMPLATE),
            ("GET", "/v1/{name=operations/*}/deliveries"),
            ("POST", "/v1/diagnostics:sleep"),
            ("POST", "/v1/reports"),
            ("GET", "/v1/{name=reports/*}"),
            ("GET", "/v1/{name=reports/*}:download"),
            ("POST", "/v1/orders:import"),
        ] {
            assert!(
                bound.contains(&(method.to_owned(), path.to_owned())),
                "{method} {path} is not bound: {bound:?}"
            );
        }
        let shape = |path: &str| {
            bindings
                .iter()
                .find(|b| b.template.text() == path)
                .map(|b| b.shape)
        };
        assert_eq!(shape("/v1/orders:import"), Some(Shape::Upload));
        assert_eq!(
            shape("/v1/{name=reports/*}:download"),
            Some(Shape::Download)
        );
        assert_eq!(shape("/v1/{name=operations/*}:watch"), Some(Shape::Events));
        // Deliveries are tried before GetOperation's ** could take them.
        match bindings.find(&Method::GET, "/v1/operations/x/deliveries") {
            Found::Route(b, _) => assert_eq!(b.rpc.name(), "ListDeliveries"),
            _ => panic!("no route"),
        }
        match bindings.find(&Method::PUT, "/v1/operations/x") {
            Found::WrongMethod(allowed) => {
                assert!(allowed.contains(&Method::GET) && allowed.contains(&Method::DELETE))
            }
            _ => panic!("PUT should be a wrong method"),
        }
    }
}
