//! A machine's boots as timelines, read from the store: shared by the API route and the
//! machine JSON (`MachineEvents::last_boot`).

use chainboot_events::boots;
use chainboot_machine::Mac;
use chainboot_store::events::{self, EventFilter};
use chainboot_store::Store;

/// Events read at most for a machine's timelines (its last boots).
const TIMELINE_EVENTS: usize = 2000;
/// A machine's operator changes listed at most (its newest).
pub const OPERATOR_EVENTS: usize = 50;

/// A machine's boots as timelines (newest last), from its last [`TIMELINE_EVENTS`] events.
pub fn machine_timeline(store: &Store, mac: Mac) -> Result<serde_json::Value, String> {
    let mut list = Vec::new();
    while list.len() < TIMELINE_EVENTS {
        let page = events::list(
            store,
            &EventFilter {
                mac: Some(mac),
                before_id: list.last().map(|e: &events::EventRecord| e.id),
                limit: Some(TIMELINE_EVENTS - list.len()),
                ..EventFilter::default()
            },
        )
        .map_err(|e| e.to_string())?;
        if page.is_empty() {
            break;
        }
        list.extend(page);
    }
    Ok(serde_json::to_value(boots(&list)).unwrap_or_default())
}

/// A machine's newest operator changes (pin, labels, re-arm, forget: who did what, through
/// which server), oldest first, at most [`OPERATOR_EVENTS`]; in the API's event form.
pub fn operator_actions(store: &Store, mac: Mac) -> Result<serde_json::Value, String> {
    let mut list = events::list(
        store,
        &EventFilter {
            mac: Some(mac),
            kind: Some(chainboot_events::OPERATOR.into()),
            limit: Some(OPERATOR_EVENTS),
            ..EventFilter::default()
        },
    )
    .map_err(|e| e.to_string())?;
    list.reverse();
    Ok(serde_json::to_value(list).unwrap_or_default())
}
