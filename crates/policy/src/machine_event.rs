//! What a machine may report about itself (`POST /api/v1/machines/MAC/events`): an event name,
//! a message and a small detail, each bounded. Only these fields are kept, never the body as
//! sent: the event log and its live stream hold whatever is kept here, for every machine.

use axum::http::StatusCode;
use serde::Deserialize;

/// Largest body accepted on the events route; larger gets 413.
pub const MAX_BODY_BYTES: usize = 4096;
/// Longest event name, in characters.
pub const MAX_EVENT_CHARS: usize = 64;
/// Largest `message` (bytes of text) and `detail` (bytes of JSON).
pub const MAX_FIELD_BYTES: usize = 2048;

#[derive(Deserialize)]
struct Body {
    event: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    detail: Option<serde_json::Value>,
}

/// The event name and the fields kept (`{"message": ..., "detail": ...}`, those present), or
/// the status and message of the refusal.
pub fn parse(body: &[u8]) -> Result<(String, serde_json::Value), (StatusCode, String)> {
    if body.len() > MAX_BODY_BYTES {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "event body too large: {} bytes, at most {MAX_BODY_BYTES}",
                body.len()
            ),
        ));
    }
    let bad = |msg: String| (StatusCode::BAD_REQUEST, msg);
    let b: Body = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "expected {{\"event\": \"installed\", \"message\": \"...\", \"detail\": {{...}}}}: {e}"
        ))
    })?;
    if b.event.is_empty() || b.event.chars().count() > MAX_EVENT_CHARS {
        return Err(bad(format!(
            "\"event\" must be 1 to {MAX_EVENT_CHARS} characters"
        )));
    }
    let mut kept = serde_json::Map::new();
    if let Some(m) = b.message {
        if m.len() > MAX_FIELD_BYTES {
            return Err(bad(format!(
                "\"message\" is {} bytes, at most {MAX_FIELD_BYTES}",
                m.len()
            )));
        }
        kept.insert("message".into(), m.into());
    }
    if let Some(d) = b.detail {
        let size = d.to_string().len();
        if size > MAX_FIELD_BYTES {
            return Err(bad(format!(
                "\"detail\" is {size} bytes of JSON, at most {MAX_FIELD_BYTES}"
            )));
        }
        kept.insert("detail".into(), d);
    }
    Ok((b.event, kept.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_fields_are_kept_and_the_rest_dropped() {
        let (event, kept) = parse(
            br#"{"event":"installed","message":"done","detail":{"disk":"sda"},"junk":[1,2,3]}"#,
        )
        .unwrap();
        assert_eq!(event, "installed");
        assert_eq!(
            kept,
            serde_json::json!({"message": "done", "detail": {"disk": "sda"}})
        );
    }

    #[test]
    fn oversized_bodies_and_fields_are_refused() {
        let big = format!(r#"{{"event":"x","junk":"{}"}}"#, "a".repeat(MAX_BODY_BYTES));
        assert_eq!(
            parse(big.as_bytes()).unwrap_err().0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let long_event = format!(r#"{{"event":"{}"}}"#, "e".repeat(65));
        assert_eq!(
            parse(long_event.as_bytes()).unwrap_err().0,
            StatusCode::BAD_REQUEST
        );
        let long_message = format!(r#"{{"event":"x","message":"{}"}}"#, "m".repeat(2049));
        assert_eq!(
            parse(long_message.as_bytes()).unwrap_err().0,
            StatusCode::BAD_REQUEST
        );
        assert!(parse(br#"{"message":"no event"}"#).is_err());
        assert!(parse(b"garbage").is_err());
    }
}
