//! Counts the rows of a table in Spin's default SQLite database.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;
use spin_sdk::sqlite::Connection;

#[http_component]
fn handle(_request: Request) -> anyhow::Result<impl IntoResponse> {
    let db = Connection::open_default()?;
    let rows = db.execute("SELECT count(*) FROM sqlite_master", &[])?;
    Ok(Response::new(200, format!("{:?}\n", rows.rows().count())))
}
