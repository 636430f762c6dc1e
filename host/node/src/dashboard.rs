//! The web dashboard at `/dashboard`: one static page
//! (`dashboard/index.html`: HTML, CSS and inline JavaScript with SVG
//! charts, no build step, nothing fetched from elsewhere) that polls
//! `/api/v1/activity` and draws what it sees.

use axum::http::header;
use axum::response::IntoResponse;

/// The page.
pub const PAGE: &str = include_str!("dashboard/index.html");

/// `GET /dashboard`.
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}
