//! What the policy's tests share.

use chainboot_machine::Mac;
use chainboot_store::events::{NewEvent, OPERATOR};
use chainboot_store::machines::OperatorChange;
use chainboot_store::Store;

/// An operator's change to a known machine as the API makes it (the change and its event in
/// one transaction).
pub fn operator(store: &Store, mac: Mac, change: OperatorChange) {
    let event = move |_: &_| NewEvent {
        at_ms: 1,
        mac: Some(mac),
        kind: OPERATOR.into(),
        detail: serde_json::json!({}),
    };
    let done = store
        .machine_operator_change(mac, 1, None, change, event)
        .expect("the store takes the change");
    assert!(done.is_some(), "{mac} is not known");
}

/// Pins `profile` on a known machine.
pub fn pin(store: &Store, mac: Mac, profile: &str) {
    operator(store, mac, OperatorChange::Profile(Some(profile.into())));
}
