//! `GET` and `PUT /api/rooms/{room}/layout`: the room's layout mode and pins. The body is read
//! by hand rather than by a derived deserializer, so that every refusal names its problem
//! (`unknown layout mode "mosaic": use grid, speaker or custom`), as a person fixing a
//! request needs.

use super::{ApiError, AppState, room_id};
use crate::room::layout::{LayoutMode, Region};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// Largest accepted layout body (a hundred regions fit in a few KiB).
pub const MAX_LAYOUT_BYTES: usize = 16 * 1024;

/// What a `PUT` asks for: a mode, pins, or both.
#[derive(Debug, PartialEq)]
pub struct LayoutRequest {
    pub mode: Option<LayoutMode>,
    pub pin: Option<Vec<String>>,
}

/// Reads a layout request; the error names the problem.
pub fn parse_layout(body: &[u8]) -> Result<LayoutRequest, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or("the body must be a JSON object such as {\"mode\": \"grid\"}")?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["mode", "regions", "pin"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown field {k:?}: a layout has \"mode\", \"regions\" and \"pin\""
        ));
    }
    let regions = obj.get("regions");
    let mode = match obj.get("mode") {
        None => None,
        Some(Value::String(m)) => Some(match m.as_str() {
            "grid" | "speaker" if regions.is_some() => {
                return Err(format!("\"regions\" belong to mode \"custom\", not {m:?}"));
            }
            "grid" => LayoutMode::Grid,
            "speaker" => LayoutMode::Speaker,
            "custom" => {
                let regions = regions.ok_or("mode \"custom\" needs \"regions\"")?;
                let regions: Vec<Region> = serde_json::from_value(regions.clone()).map_err(|e| {
                    format!("regions must be a list of {{\"x\", \"y\", \"w\", \"h\"}} fractions: {e}")
                })?;
                LayoutMode::custom(regions).map_err(|e| e.to_string())?
            }
            other => {
                return Err(format!(
                    "unknown layout mode {other:?}: use grid, speaker or custom"
                ));
            }
        }),
        Some(other) => return Err(format!("mode must be a string, not {other}")),
    };
    if mode.is_none() && regions.is_some() {
        return Err("\"regions\" need \"mode\": \"custom\"".into());
    }
    let pin = match obj.get("pin") {
        None => None,
        Some(Value::Array(list)) => Some(
            list.iter()
                .map(|p| {
                    p.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| format!("pin must list session ids (strings), not {p}"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(other) => return Err(format!("pin must be a list of session ids, not {other}")),
    };
    if mode.is_none() && pin.is_none() {
        return Err("nothing to change: give \"mode\" and/or \"pin\"".into());
    }
    Ok(LayoutRequest { mode, pin })
}

pub async fn get_layout(
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let id = room_id(&room)?;
    let not_found = || {
        ApiError::NotFound(format!(
            "no room {id}: a room exists while someone is in it"
        ))
    };
    let handle = state.rooms.get(&id).ok_or_else(not_found)?;
    let info = handle.layout().await.map_err(|_| not_found())?;
    Ok(Json(info).into_response())
}

pub async fn put_layout(
    State(state): State<AppState>,
    Path(room): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = room_id(&room)?;
    if body.len() > MAX_LAYOUT_BYTES {
        return Err(ApiError::TooLarge {
            limit: MAX_LAYOUT_BYTES,
        });
    }
    let request = parse_layout(&body).map_err(ApiError::BadRequest)?;
    let not_found = || {
        ApiError::NotFound(format!(
            "no room {id}: a room exists while someone is in it"
        ))
    };
    let handle = state.rooms.get(&id).ok_or_else(not_found)?;
    let info = handle.set_layout(request.mode, request.pin).await?;
    Ok(Json(info).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_requests() {
        assert_eq!(
            parse_layout(br#"{"mode": "speaker"}"#),
            Ok(LayoutRequest {
                mode: Some(LayoutMode::Speaker),
                pin: None
            })
        );
        assert_eq!(
            parse_layout(br#"{"pin": ["00000000000000ab"]}"#),
            Ok(LayoutRequest {
                mode: None,
                pin: Some(vec!["00000000000000ab".into()])
            })
        );
        let r = parse_layout(
            br#"{"mode": "custom", "regions": [{"x":0,"y":0,"w":0.5,"h":1}], "pin": []}"#,
        )
        .unwrap();
        assert!(matches!(r.mode, Some(LayoutMode::Custom { ref regions }) if regions.len() == 1));
        assert_eq!(r.pin, Some(vec![]));
    }

    #[test]
    fn every_bad_request_names_its_problem() {
        for (body, needle) in [
            (
                &br#"{"mode": "mosaic"}"#[..],
                "unknown layout mode \"mosaic\"",
            ),
            (br#"{"mode": 3}"#, "mode must be a string"),
            (br#"{"mode": "custom"}"#, "needs \"regions\""),
            (
                br#"{"mode": "custom", "regions": [{"x":0.8,"y":0,"w":0.5,"h":1}]}"#,
                "region 0",
            ),
            (br#"{"mode": "custom", "regions": []}"#, "1 to 100 regions"),
            (br#"{"mode": "custom", "regions": [{"x":0}]}"#, "fractions"),
            (
                br#"{"mode": "grid", "regions": []}"#,
                "belong to mode \"custom\"",
            ),
            (br#"{"regions": []}"#, "need \"mode\""),
            (br#"{"pin": "abc"}"#, "list of session ids"),
            (br#"{"pin": [1]}"#, "session ids (strings)"),
            (br#"{"layout": "grid"}"#, "unknown field \"layout\""),
            (br#"{}"#, "nothing to change"),
            (br#"[1]"#, "JSON object"),
            (br#"{"mode": "#, "not JSON"),
        ] {
            let e = parse_layout(body).unwrap_err();
            assert!(e.contains(needle), "{}: {e}", String::from_utf8_lossy(body));
        }
    }
}
