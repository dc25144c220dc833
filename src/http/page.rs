//! `GET /`: a page for people, shipped inside the binary. It calls the public API only, so it
//! doubles as an example for frontend developers.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("page/index.html");

/// The web page.
pub async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX)
}
