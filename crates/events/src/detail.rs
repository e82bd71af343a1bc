//! The events the servers record, as types: one detail per kind, serialised to the JSON the
//! store keeps and the API returns. The observers build events through these and the timeline
//! reads the same fields, so a word the timeline does not know cannot slip in.

use serde::{Deserialize, Serialize};

/// What became of one request, as a stable word (`"ok"`, `"offer"`, `"size-probe"`, ...), the
/// same for every server. [`Outcome::is_error`] is the one place that says which are failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Served completely: a TFTP transfer acknowledged to its last block, an HTTP answer below
    /// 400, a machine's callback accepted.
    Ok,
    /// DHCP replies sent.
    Offer,
    Ack,
    /// The client asked for an address it cannot have (it starts over; not a failure).
    Nak,
    /// A valid DHCP request deliberately left unanswered (`reason` says why): another
    /// server's client, a message that gets no reply, not a boot client in proxy mode.
    Ignored,
    /// A TFTP client ended the transfer itself once it had learnt the file's size from our
    /// option acknowledgement, before any data (firmware such as OVMF sends a request with
    /// `tsize` only to learn the size, then the real one).
    SizeProbe,
    /// Refused before anything was served (a bad or unknown path, no address for the
    /// client, no binary for its architecture).
    Refused,
    /// A file a loader looks for and goes on without (PXELINUX trying `pxelinux.cfg/` names in
    /// turn, iPXE's `autoexec.ipxe`), not there.
    LookupMiss,
    /// Not answered because of a limit (a rate limit, a reply too large).
    Dropped,
    /// HTTP 404: the path names nothing chainboot serves.
    NotFound,
    /// The client went silent in the middle (TFTP retransmissions unanswered).
    TimedOut,
    /// Failed on either side (a read error, a client error, an HTTP error status).
    Error,
}

impl Outcome {
    /// Whether an event with this outcome is a failure of the boot it belongs to.
    pub fn is_error(self) -> bool {
        match self {
            Outcome::Ok
            | Outcome::Offer
            | Outcome::Ack
            | Outcome::Nak
            | Outcome::Ignored
            | Outcome::SizeProbe
            | Outcome::LookupMiss => false,
            Outcome::Refused
            | Outcome::Dropped
            | Outcome::NotFound
            | Outcome::TimedOut
            | Outcome::Error => true,
        }
    }

    /// The word as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Offer => "offer",
            Outcome::Ack => "ack",
            Outcome::Nak => "nak",
            Outcome::Ignored => "ignored",
            Outcome::SizeProbe => "size-probe",
            Outcome::Refused => "refused",
            Outcome::LookupMiss => "lookup-miss",
            Outcome::Dropped => "dropped",
            Outcome::NotFound => "not-found",
            Outcome::TimedOut => "timed-out",
            Outcome::Error => "error",
        }
    }

    /// An HTTP response's outcome from its status.
    pub fn of_http_status(status: u16) -> Outcome {
        match status {
            0..=399 => Outcome::Ok,
            404 => Outcome::NotFound,
            _ => Outcome::Error,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event's detail together with its kind.
pub trait Detail: Serialize {
    /// The event kind (`dhcp`, `tftp`, `http`).
    const KIND: &'static str;

    /// The JSON stored and served.
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// One DHCP exchange of a boot client.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DhcpDetail {
    /// `ipv4` (DHCP) or `ipv6` (DHCPv6): one machine's timeline holds both.
    pub family: &'static str,
    /// The request's message type, lower case (`discover`, `request`, ...; DHCPv6: `solicit`,
    /// `request`, `renew`, `information-request`, ...).
    pub msg: String,
    /// `pxe`, `http-boot` (firmware), `ipxe`, or `other`.
    pub client: &'static str,
    /// Option 93, when sent.
    pub arch: Option<u16>,
    pub iface: String,
    pub port: u16,
    pub outcome: Outcome,
    /// Why it was ignored, refused or dropped (`pool-exhausted`, `other-server`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The address offered or acknowledged.
    pub address: Option<String>,
    /// `{"stage", "file"}` or `{"no_boot"}`, or null.
    pub decision: serde_json::Value,
}

impl Detail for DhcpDetail {
    const KIND: &'static str = "dhcp";
}

/// One finished TFTP transfer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TftpDetail {
    pub client: String,
    pub path: String,
    /// `first-stage`, `script`, `file`.
    pub what: &'static str,
    pub first_stage: bool,
    pub bytes: u64,
    pub blksize: usize,
    pub windowsize: u16,
    pub duration_ms: u64,
    pub mb_per_s: f64,
    pub outcome: Outcome,
    /// What went wrong, when the outcome is an error.
    pub error: Option<String>,
    /// What the client said when it ended a transfer without it being an error (a size
    /// probe's ERROR packet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// A first stage taken whole: whether it came from the machine's own address.
    #[serde(flatten)]
    pub source: SourceProof,
}

/// Whether a first stage's fetch came from its machine's own address: chainboot's DHCP
/// leased that address to the MAC (where chainboot hands out addresses) and the kernel's
/// neighbour table maps it to the same hardware address. What a Secure Boot refusal needs to
/// count; `None` for every other transfer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SourceProof {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub own_address: Option<bool>,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unproven: Option<String>,
}

