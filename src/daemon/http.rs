//! The daemon's HTTP endpoints: `/healthz` (200 while the scheduler loop
//! goes round), `/metrics` (Prometheus text format), `/status` (JSON) and
//! `/`, the HTML status page rendered from that same JSON.
//! They only read what the scheduler publishes in [`Shared`]; none of them
//! touches a repository.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::watch;

use super::{Shared, POLL};

/// The loop wakes at least every [`POLL`]; several missed wakes mean it is stuck.
const STALE: Duration = Duration::from_secs(30);

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(shared)
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let app = router(shared);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!("the HTTP server stopped: {e}");
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let age = shared.heartbeat.lock().unwrap().elapsed();
    if age < STALE.max(POLL * 3) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the scheduler loop has not run for {}s\n", age.as_secs()),
        )
            .into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = {
        let _published = shared.publishing.read().unwrap_or_else(|e| e.into_inner());
        shared.metrics.encode()
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let _published = shared.publishing.read().unwrap_or_else(|e| e.into_inner());
    Json(shared.status.lock().unwrap().clone())
}

/// `/`: rendered from the document `/status` serves at the same moment, so
/// the page and `/status` never disagree.
async fn page(State(shared): State<Arc<Shared>>) -> Response {
    let status = {
        let _published = shared.publishing.read().unwrap_or_else(|e| e.into_inner());
        shared.status.lock().unwrap().clone()
    };
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(super::page::render(&status)),
    )
        .into_response()
}
