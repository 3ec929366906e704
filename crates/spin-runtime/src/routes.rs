//! Spin's HTTP routing: which component answers a path, with Spin's patterns (`/hello`,
//! `/users/:id`, `/static/...`) and precedence (exact segments before named ones before a
//! trailing wildcard, then the longer route), and the request headers Spin gives a component
//! about its match.

use crate::app::{App, AppError, Route};
use std::collections::BTreeMap;

/// Paths under this prefix are answered by the host, never routed to a component.
pub const WELL_KNOWN_PREFIX: &str = "/.well-known/spin/";

/// An app's routes.
#[derive(Debug)]
pub struct Router {
    routes: routefinder::Router<Handler>,
}

#[derive(Debug)]
struct Handler {
    component: String,
    /// The route as the app wrote it.
    route: String,
    /// Whether it ends in a trailing wildcard (`/...`).
    wildcard: bool,
}

/// The component a path was routed to, and what Spin tells it about the match.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    /// The component's ID.
    pub component: &'a str,
    /// The route as the app wrote it (`/static/...`).
    pub route: &'a str,
    /// The route without its trailing wildcard (`/static`).
    pub route_prefix: &'a str,
    /// The part of the path the trailing wildcard matched, with its leading slash as Spin
    /// gives it (`/css/site.css`); empty for an exact route.
    pub path_info: String,
    /// The named segments (`:id`) and what they matched.
    pub named: BTreeMap<String, String>,
}

impl Router {
    /// The routes of `app`'s HTTP triggers (private ones are not routable). Two triggers with
    /// one route, or a route Spin cannot parse, are errors naming them.
    pub fn new(app: &App) -> Result<Self, AppError> {
        let mut routes = routefinder::Router::new();
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for trigger in &app.http_triggers {
            let Route::Path(route) = &trigger.route else {
                continue;
            };
            let route = absolute(route);
            if let Some(first) = seen.insert(route.clone(), &trigger.component) {
                return Err(AppError::Invalid(format!(
                    "the route {route:?} is given to both component {first:?} and component {:?}: give each component routes of its own",
                    trigger.component
                )));
            }
            let (spec, wildcard) = match route
                .strip_suffix("/...")
                .or_else(|| route.strip_suffix("/*"))
            {
                Some(prefix) => (format!("{prefix}/*"), true),
                None => (without_trailing_slash(&route).to_owned(), false),
            };
            let handler = Handler {
                component: trigger.component.clone(),
                route: route.clone(),
                wildcard,
            };
            routes.add(spec.as_str(), handler).map_err(|e| {
                AppError::Invalid(format!(
                    "the route {route:?} of component {:?} is not a valid Spin route: {e}",
                    trigger.component
                ))
            })?;
        }
        Ok(Self { routes })
    }

    /// The component that answers `path`, if any route matches it.
    pub fn route(&self, path: &str) -> Option<RouteMatch<'_>> {
        let found = self.routes.best_match(path)?;
        let handler = found.handler();
        let captures = found.captures();
        let path_info = match captures.wildcard() {
            // Spin keeps the trailing slash that routefinder drops.
            Some(rest) => match (rest.is_empty(), path.ends_with('/')) {
                (true, false) => String::new(),
                (true, true) => "/".into(),
                (false, false) => format!("/{rest}"),
                (false, true) => format!("/{rest}/"),
            },
            None => String::new(),
        };
        let named = captures
            .iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        let route_prefix = if handler.wildcard {
            handler
                .route
                .strip_suffix("/...")
                .or_else(|| handler.route.strip_suffix("/*"))
                .unwrap_or(&handler.route)
        } else {
            &handler.route
        };
        Some(RouteMatch {
            component: &handler.component,
            route: &handler.route,
            route_prefix,
            path_info,
            named,
        })
    }
}

impl RouteMatch<'_> {
    /// The headers Spin adds to a request for its component (`spin-full-url`,
    /// `spin-path-info`, `spin-matched-route`, ...), for a request to `full_url` from `client`.
    pub fn spin_headers(
        &self,
        full_url: &str,
        client: std::net::SocketAddr,
    ) -> Vec<(String, String)> {
        let mut headers = vec![
            ("spin-path-info".to_owned(), self.path_info.clone()),
            ("spin-full-url".to_owned(), full_url.to_owned()),
            ("spin-matched-route".to_owned(), self.route.to_owned()),
            ("spin-base-path".to_owned(), "/".to_owned()),
            ("spin-raw-component-route".to_owned(), self.route.to_owned()),
            (
                "spin-component-route".to_owned(),
                self.route_prefix.to_owned(),
            ),
            ("spin-client-addr".to_owned(), client.to_string()),
        ];
        headers.extend(self.named.iter().map(|(name, value)| {
            (
                format!(
                    "spin-path-match-{}",
                    name.to_ascii_lowercase().replace('_', "-")
                ),
                value.clone(),
            )
        }));
        headers
    }
}