impl SourceProof {
    pub fn of(check: Result<(), String>) -> SourceProof {
        match check {
            Ok(()) => SourceProof {
                own_address: Some(true),
                unproven: None,
            },
            Err(why) => SourceProof {
                own_address: Some(false),
                unproven: Some(why),
            },
        }
    }
}

impl Detail for TftpDetail {
    const KIND: &'static str = "tftp";
}

/// One HTTP response on the boot path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpDetail {
    pub client: String,
    pub method: String,
    pub path: String,
    /// `first-stage`, `script`, `kernel`, `initrd`, `config`, `file`, `callback`, `other`.
    pub what: &'static str,
    pub status: u16,
    pub outcome: Outcome,
    pub bytes: u64,
    pub duration_ms: u64,
    /// The whole body was sent.
    pub complete: bool,
    /// A first stage (UEFI HTTP Boot): whether it came from the machine's own address.
    #[serde(flatten)]
    pub source: SourceProof,
}

impl Detail for HttpDetail {
    const KIND: &'static str = "http";
}

/// Whether a stored event's detail reports a failure. Events written before outcomes were
/// words (Rust debug text such as `Replied(Offer)`, `completed`) are read as they were meant.
pub fn is_error(detail: &serde_json::Value) -> bool {
    let outcome = detail.get("outcome");
    if let Some(o) = outcome.and_then(|o| Outcome::deserialize(o).ok()) {
        return o.is_error();
    }
    if let Some(status) = detail.get("status").and_then(|v| v.as_u64()) {
        return status >= 400;
    }
    match outcome.and_then(|v| v.as_str()) {
        Some(o) => !(o == "completed" || o.starts_with("Replied(") || o.starts_with("Ignored(")),
        None => detail.get("error").is_some_and(|e| !e.is_null()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outcomes_are_stable_words_and_only_failures_are_errors() {
        let all = [
            (Outcome::Ok, "ok", false),
            (Outcome::Offer, "offer", false),
            (Outcome::Ack, "ack", false),
            (Outcome::Nak, "nak", false),
            (Outcome::Ignored, "ignored", false),
            (Outcome::SizeProbe, "size-probe", false),
            (Outcome::Refused, "refused", true),
            (Outcome::LookupMiss, "lookup-miss", false),
            (Outcome::Dropped, "dropped", true),
            (Outcome::NotFound, "not-found", true),
            (Outcome::TimedOut, "timed-out", true),
            (Outcome::Error, "error", true),
        ];
        for (o, word, error) in all {
            assert_eq!(serde_json::to_value(o).unwrap(), json!(word));
            assert_eq!(o.as_str(), word);
            assert_eq!(o.is_error(), error, "{word}");
            assert_eq!(is_error(&json!({ "outcome": word })), error, "{word}");
        }
        assert_eq!(Outcome::of_http_status(206), Outcome::Ok);
        assert_eq!(Outcome::of_http_status(404), Outcome::NotFound);
        assert_eq!(Outcome::of_http_status(500), Outcome::Error);
    }

    #[test]
    fn events_stored_before_outcomes_were_words_read_as_meant() {
        assert!(!is_error(&json!({"outcome": "Replied(Offer)"})));
        assert!(!is_error(&json!({"outcome": "Ignored(OtherServer)"})));
        assert!(!is_error(&json!({"outcome": "completed", "error": null})));
        assert!(is_error(
            &json!({"outcome": "timed out", "error": "timed out"})
        ));
        assert!(is_error(&json!({"what": "kernel", "status": 404})));
        assert!(!is_error(&json!({"event": "installed"})));
    }
}
