//! `GET /v1/realtime`: a WebSocket in the shape of OpenAI's Realtime API,
//! for tests and demos of upgraded connections through the balancer.
//!
//! On connect it sends `session.created` (with the `?model=` asked for and
//! the replica's name). A text message that is a `response.create` event is
//! answered with `response.created`, one `response.output_text.delta` per
//! token (`response.max_output_tokens`, default the engine's `default_max_tokens`,
//! one every `decode_ms_per_token`) and `response.done`; any other message,
//! text or binary, comes back as it is (an echo). A close is answered with a
//! close.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use serde_json::{json, Value};

use super::Engine;

/// Upgrades the request; the session runs in the connection's task.
pub(super) async fn realtime(
    State(engine): State<Arc<Engine>>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let model = query
        .get("model")
        .cloned()
        .unwrap_or_else(|| engine.config.models[0].clone());
    upgrade.on_upgrade(move |socket| session(engine, socket, model))
}

async fn session(engine: Arc<Engine>, mut socket: WebSocket, model: String) {
    let created = json!({
        "type": "session.created",
        "session": {"model": model, "replica": engine.config.name},
    });
    if send(&mut socket, &created).await.is_err() {
        return;
    }
    let mut responses = 0u64;
    while let Some(Ok(message)) = socket.recv().await {
        let echo = match message {
            Message::Text(text) => {
                let event: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                if event["type"] == "response.create" {
                    responses += 1;
                    let id = format!("resp_{responses}");
                    if respond(&engine, &mut socket, &event, &id).await.is_err() {
                        return;
                    }
                    continue;
                }
                Message::Text(text)
            }
            Message::Binary(bytes) => Message::Binary(bytes),
            // The library answers a close (and pings); reading on lets it
            // send the answer, and then the stream ends.
            Message::Close(_) | Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket.send(echo).await.is_err() {
            return;
        }
    }
}

/// Streams one response's events.
async fn respond(
    engine: &Engine,
    socket: &mut WebSocket,
    event: &Value,
    id: &str,
) -> Result<(), axum::Error> {
    let tokens = event["response"]["max_output_tokens"]
        .as_u64()
        .map_or(engine.config.default_max_tokens, |n| n as usize);
    let pace = Duration::from_secs_f64(engine.config.decode_ms_per_token / 1e3);
    send(
        socket,
        &json!({"type": "response.created", "response": {"id": id}}),
    )
    .await?;
    for i in 0..tokens {
        tokio::time::sleep(pace).await;
        let delta = json!({"type": "response.output_text.delta", "response_id": id, "delta": format!("token{i} ")});
        send(socket, &delta).await?;
    }
    let done = json!({
        "type": "response.done",
        "response": {"id": id, "status": "completed", "usage": {"output_tokens": tokens}},
    });
    send(socket, &done).await
}

async fn send(socket: &mut WebSocket, event: &Value) -> Result<(), axum::Error> {
    socket.send(Message::Text(event.to_string().into())).await
}
