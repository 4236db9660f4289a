//! The HTTP API's routes (spec §8), as a table. A route of the JSON API names only the
//! RPC it calls: its request and response types, and whether it streams (then it is
//! served as Server-Sent Events), come from the descriptors. Serving a new RPC over HTTP
//! is one line here; the OpenAPI document follows from the same line.

use prost_reflect::MethodDescriptor;

use crate::proto::reflect;

/// The gRPC service every JSON route calls.
pub(crate) const SERVICE: &str = "jobledger.v1.JobLedger";

/// The HTTP methods the API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    Get,
    Post,
}

impl Verb {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
        }
    }

    fn of(method: &http::Method) -> Option<Verb> {
        match *method {
            http::Method::GET => Some(Verb::Get),
            http::Method::POST => Some(Verb::Post),
            _ => None,
        }
    }
}

/// What a route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// Calls this RPC of [`SERVICE`], with the proto3 JSON mapping.
    Rpc(&'static str),
    /// The old REST API's `POST /jobs` (a CreateJob) in its old response shape.
    LegacyCreate,
    /// The old REST API's `GET /jobs/{job_id}` (a GetJob) in its old response shape.
    LegacyGet,
    /// This API described as OpenAPI 3.
    OpenApi,
}

#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) verb: Verb,
    /// Segments are literals or `{field}` (a request field), optionally followed by a
    /// literal suffix in the same segment (`{job_id}:transition`).
    pub(crate) path: &'static str,
    pub(crate) target: Target,
    /// Request headers that set a request field, winning over the query: an
    /// EventSource that reconnects sends `Last-Event-ID` with its original URL.
    pub(crate) header_fields: &'static [(&'static str, &'static str)],
}

const fn rpc(verb: Verb, path: &'static str, name: &'static str) -> Route {
    Route {
        verb,
        path,
        target: Target::Rpc(name),
        header_fields: &[],
    }
}

const RESUME: &[(&str, &str)] = &[("last-event-id", "after_cursor")];

/// Every route. A route for a new RPC is one more `rpc(...)` line, e.g.
/// `rpc(Verb::Post, "/v1/jobs:claim", "ClaimJobs")`.
pub(crate) static ROUTES: &[Route] = &[
    rpc(Verb::Post, "/v1/jobs", "CreateJob"),
    rpc(Verb::Post, "/v1/jobs:batchCreate", "CreateJobs"),
    rpc(Verb::Get, "/v1/jobs/{job_id}", "GetJob"),
    rpc(Verb::Post, "/v1/jobs/{job_id}:transition", "TransitionJob"),
    rpc(Verb::Get, "/v1/jobs", "ListJobs"),
    rpc(Verb::Get, "/v1/jobs:count", "CountJobs"),
    rpc(Verb::Post, "/v1/jobs:claim", "ClaimJobs"),
    rpc(Verb::Post, "/v1/jobs/{job_id}:heartbeat", "HeartbeatJob"),
    rpc(Verb::Post, "/v1/jobs:batchTransition", "TransitionJobs"),
    rpc(Verb::Get, "/v1/queues", "ListQueues"),
    rpc(Verb::Post, "/v1/queues/{type}", "UpdateQueue"),
    Route {
        header_fields: RESUME,
        ..rpc(Verb::Get, "/v1/jobs/{job_id}/events", "StreamEvents")
    },
    Route {
        header_fields: RESUME,
        ..rpc(Verb::Get, "/v1/events", "StreamEvents")
    },
    Route {
        verb: Verb::Post,
        path: "/jobs",
        target: Target::LegacyCreate,
        header_fields: &[],
    },
    Route {
        verb: Verb::Get,
        path: "/jobs/{job_id}",
        target: Target::LegacyGet,
        header_fields: &[],
    },
    Route {
        verb: Verb::Get,
        path: "/openapi.json",
        target: Target::OpenApi,
        header_fields: &[],
    },
];

impl Route {
    /// The RPC a JSON route calls (None for the old REST API and the document).
    pub(crate) fn method(&self) -> Option<MethodDescriptor> {
        match self.target {
            Target::Rpc(name) => rpc_method(name),
            _ => None,
        }
    }

    /// The names of the path's `{field}`s, in order.
    pub(crate) fn path_fields(&self) -> Vec<&'static str> {
        self.path
            .split('/')
            .filter_map(|segment| {
                let (_, rest) = segment.split_once('{')?;
                Some(rest.split_once('}')?.0)
            })
            .collect()
    }
}

/// The method `name` of [`SERVICE`].
pub(crate) fn rpc_method(name: &str) -> Option<MethodDescriptor> {
    reflect::pool()
        .get_service_by_name(SERVICE)?
        .methods()
        .find(|m| m.name() == name)
}

/// What a request's method and path lead to.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// The route and its path fields' values (percent-decoded).
    Found(&'static Route, Vec<(&'static str, String)>),
    /// The path exists, not with this method: the ones it takes (`GET, POST`).
    WrongMethod(String),
    NotFound,
}