fn absolute(route: &str) -> String {
    if route.starts_with('/') {
        route.to_owned()
    } else {
        format!("/{route}")
    }
}

fn without_trailing_slash(route: &str) -> &str {
    match route.strip_suffix('/') {
        Some("") | None => route,
        Some(stripped) => stripped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{Executor, HttpTrigger};

    fn app(routes: &[(&str, &str)]) -> App {
        App {
            name: "app".into(),
            version: String::new(),
            variables: BTreeMap::new(),
            http_triggers: routes
                .iter()
                .enumerate()
                .map(|(i, (route, component))| HttpTrigger {
                    id: format!("t{i}"),
                    component: (*component).into(),
                    route: if *route == "private" {
                        Route::Private
                    } else {
                        Route::Path((*route).into())
                    },
                    executor: Executor::Http,
                })
                .collect(),
            components: vec![],
        }
    }

    fn routed<'a>(router: &'a Router, path: &str) -> Option<&'a str> {
        router.route(path).map(|m| m.component)
    }

    #[test]
    fn exact_routes_win_over_wildcards_and_longer_prefixes_win() {
        let router = Router::new(&app(&[
            ("/...", "fallback"),
            ("/hello", "hello"),
            ("/hello/...", "hello-tree"),
            ("/static/...", "files"),
            ("/users/:id", "user"),
            ("/users/me", "me"),
            ("private", "internal"),
        ]))
        .unwrap();
        assert_eq!(routed(&router, "/hello"), Some("hello"));
        assert_eq!(routed(&router, "/hello/there"), Some("hello-tree"));
        assert_eq!(routed(&router, "/static/css/a.css"), Some("files"));
        assert_eq!(routed(&router, "/users/me"), Some("me"));
        assert_eq!(routed(&router, "/users/42"), Some("user"));
        assert_eq!(routed(&router, "/other/thing"), Some("fallback"));
        assert_eq!(routed(&router, "/"), Some("fallback"));
    }

    #[test]
    fn no_route_no_match() {
        let router = Router::new(&app(&[("/hello", "hello"), ("private", "internal")])).unwrap();
        assert_eq!(routed(&router, "/nope"), None);
        assert_eq!(routed(&router, "/hello/x"), None);
    }

    #[test]
    fn path_info_and_named_segments_as_spin_gives_them() {
        let router =
            Router::new(&app(&[("/static/...", "files"), ("/users/:id", "user")])).unwrap();
        let m = router.route("/static/css/a.css").unwrap();
        assert_eq!(m.path_info, "/css/a.css");
        assert_eq!(m.route, "/static/...");
        assert_eq!(m.route_prefix, "/static");
        assert_eq!(router.route("/static").unwrap().path_info, "");
        assert_eq!(router.route("/static/").unwrap().path_info, "/");
        assert_eq!(router.route("/static/a/").unwrap().path_info, "/a/");
        let m = router.route("/users/42").unwrap();
        assert_eq!(m.named, BTreeMap::from([("id".into(), "42".into())]));
        let headers = m.spin_headers("http://h/users/42", "10.0.0.1:5000".parse().unwrap());
        for expected in [
            ("spin-matched-route", "/users/:id"),
            ("spin-component-route", "/users/:id"),
            ("spin-full-url", "http://h/users/42"),
            ("spin-path-info", ""),
            ("spin-client-addr", "10.0.0.1:5000"),
            ("spin-path-match-id", "42"),
        ] {
            assert!(
                headers
                    .iter()
                    .any(|(k, v)| (k.as_str(), v.as_str()) == expected),
                "{expected:?} in {headers:?}"
            );
        }
    }

    #[test]
    fn a_route_given_twice_is_refused_naming_both() {
        let error = Router::new(&app(&[("/a", "one"), ("a", "two")])).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("\"/a\"") && message.contains("one") && message.contains("two"),
            "{message}"
        );
    }
}
