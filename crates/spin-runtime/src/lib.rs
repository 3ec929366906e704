//! Spin applications, as SpinKube ships them: the app model that a `spin.toml` and a locked app
//! both become, Spin's HTTP routes and its variables.

#![warn(missing_docs)]

pub mod app;
pub mod bundle;
pub mod componentize;
pub mod host;
pub mod key_value;
pub mod lock;
pub mod locked;
pub mod manifest;
pub mod routes;
pub mod runtime_config;
pub mod variables;
pub mod wagi;

pub use app::{App, AppError};