/// The route of `method` and `path`. When several templates match a path
/// (`/v1/jobs/x:transition` matches `{job_id}` too), the one with the most literal
/// characters is the path's route, so a GET there is a 405, not a GetJob of
/// `x:transition`.
pub(crate) fn lookup(method: &http::Method, path: &str) -> Lookup {
    let matches: Vec<(&'static Route, Vec<(&'static str, String)>)> = ROUTES
        .iter()
        .filter_map(|route| Some((route, match_path(route.path, path)?)))
        .collect();
    let Some(best) = matches.iter().map(|(r, _)| literal_len(r.path)).max() else {
        return Lookup::NotFound;
    };
    let mut candidates = matches
        .into_iter()
        .filter(|(r, _)| literal_len(r.path) == best)
        .peekable();
    let template = candidates.peek().map(|(r, _)| r.path);
    let verb = Verb::of(method);
    let mut allowed = Vec::new();
    for (route, params) in candidates {
        if Some(route.verb) == verb && Some(route.path) == template {
            return Lookup::Found(route, params);
        }
        allowed.push(route.verb.as_str());
    }
    Lookup::WrongMethod(allowed.join(", "))
}

fn literal_len(template: &str) -> usize {
    let mut n = 0;
    let mut inside = false;
    for c in template.chars() {
        match c {
            '{' => inside = true,
            '}' => inside = false,
            _ if !inside => n += 1,
            _ => {}
        }
    }
    n
}

/// The values of `template`'s fields if `path` matches it.
fn match_path(template: &'static str, path: &str) -> Option<Vec<(&'static str, String)>> {
    let wanted: Vec<&'static str> = template.split('/').collect();
    let given: Vec<&str> = path.split('/').collect();
    if wanted.len() != given.len() {
        return None;
    }
    let mut params = Vec::new();
    for (w, g) in wanted.into_iter().zip(given) {
        match w.split_once('{') {
            None if w == g => {}
            None => return None,
            Some((prefix, rest)) => {
                let (name, suffix) = rest.split_once('}')?;
                let value = g.strip_prefix(prefix)?.strip_suffix(suffix)?;
                if value.is_empty() {
                    return None;
                }
                let decoded = percent_encoding::percent_decode_str(value)
                    .decode_utf8_lossy()
                    .into_owned();
                params.push((name, decoded));
            }
        }
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(method: http::Method, path: &str) -> (Target, Vec<(&'static str, String)>) {
        match lookup(&method, path) {
            Lookup::Found(route, params) => (route.target, params),
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn every_rpc_route_names_an_existing_method() {
        for route in ROUTES {
            if let Target::Rpc(name) = route.target {
                let method = route.method().unwrap_or_else(|| panic!("no RPC {name}"));
                for field in route.path_fields() {
                    assert!(method.input().get_field_by_name(field).is_some(), "{field}");
                }
                for (_, field) in route.header_fields {
                    assert!(method.input().get_field_by_name(field).is_some(), "{field}");
                }
            }
        }
    }

    #[test]
    fn paths_with_verbs_and_fields_are_told_apart() {
        use http::Method;
        assert_eq!(found(Method::POST, "/v1/jobs").0, Target::Rpc("CreateJob"));
        assert_eq!(found(Method::GET, "/v1/jobs").0, Target::Rpc("ListJobs"));
        assert_eq!(
            found(Method::GET, "/v1/jobs:count").0,
            Target::Rpc("CountJobs")
        );
        assert_eq!(
            found(Method::POST, "/v1/jobs:batchCreate").0,
            Target::Rpc("CreateJobs")
        );
        assert_eq!(
            found(Method::POST, "/v1/jobs/a%2Db:transition"),
            (
                Target::Rpc("TransitionJob"),
                vec![("job_id", "a-b".to_owned())]
            )
        );
        assert_eq!(
            found(Method::GET, "/v1/jobs/abc"),
            (Target::Rpc("GetJob"), vec![("job_id", "abc".to_owned())])
        );
        assert_eq!(found(Method::GET, "/jobs/x").0, Target::LegacyGet);
        assert!(matches!(
            lookup(&Method::GET, "/v1/jobs/abc:transition"),
            Lookup::WrongMethod(m) if m == "POST"
        ));
        assert!(matches!(
            lookup(&Method::DELETE, "/v1/jobs"),
            Lookup::WrongMethod(m) if m == "POST, GET"
        ));
        assert!(matches!(lookup(&Method::GET, "/v1/nope"), Lookup::NotFound));
        assert!(matches!(
            lookup(&Method::GET, "/v1/jobs/"),
            Lookup::NotFound
        ));
        // An empty job id is no job id: `:transition` is then GetJob's `{job_id}`.
        assert!(matches!(
            lookup(&Method::POST, "/v1/jobs/:transition"),
            Lookup::WrongMethod(m) if m == "GET"
        ));
    }
}
