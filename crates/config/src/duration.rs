//! The one way durations are written in the config: human strings (`"12h"`, `"90s"`,
//! `"1h 30m"`, `"500ms"`), as in ISC and Kea docs people already read; a bare integer means
//! seconds, in every section. Fields are `std::time::Duration` with
//! `#[serde(with = "chainboot_config::duration")]` (or `duration::option` for an optional one).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Parses `"12h"`, `"1h 30m"`, `"500ms"` or `"90"` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| {
        format!("`{s}` is not a duration ({e}); write e.g. \"12h\", \"90s\", \"500ms\"")
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Secs(u64),
    Text(String),
}

/// A duration field that is only read (no `Serialize`):
/// `#[serde(deserialize_with = "chainboot_config::duration::deserialize")]`.
pub fn deserialize_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

/// Optional variant of [`deserialize_duration`] (use with `#[serde(default)]`).
pub fn deserialize_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    deserialize_duration(d).map(Some)
}

/// `with = "chainboot_config::duration"`: written back as human text.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// `with = "chainboot_config::duration"`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    deserialize_duration(d)
}

/// `with = "chainboot_config::duration::option"` (with `#[serde(default)]`).
pub mod option {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::deserialize_duration(d).map(Some)
    }
}
