//! The store's behaviour, the same for both backends: every test below runs once on SQLite (a
//! file in a temporary directory) and once on PostgreSQL (a fresh database in a throw-away
//! cluster, see chainboot-testnet). Backend-specific behaviour (SQLite's file modes and
//! vacuum; PostgreSQL's refusal of another client's address) is tested at the end.

#![allow(clippy::unwrap_used)] // a test: a failed step is a failed test

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use chainboot_machine::Mac;
use chainboot_store::events::{self, EventFilter, NewEvent, Retention, MAX_PAGE};
use chainboot_store::firmware::{Observations, SecureBootMark, Sighting};
use chainboot_store::leases::{self, LeaseRecord, LeaseState};
use chainboot_store::leases6::{self, Lease6Record};
use chainboot_store::machines::{MachineFacts, MachineRecord, OperatorChange};
use chainboot_store::{servers, Store, StoreBackend, StoreConfig, StoreError};
use chainboot_testnet::postgres::PgCluster;

/// Opens the same database again (a restart), as often as a test likes.
struct Db {
    open: Box<dyn Fn() -> Store>,
    /// What must live as long as the test: the temporary directory or the cluster.
    _keep: Box<dyn std::any::Any>,
}

impl Db {
    fn open(&self) -> Store {
        (self.open)()
    }
}

fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    Db {
        open: Box::new(move || Store::open(&path).unwrap()),
        _keep: Box::new(dir),
    }
}

/// One cluster for the tests of this binary that run at the same time; the last one to finish
/// stops it (a static would never be dropped, and the cluster would outlive the test).
fn cluster() -> Arc<PgCluster> {
    static SHARED: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = shared.upgrade() {
        return c;
    }
    let c = Arc::new(PgCluster::start());
    *shared = Arc::downgrade(&c);
    c
}

fn pg_config(cluster: &PgCluster, url: String, server: &str) -> StoreConfig {
    StoreConfig {
        backend: StoreBackend::Postgres,
        url: Some(url),
        password_file: Some(cluster.password_file()),
        server_name: Some(server.into()),
        ..Default::default()
    }
}

fn postgres() -> Db {
    let c = cluster();
    let cfg = pg_config(&c, c.fresh_database(), "test-server");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_path_buf();
    Db {
        open: Box::new(move || Store::from_config(&cfg, &state).unwrap()),
        _keep: Box::new((c, dir)),
    }
}

/// Runs each behaviour against both backends, as `sqlite::NAME` and `postgres::NAME`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name(&super::sqlite()) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(&super::postgres()) } )*
        }
    };
}

on_both_backends!(
    a_lease_batch_survives_reopen_and_replaces_by_address,
    an_empty_lease_batch_writes_nothing,
    machine_facts_merge_and_the_secret_stays,
    operator_state_round_trips_and_survives_reopen,
    an_operator_change_and_its_event_are_stored_together,
    unproven_machines_expire_and_proven_ones_stay,
    a_machines_secret_is_not_serialised,
    events_round_trip_filter_and_prune,
    events_carry_the_name_of_the_server_that_recorded_them,
    events_are_followed_by_id_with_only_other_servers_details,
    pruning_keeps_the_byte_budget_newest_first,
    a_flood_of_unattributed_events_does_not_push_out_machines_history,
    the_schema_is_current_and_reopening_migrates_nothing,
    heartbeats_list_the_live_servers,
    heartbeats_carry_each_servers_boot_base_and_a_bad_one_reads_back_as_none,
    a_fleet_secret_is_made_by_the_first_server_and_read_by_every_other,
    firmware_sightings_stages_and_secure_boot_refusals_survive_reopen,
    events_and_what_they_tell_about_machines_are_one_transaction,
    v6_leases_survive_reopen_replace_by_address_and_name_their_server,
    pages_of_v6_leases_follow_the_address_cursor,
    the_dhcpv6_server_duid_is_made_once_and_kept,
);

fn mac(s: &str) -> Mac {
    s.parse().unwrap()
}

fn rec(ip: &str, mac: &str, state: LeaseState) -> LeaseRecord {
    LeaseRecord {
        ip: ip.parse().unwrap(),
        mac: mac.into(),
        client_id: Some(vec![1, 2, 3]),
        hostname: Some("node".into()),
        state,
        expires: 1000,
        updated: 10,
    }
}

fn a_lease_batch_survives_reopen_and_replaces_by_address(db: &Db) {
    let s = db.open();
    let refused = leases::save_batch(
        &s,
        &[
            rec("198.18.0.10", "52:54:00:00:00:01", LeaseState::Bound),
            rec("198.18.0.11", "52:54:00:00:00:02", LeaseState::Bound),
        ],
    )
    .unwrap();
    assert!(refused.is_empty());
    let refused = leases::save_batch(
        &s,
        &[rec(
            "198.18.0.10",
            "52:54:00:00:00:01",
            LeaseState::Released,
        )],
    )
    .unwrap();
    assert!(refused.is_empty());
    drop(s);
    let s = db.open();
    let all = leases::load_all(&s).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].state, LeaseState::Released);
    assert_eq!(
        all[1],
        rec("198.18.0.11", "52:54:00:00:00:02", LeaseState::Bound)
    );
}

fn an_empty_lease_batch_writes_nothing(db: &Db) {
    let s = db.open();
    assert!(leases::save_batch(&s, &[]).unwrap().is_empty());
    assert!(leases::load_all(&s).unwrap().is_empty());
}

fn machine_facts_merge_and_the_secret_stays(db: &Db) {
    let s = db.open();
    let m = mac("52:54:00:00:00:01");
    let first = MachineFacts {
        arch: Some("bios".into()),
        ..Default::default()
    };
    let r = s.machine_seen(m, &first, 10, "s1", Some("rescue")).unwrap();
    assert_eq!(r.secret, "s1");
    assert_eq!(r.last_server.as_deref(), Some(s.server_name()));
    let other = db.open().named("pxe-other".into());
    let r = other.machine_seen(m, &first, 11, "s9", None).unwrap();
    assert_eq!(
        r.last_server.as_deref(),
        Some("pxe-other"),
        "the server that answered last"
    );
    assert_eq!(
        r.last_profile.as_deref(),
        Some("rescue"),
        "in the same write"
    );
    let later = MachineFacts {
        hostname: Some("node1".into()),
        ..Default::default()
    };
    let r = s.machine_seen(m, &later, 20, "s2", None).unwrap();
    assert_eq!(r.secret, "s1", "secret chosen once");
    assert_eq!(
        r.facts.arch.as_deref(),
        Some("bios"),
        "unsaid facts are kept"
    );
    assert_eq!(r.facts.hostname.as_deref(), Some("node1"));
    assert_eq!((r.first_seen_ms, r.last_seen_ms), (10, 20));
    assert_eq!(
        r.last_profile.as_deref(),
        Some("rescue"),
        "kept when not given"
    );
    let r = s.machine_seen(m, &later, 15, "s3", None).unwrap();
    assert_eq!(
        r.last_seen_ms, 20,
        "an older sighting does not move last_seen back"
    );
    assert_eq!(s.machine_by_ip("198.18.0.9").unwrap(), None);
    let with_ip = MachineFacts {
        ip: Some("198.18.0.9".into()),
        ..Default::default()
    };
    s.machine_seen(m, &with_ip, 30, "s4", None).unwrap();
    assert_eq!(s.machine_by_ip("198.18.0.9").unwrap().unwrap().mac, m);
}

/// An operator's change as the API makes it: the change and its `operator` event in one
/// transaction (`None`: the machine is not known, nothing changed).
fn operator(
    s: &Store,
    m: Mac,
    change: OperatorChange,
) -> Result<Option<chainboot_store::machines::OperatorChanged>, StoreError> {
    s.machine_operator_change(m, 1, None, change, move |_| NewEvent {
        at_ms: 1,
        mac: Some(m),
        kind: events::OPERATOR.into(),
        detail: serde_json::json!({}),
    })
}

fn pin(profile: Option<&str>) -> OperatorChange {
    OperatorChange::Profile(profile.map(str::to_string))
}

fn operator_state_round_trips_and_survives_reopen(db: &Db) {
    let m = mac("52:54:00:00:00:02");
    {
        let s = db.open();
        assert!(
            operator(&s, m, pin(Some("x"))).unwrap().is_none(),
            "unknown machine"
        );
        assert_eq!(s.machine_ensure(m, 1, "sec").unwrap().secret, "sec");
        assert_eq!(
            s.machine_ensure(m, 2, "other").unwrap().secret,
            "sec",
            "ensure leaves an existing machine alone"
        );
        assert!(operator(&s, m, pin(Some("rescue"))).unwrap().is_some());
        let labels = BTreeMap::from([("rack".to_string(), "r1".to_string())]);
        assert!(operator(&s, m, OperatorChange::Labels(labels))
            .unwrap()
            .is_some());
        assert!(s.machine_mark_installed(m, 5, "kernel fetched").unwrap());
        assert!(s.machine_mark_installed(m, 9, "installed event").unwrap());
        s.machine_set_last_profile(m, "rescue").unwrap();
    }
    let s = db.open();
    let r = s.machine(m).unwrap().unwrap();
    assert_eq!(r.pinned_profile.as_deref(), Some("rescue"));
    assert_eq!(r.last_profile.as_deref(), Some("rescue"));
    assert_eq!(r.labels["rack"], "r1");
    assert_eq!(r.installed_ms, Some(5), "first install time kept");
    assert_eq!(r.installed_reason.as_deref(), Some("kernel fetched"));
    assert!(operator(&s, m, pin(None)).unwrap().is_some());
    assert_eq!(s.machine(m).unwrap().unwrap().pinned_profile, None);
    assert!(operator(&s, m, OperatorChange::Rearm).unwrap().is_some());
    assert_eq!(s.machine(m).unwrap().unwrap().installed_ms, None);
    assert_eq!(s.machine_count().unwrap(), 1);
    assert!(operator(&s, m, OperatorChange::Forget).unwrap().is_some());
    assert!(s.machine(m).unwrap().is_none());
    assert!(s.machines().unwrap().is_empty());
}

fn an_operator_change_and_its_event_are_stored_together(db: &Db) {
    let s = db.open().named("pxe-a".into());
    let m = mac("52:54:00:00:00:07");
    let event = |action: &'static str| {
        move |before: &MachineRecord| NewEvent {
            at_ms: 10,
            mac: Some(m),
            kind: events::OPERATOR.into(),
            detail: serde_json::json!({"action": action, "old": before.pinned_profile}),
        }
    };
    let operator_events = |s: &Store| {
        events::list(
            s,
            &EventFilter {
                mac: Some(m),
                kind: Some(events::OPERATOR.into()),
                ..EventFilter::default()
            },
        )
        .unwrap()
    };
    // Unknown and not to be created: nothing changes, no event.
    let none = s
        .machine_operator_change(m, 10, None, OperatorChange::Rearm, event("rearm"))
        .unwrap();
    assert!(none.is_none());
    assert!(s.machine(m).unwrap().is_none());
    assert!(operator_events(&s).is_empty());
    // Pinning an unknown machine records it, the change and the event.
    let pin = OperatorChange::Profile(Some("rescue".into()));
    let done = s
        .machine_operator_change(m, 10, Some("sec"), pin, event("profile"))
        .unwrap()
        .unwrap();
    assert_eq!(done.before.pinned_profile, None);
    let after = s.machine(m).unwrap().unwrap();
    assert_eq!(
        (after.pinned_profile.as_deref(), after.secret.as_str()),
        (Some("rescue"), "sec")
    );
    let labels = BTreeMap::from([("rack".to_string(), "r2".to_string())]);
    s.machine_mark_installed(m, 11, "kernel fetched").unwrap();
    let l = s
        .machine_operator_change(
            m,
            12,
            Some("x"),
            OperatorChange::Labels(labels),
            event("labels"),
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        l.before.secret, "sec",
        "an existing machine is left as it was"
    );
    let r = s
        .machine_operator_change(m, 13, None, OperatorChange::Rearm, event("rearm"))
        .unwrap()
        .unwrap();
    assert_eq!(r.before.installed_reason.as_deref(), Some("kernel fetched"));
    let after = s.machine(m).unwrap().unwrap();
    assert_eq!(
        (after.labels["rack"].as_str(), after.installed_ms),
        ("r2", None)
    );
    let f = s
        .machine_operator_change(m, 14, None, OperatorChange::Forget, event("forget"))
        .unwrap()
        .unwrap();
    assert!(s.machine(m).unwrap().is_none());
    // Each change's event, as this server's, with the id it was given.
    let list = operator_events(&s);
    let got: Vec<(i64, &str, Option<&str>, serde_json::Value)> = list
        .iter()
        .rev()
        .map(|e| {
            (
                e.id,
                e.detail["action"].as_str().unwrap(),
                e.server.as_deref(),
                e.detail["old"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                done.event_id,
                "profile",
                Some("pxe-a"),
                serde_json::Value::Null
            ),
            (
                l.event_id,
                "labels",
                Some("pxe-a"),
                serde_json::json!("rescue")
            ),
            (
                r.event_id,
                "rearm",
                Some("pxe-a"),
                serde_json::json!("rescue")
            ),
            (
                f.event_id,
                "forget",
                Some("pxe-a"),
                serde_json::json!("rescue")
            ),
        ]
    );
}

fn unproven_machines_expire_and_proven_ones_stay(db: &Db) {
    let s = db.open();
    let facts = MachineFacts::default();
    let hour = 3_600_000;
    let stranger = mac("52:54:00:00:00:10");
    s.machine_seen(stranger, &facts, hour, "a", None).unwrap();
    let came_back = mac("52:54:00:00:00:11");
    s.machine_seen(came_back, &facts, hour, "b", None).unwrap();
    s.machine_seen(came_back, &facts, 2 * hour, "b", None)
        .unwrap();
    let labelled = mac("52:54:00:00:00:12");
    s.machine_seen(labelled, &facts, hour, "c", None).unwrap();
    let labels = BTreeMap::from([("rack".to_string(), "r1".to_string())]);
    operator(&s, labelled, OperatorChange::Labels(labels)).unwrap();
    let leased = mac("52:54:00:00:00:13");
    s.machine_seen(leased, &facts, hour, "d", None).unwrap();
    leases::save_batch(
        &s,
        &[rec("198.18.0.5", "52:54:00:00:00:13", LeaseState::Bound)],
    )
    .unwrap();
    let recent = mac("52:54:00:00:00:14");
    s.machine_seen(recent, &facts, 5 * hour, "e", None).unwrap();
    assert_eq!(s.machine_count().unwrap(), 5);

    assert_eq!(s.machine_prune_unproven(4 * hour).unwrap(), 1);
    assert!(s.machine(stranger).unwrap().is_none());
    let left: Vec<Mac> = s
        .machines_page(None, 10)
        .unwrap()
        .iter()
        .map(|m| m.mac)
        .collect();
    assert_eq!(left, [came_back, labelled, leased, recent]);
    let second: Vec<Mac> = s
        .machines_page(Some(labelled), 2)
        .unwrap()
        .iter()
        .map(|m| m.mac)
        .collect();
    assert_eq!(second, [leased, recent], "the page after `labelled`");
    let newest_first: Vec<Mac> = s.machines().unwrap().iter().map(|m| m.mac).collect();
    assert_eq!(newest_first[0], recent);
}

fn a_machines_secret_is_not_serialised(db: &Db) {
    let s = db.open();
    let r = s
        .machine_seen(
            mac("52:54:00:00:00:03"),
            &MachineFacts::default(),
            1,
            "topsecret",
            None,
        )
        .unwrap();
    let json = serde_json::to_string(&r).unwrap();
    assert!(!json.contains("topsecret"), "{json}");
}

/// Events alone, as the event writer writes a batch that tells nothing about machines.
fn append(s: &Store, batch: &[NewEvent]) -> Result<Vec<i64>, StoreError> {
    events::append_observed(s, batch, &Observations::default())
}

fn ev(at: i64, mac: &str, kind: &str) -> NewEvent {
    NewEvent {
        at_ms: at,
        mac: Some(mac.parse().unwrap()),
        kind: kind.into(),
        detail: serde_json::json!({"n": at}),
    }
}

fn events_round_trip_filter_and_prune(db: &Db) {
    let s = db.open();
    let a = "52:54:00:00:00:01";
    let b = "52:54:00:00:00:02";
    let ids = append(
        &s,
        &[
            ev(1, a, "dhcp"),
            ev(2, b, "dhcp"),
            ev(3, a, "tftp"),
            ev(4, a, "http"),
        ],
    )
    .unwrap();
    assert_eq!(ids.len(), 4);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in order: {ids:?}");
    let all_a = events::list(
        &s,
        &EventFilter {
            mac: Some(a.parse().unwrap()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        all_a.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
        vec![4, 3, 1]
    );
    assert_eq!(all_a[0].detail["n"], 4);
    assert_eq!(all_a[0].id, ids[3], "each event got its own id");
    let tftp = events::list(
        &s,
        &EventFilter {
            kind: Some("tftp".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(tftp.len(), 1);
    let after = events::list(
        &s,
        &EventFilter {
            after_id: Some(ids[1]),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(after.len(), 2);
    let since = events::list(
        &s,
        &EventFilter {
            since_ms: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(since.len(), 2);
    let before = events::list(
        &s,
        &EventFilter {
            before_id: Some(ids[2]),
            limit: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(before.iter().map(|e| e.id).collect::<Vec<_>>(), [ids[1]]);
    // Age: drop at_ms < 2; count: keep the newest 2.
    let keep = Retention {
        max_count: 2,
        min_at_ms: 2,
        max_bytes: u64::MAX,
        max_unattributed: 10,
    };
    assert_eq!(events::prune(&s, &keep).unwrap(), 2);
    let left = events::list(&s, &EventFilter::default()).unwrap();
    assert_eq!(left.iter().map(|e| e.at_ms).collect::<Vec<_>>(), vec![4, 3]);
}

fn events_carry_the_name_of_the_server_that_recorded_them(db: &Db) {
    let s = db.open().named("pxe-2".into());
    append(&s, &[ev(1, "52:54:00:00:00:01", "dhcp")]).unwrap();
    let list = events::list(&s, &EventFilter::default()).unwrap();
    assert_eq!(list[0].server.as_deref(), Some("pxe-2"));
    let json = serde_json::to_value(&list[0]).unwrap();
    assert_eq!(json["server"], "pxe-2");
}

fn events_are_followed_by_id_with_only_other_servers_details(db: &Db) {
    let a = db.open().named("pxe-a".into());
    let b = db.open().named("pxe-b".into());
    let start = events::newest_id(&b).unwrap();
    let ida = append(
        &a,
        &[
            ev(1, "52:54:00:00:00:01", "dhcp"),
            ev(2, "52:54:00:00:00:02", "tftp"),
        ],
    )
    .unwrap();
    let idb = append(&b, &[ev(3, "52:54:00:00:00:03", "http")]).unwrap();
    assert_eq!(events::newest_id(&a).unwrap(), idb[0]);
    let got = events::following(&b, start, &[], "pxe-b", 1000).unwrap();
    let ids: Vec<i64> = got.iter().map(|e| e.id).collect();
    assert_eq!(ids, [ida[0], ida[1], idb[0]], "oldest first");
    assert_eq!(got[0].server.as_deref(), Some("pxe-a"));
    assert_eq!(got[0].detail, serde_json::json!({"n": 1}));
    assert_eq!(got[1].kind, "tftp");
    assert_eq!(
        got[2].detail,
        serde_json::json!({}),
        "the follower's own details are left out"
    );
    // Ids asked for again below the cursor (the follower's gaps), and the page limit.
    let again = events::following(&b, idb[0], &[ida[1]], "pxe-b", 1000).unwrap();
    assert_eq!(again.iter().map(|e| e.id).collect::<Vec<_>>(), [ida[1]]);
    assert_eq!(
        events::following(&b, start, &[], "pxe-b", 1).unwrap().len(),
        1
    );
    assert!(events::following(&b, idb[0], &[], "pxe-b", 1000)
        .unwrap()
        .is_empty());
}

fn sized(at: i64, mac: Option<&str>, bytes: usize) -> NewEvent {
    NewEvent {
        at_ms: at,
        mac: mac.map(|m| m.parse().unwrap()),
        kind: "http".into(),
        detail: serde_json::json!({ "pad": "x".repeat(bytes) }),
    }
}

fn pruning_keeps_the_byte_budget_newest_first(db: &Db) {
    let s = db.open();
    let batch: Vec<NewEvent> = (0..4000)
        .map(|i| sized(i, Some("52:54:00:00:00:01"), 1000))
        .collect();
    append(&s, &batch).unwrap();
    let full = events::stored_bytes(&s).unwrap();
    assert!(full > 4_000_000, "{full}");
    let keep = Retention {
        max_count: 100_000,
        min_at_ms: 0,
        max_bytes: 1_000_000,
        max_unattributed: 100_000,
    };
    assert!(events::prune(&s, &keep).unwrap() > 3000);
    let kept = events::stored_bytes(&s).unwrap();
    assert!((600_000..=1_000_000).contains(&kept), "{kept}");
    let left = events::list(&s, &EventFilter::default()).unwrap();
    assert_eq!(left[0].at_ms, 3999, "the newest stay");
    assert!(left.len() >= 500, "{} kept", left.len());
}

fn a_flood_of_unattributed_events_does_not_push_out_machines_history(db: &Db) {
    let s = db.open();
    let history: Vec<NewEvent> = (0..50)
        .map(|i| sized(i, Some("52:54:00:00:00:07"), 10))
        .collect();
    append(&s, &history).unwrap();
    let flood: Vec<NewEvent> = (50..5050).map(|i| sized(i, None, 10)).collect();
    append(&s, &flood).unwrap();
    let keep = Retention {
        max_count: 1000,
        min_at_ms: 0,
        max_bytes: u64::MAX,
        max_unattributed: 100,
    };
    events::prune(&s, &keep).unwrap();
    let machine = events::list(
        &s,
        &EventFilter {
            mac: Some("52:54:00:00:00:07".parse().unwrap()),
            limit: Some(MAX_PAGE),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(machine.len(), 50, "history intact");
    let all = events::list(
        &s,
        &EventFilter {
            limit: Some(MAX_PAGE),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(all.len(), 150);
    assert_eq!(all[0].at_ms, 5049, "the newest unattributed stay");
}

fn the_schema_is_current_and_reopening_migrates_nothing(db: &Db) {
    let s = db.open();
    assert_eq!(s.schema_version().unwrap(), chainboot_store::SCHEMA_VERSION);
    s.machine_ensure(mac("52:54:00:00:00:01"), 1, "x").unwrap();
    drop(s);
    let s = db.open();
    assert_eq!(s.schema_version().unwrap(), chainboot_store::SCHEMA_VERSION);
    assert_eq!(s.machine_count().unwrap(), 1, "data kept");
    s.ping().unwrap();
}

fn heartbeats_list_the_live_servers(db: &Db) {
    let a = db.open().named("pxe-a".into());
    let b = db.open().named("pxe-b".into());
    servers::heartbeat(&a, "1.0", true, &[]).unwrap();
    servers::heartbeat(&b, "1.1", true, &["198.18.0.2".parse().unwrap()]).unwrap();
    servers::heartbeat(&a, "1.0", false, &[]).unwrap();
    let live = servers::live(&a, 60_000).unwrap();
    let names: Vec<&str> = live.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["pxe-a", "pxe-b"]);
    assert_eq!(live[1].version, "1.1");
    let addrs: Vec<String> = live[1].addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        addrs,
        ["198.18.0.2"],
        "each server's DHCP addresses are read back"
    );
    assert!(live[0].addresses.is_empty());
    assert!(
        live.iter().all(|s| (0..60_000).contains(&s.age_ms)),
        "{live:?}"
    );
    assert!(live[0].started_ms <= live[0].heartbeat_ms);
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert!(
        servers::live(&a, 10).unwrap().is_empty(),
        "a heartbeat older than the limit is not live"
    );
    servers::leave(&b).unwrap();
    let names: Vec<String> = servers::all(&a)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["pxe-a"], "a server that left is gone at once");
}

fn heartbeats_carry_each_servers_boot_base_and_a_bad_one_reads_back_as_none(db: &Db) {
    let a = db.open().named("pxe-a".into());
    let b = db.open().named("pxe-b".into());
    let base = |http: &str, https_port| servers::BootBase {
        http: http.into(),
        https_port,
    };
    let boot_of = |name: &str| {
        servers::all(&a)
            .unwrap()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap()
            .boot
    };
    servers::heartbeat(&a, "1.0", true, &[]).unwrap();
    assert_eq!(
        boot_of("pxe-a"),
        None,
        "a server that said nothing has none"
    );
    a.set_boot_base(Some(base("http://198.18.0.1:8080", Some(8443))));
    b.set_boot_base(Some(base("http://198.18.0.2", None)));
    servers::heartbeat(&a, "1.0", false, &[]).unwrap();
    servers::heartbeat(&b, "1.0", true, &[]).unwrap();
    assert_eq!(
        boot_of("pxe-a"),
        Some(base("http://198.18.0.1:8080", Some(8443)))
    );
    assert_eq!(boot_of("pxe-b"), Some(base("http://198.18.0.2", None)));
    // Each heartbeat writes the base again: a changed one replaces the old.
    b.set_boot_base(Some(base("https://198.18.0.3:9443", Some(9443))));
    servers::heartbeat(&b, "1.0", false, &[]).unwrap();
    assert_eq!(
        boot_of("pxe-b"),
        Some(base("https://198.18.0.3:9443", Some(9443)))
    );
    // What another server wrote is checked when read: no URL, spaces, control bytes, an
    // over-long one (not even written) and port 0 are no base or no port.
    for bad in [
        "ftp://198.18.0.2",
        "javascript:alert(1)",
        "http://198.18.0.2 || shell",
        "http://198.18.0.2\nshell",
        &format!("http://{}", "a".repeat(servers::MAX_BOOT_BASE)),
    ] {
        b.set_boot_base(Some(base(bad, Some(8443))));
        servers::heartbeat(&b, "1.0", false, &[]).unwrap();
        assert_eq!(boot_of("pxe-b"), None, "{bad:?}");
    }
    b.set_boot_base(Some(base("http://198.18.0.2", Some(0))));
    servers::heartbeat(&b, "1.0", false, &[]).unwrap();
    assert_eq!(boot_of("pxe-b"), Some(base("http://198.18.0.2", None)));
    b.set_boot_base(None);
    servers::heartbeat(&b, "1.0", false, &[]).unwrap();
    assert_eq!(
        boot_of("pxe-b"),
        None,
        "a server that stops saying has none"
    );
    let json = serde_json::to_value(&servers::all(&a).unwrap()[0]).unwrap();
    assert_eq!(json["boot"]["http"], "http://198.18.0.1:8080", "{json}");
    assert_eq!(json["boot"]["https_port"], 8443, "{json}");
}

fn a_fleet_secret_is_made_by_the_first_server_and_read_by_every_other(db: &Db) {
    let a = db.open().named("pxe-a".into());
    let b = db.open().named("pxe-b".into());
    let name = servers::BOOT_CAPABILITY_SECRET;
    let first = servers::fleet_secret(&a, name, || "a".repeat(64)).unwrap();
    assert_eq!(first, "a".repeat(64));
    let other = servers::fleet_secret(&b, name, || other_secret("b")).unwrap();
    assert_eq!(other, first, "the second server gets the first one's");
    drop((a, b));
    let again = servers::fleet_secret(&db.open(), name, || other_secret("c")).unwrap();
    assert_eq!(again, first, "kept across restarts");
    // What is stored must be a secret: a short one is refused, not used.
    let c = db.open();
    let e = servers::fleet_secret(&c, "short", || "x".into()).unwrap_err();
    assert!(e.to_string().contains("not 32 to 256"), "{e}");
}

/// A fresh secret other than the stored one.
fn other_secret(c: &str) -> String {
    c.repeat(64)
}

fn rec6(ip: &str, duid: &[u8], iaid: u32, state: LeaseState) -> Lease6Record {
    Lease6Record {
        ip: ip.parse().unwrap(),
        duid: duid.to_vec(),
        iaid,
        mac: Some("52:54:00:00:00:01".into()),
        state,
        expires: 1000,
        updated: 10,
        server: None,
    }
}

/// `r` as read back from a store that `server` wrote it through.
fn written_by(mut r: Lease6Record, server: &str) -> Lease6Record {
    r.server = Some(server.into());
    r
}

fn v6_leases_survive_reopen_replace_by_address_and_name_their_server(db: &Db) {
    let s = db.open().named("pxe-a".into());
    let duid = [0, 4, 1, 2, 3];
    let refused = leases6::save_batch(
        &s,
        &[
            rec6("2001:db8::10", &duid, 1, LeaseState::Bound),
            rec6("2001:db8::11", &duid, u32::MAX, LeaseState::Bound),
        ],
    )
    .unwrap();
    assert!(refused.is_empty());
    let released = rec6("2001:db8::10", &duid, 1, LeaseState::Released);
    assert!(leases6::save_batch(&s, std::slice::from_ref(&released))
        .unwrap()
        .is_empty());
    assert!(leases6::save_batch(&s, &[]).unwrap().is_empty());
    drop(s);
    let s = db.open();
    let all = leases6::load_all(&s).unwrap();
    assert_eq!(
        all,
        [
            written_by(released, "pxe-a"),
            written_by(
                rec6("2001:db8::11", &duid, u32::MAX, LeaseState::Bound),
                "pxe-a"
            )
        ]
    );
}

fn pages_of_v6_leases_follow_the_address_cursor(db: &Db) {
    let s = db.open();
    let all: Vec<Lease6Record> = (0..25u32)
        .map(|i| {
            let ip = format!("2001:db8::{:x}", 0x100 + i * 7);
            rec6(&ip, &[0, 4, 1], i, LeaseState::Bound)
        })
        .collect();
    leases6::save_batch(&s, &all).unwrap();
    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let p = leases6::page(&s, after, 4).unwrap();
        assert!(p.len() <= 4);
        let Some(last) = p.last() else { break };
        after = Some(last.ip);
        walked.extend(p.into_iter().map(|l| l.ip));
    }
    let expected: Vec<_> = leases6::load_all(&s)
        .unwrap()
        .into_iter()
        .map(|l| l.ip)
        .collect();
    assert_eq!(walked.len(), 25);
    assert_eq!(
        walked, expected,
        "the same order as the whole list, each once"
    );
    let mut text: Vec<String> = expected.iter().map(|a| a.to_string()).collect();
    text.sort();
    let sorted: Vec<String> = expected.iter().map(|a| a.to_string()).collect();
    assert_eq!(sorted, text, "address text, byte by byte, on both backends");
}

fn the_dhcpv6_server_duid_is_made_once_and_kept(db: &Db) {
    let s = db.open().named("pxe-a".into());
    let first = leases6::server_duid(&s, || vec![0, 4, 9, 9]).unwrap();
    assert_eq!(first, [0, 4, 9, 9]);
    drop(s);
    let s = db.open().named("pxe-a".into());
    assert_eq!(
        leases6::server_duid(&s, || vec![0, 4, 1, 1]).unwrap(),
        first
    );
    let listed: Vec<Vec<u8>> = leases6::server_duids(&s)
        .unwrap()
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(listed, [first]);
}

// ---- PostgreSQL only: the database decides who holds an address.

#[test]
fn postgres_refuses_an_address_another_client_holds_and_returns_the_holder() {
    let db = postgres();
    let a = db.open().named("pxe-a".into());
    let b = db.open().named("pxe-b".into());
    let mut held = rec("198.18.0.20", "52:54:00:00:00:01", LeaseState::Bound);
    held.updated = 100;
    held.expires = 200;
    assert!(leases::save_batch(&a, std::slice::from_ref(&held))
        .unwrap()
        .is_empty());
    // Another client, while the lease runs: refused, and told who holds it.
    let mut other = rec("198.18.0.20", "52:54:00:00:00:02", LeaseState::Bound);
    other.updated = 150;
    other.expires = 250;
    let free = rec("198.18.0.21", "52:54:00:00:00:02", LeaseState::Bound);
    let refused = leases::save_batch(&b, &[other.clone(), free.clone()]).unwrap();
    assert_eq!(refused, [held.clone()]);
    // The same client renewing: accepted.
    let mut renewed = held.clone();
    renewed.updated = 160;
    renewed.expires = 400;
    assert!(leases::save_batch(&b, std::slice::from_ref(&renewed))
        .unwrap()
        .is_empty());
    // Once expired by the writer's clock, or released, another client may have it.
    other.updated = 400;
    other.expires = 500;
    assert!(leases::save_batch(&b, std::slice::from_ref(&other))
        .unwrap()
        .is_empty());
    let mut released = free.clone();
    released.state = LeaseState::Released;
    leases::save_batch(&b, &[released]).unwrap();
    let taker = rec("198.18.0.21", "52:54:00:00:00:03", LeaseState::Bound);
    assert!(leases::save_batch(&a, std::slice::from_ref(&taker))
        .unwrap()
        .is_empty());
    let all = leases::load_all(&a).unwrap();
    assert_eq!(all, [other, taker]);
    assert_eq!(leases::changed_since(&a, 400).unwrap().len(), 1);
}

#[test]
fn postgres_servers_racing_for_the_same_addresses_never_share_one() {
    let db = postgres();
    let servers: Vec<Arc<Store>> = (0..3)
        .map(|i| Arc::new(db.open().named(format!("pxe-{i}"))))
        .collect();
    // Every server tries to lease all 200 addresses to its own clients, in batches of 20, at
    // once.
    let threads: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(n, s)| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut won = Vec::new();
                for chunk in 0..10u32 {
                    let batch: Vec<LeaseRecord> = (0..20u32)
                        .map(|i| {
                            let host = chunk * 20 + i;
                            LeaseRecord {
                                ip: std::net::Ipv4Addr::from(
                                    u32::from_be_bytes([198, 18, 1, 0]) + host,
                                ),
                                mac: format!("52:54:00:0{n}:{:02x}:{:02x}", host >> 8, host & 0xff),
                                client_id: None,
                                hostname: None,
                                state: LeaseState::Bound,
                                expires: 10_000,
                                updated: 1,
                            }
                        })
                        .collect();
                    let refused = leases::save_batch(&s, &batch).unwrap();
                    won.extend(
                        batch
                            .into_iter()
                            .filter(|r| !refused.iter().any(|x| x.ip == r.ip)),
                    );
                }
                won
            })
        })
        .collect();
    let won: Vec<Vec<LeaseRecord>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let total: usize = won.iter().map(Vec::len).sum();
    assert_eq!(total, 200, "each address won exactly once");
    let stored = leases::load_all(&servers[0]).unwrap();
    assert_eq!(stored.len(), 200);
    for r in won.iter().flatten() {
        let row = stored.iter().find(|s| s.ip == r.ip).unwrap();
        assert_eq!(
            row.mac, r.mac,
            "{} is held by the client whose write was accepted",
            r.ip
        );
    }
}

#[test]
fn postgres_a_server_whose_sessions_closed_is_not_live_although_its_heartbeat_is_fresh() {
    let c = cluster();
    let url = c.fresh_database();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::from_config(&pg_config(&c, url.clone(), "pxe-a"), da.path()).unwrap();
    let b = Store::from_config(&pg_config(&c, url, "pxe-b"), db.path()).unwrap();
    servers::heartbeat(&a, "1.0", true, &[]).unwrap();
    servers::heartbeat(&b, "1.0", true, &[]).unwrap();
    let names = |a: &Store| -> Vec<String> {
        servers::live(a, 60_000)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect()
    };
    assert_eq!(names(&a), ["pxe-a", "pxe-b"]);
    // A server that dies closes its sessions (the kernel closes a killed process's sockets):
    // as if pxe-b were killed, its connections go while its heartbeat row stays fresh.
    drop(b);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while names(&a) != ["pxe-a"] {
        assert!(
            std::time::Instant::now() < deadline,
            "pxe-b still live 10 s after its sessions closed: {:?}",
            servers::all(&a).unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let rows = servers::all(&a).unwrap();
    let b_row = rows.iter().find(|s| s.name == "pxe-b").unwrap();
    assert!(!b_row.connected && b_row.age_ms < 60_000, "{b_row:?}");
}

#[test]
fn postgres_a_watched_servers_death_is_told_when_its_sessions_close_and_not_before() {
    let c = cluster();
    let url = c.fresh_database();
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = Store::from_config(&pg_config(&c, url.clone(), "pxe-a"), da.path()).unwrap();
    let b = Store::from_config(&pg_config(&c, url.clone(), "pxe-b"), db.path()).unwrap();
    let old = Store::from_config(&pg_config(&c, url.clone(), "pxe-old"), dc.path()).unwrap();
    let wait = std::time::Duration::from_secs(5);
    assert!(b.hold_presence(wait), "pxe-b took its presence lock");
    let (tx, rx) = std::sync::mpsc::channel();
    let tell = |name: &'static str| {
        let tx = tx.clone();
        move |_at_ms: i64| tx.send(name).unwrap()
    };
    let _watch_b = a.watch_presence("pxe-b", tell("pxe-b")).unwrap();
    // A server that never holds a presence lock (an older version) is never taken for dead.
    let _watch_old = a.watch_presence("pxe-old", tell("pxe-old")).unwrap();
    assert_eq!(
        rx.recv_timeout(std::time::Duration::from_secs(2)),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout),
        "nobody died yet"
    );
    // A second server under pxe-b's name cannot take the lock while pxe-b lives.
    let dd = tempfile::tempdir().unwrap();
    let twin = Store::from_config(&pg_config(&c, url, "pxe-b"), dd.path()).unwrap();
    assert!(!twin.hold_presence(std::time::Duration::from_millis(500)));
    drop(twin);
    // As if pxe-b were killed: its sessions close, and its watcher hears of it at once.
    drop(b);
    assert_eq!(
        rx.recv_timeout(std::time::Duration::from_secs(10)),
        Ok("pxe-b"),
        "pxe-b's death was told"
    );
    assert_eq!(
        rx.recv_timeout(std::time::Duration::from_secs(2)),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout),
        "pxe-old, which never held the lock, is not taken for dead"
    );
    drop(old);
}

#[test]
fn postgres_refuses_a_database_newer_than_this_binary() {
    let c = cluster();
    let state = tempfile::tempdir().unwrap();
    let url = c.fresh_database();
    let cfg = pg_config(&c, url.clone(), "x");
    drop(Store::from_config(&cfg, state.path()).unwrap());
    let name = url.rsplit('/').next().unwrap();
    let future = chainboot_store::SCHEMA_VERSION + 1;
    c.psql(
        name,
        &format!("INSERT INTO schema_version VALUES ({future}, 0)"),
    );
    match Store::from_config(&cfg, state.path()) {
        Err(StoreError::NewerSchema { found, known }) => {
            assert_eq!((found, known), (future, chainboot_store::SCHEMA_VERSION));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn postgres_with_a_wrong_password_fails_with_the_reason() {
    let c = cluster();
    let state = tempfile::tempdir().unwrap();
    let mut cfg = pg_config(&c, c.fresh_database(), "x");
    let wrong = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(wrong.path(), "not-the-password\n").unwrap();
    cfg.password_file = Some(wrong.path().to_path_buf());
    cfg.connect_timeout = std::time::Duration::from_secs(2);
    let err = Store::from_config(&cfg, state.path())
        .expect_err("refused")
        .to_string();
    assert!(err.contains("password authentication failed"), "{err}");
}

#[test]
fn sqlite_refuses_a_database_newer_than_this_binary() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let future = chainboot_store::SCHEMA_VERSION + 1;
    let c = rusqlite::Connection::open(dir.path().join(chainboot_store::DB_FILE)).unwrap();
    c.pragma_update(None, "user_version", future).unwrap();
    drop(c);
    let err = Store::open(dir.path()).expect_err("refused");
    assert!(
        matches!(err, StoreError::NewerSchema { found, .. } if found == future),
        "{err}"
    );
    assert!(
        err.to_string().contains("newer than this chainboot"),
        "{err}"
    );
}

#[test]
fn postgres_over_tls_verifies_the_server_certificate() {
    let server = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let pg = PgCluster::start_tls(&server.cert.pem(), &server.key_pair.serialize_pem());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, server.cert.pem()).unwrap();
    let mut cfg = pg_config(&pg, pg.fresh_database(), "tls");
    cfg.tls_ca = Some(ca);
    let store = Store::from_config(&cfg, dir.path()).unwrap();
    store.ping().unwrap();
    assert_eq!(
        store.schema_version().unwrap(),
        chainboot_store::SCHEMA_VERSION
    );
    let tls_sessions = pg.psql(
        "chainboot",
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE s.ssl AND a.application_name = 'chainboot tls'",
    );
    assert!(
        tls_sessions.trim().parse::<u32>().unwrap() >= 1,
        "{tls_sessions}"
    );
    // A certificate from another CA is refused.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let wrong = dir.path().join("other-ca.pem");
    std::fs::write(&wrong, other.cert.pem()).unwrap();
    cfg.tls_ca = Some(wrong);
    cfg.connect_timeout = std::time::Duration::from_secs(2);
    let err = Store::from_config(&cfg, dir.path())
        .expect_err("refused")
        .to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[test]
fn postgres_known_machines_are_answered_while_the_database_is_away() {
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pg_config(&pg, pg.fresh_database(), "pxe-a");
    cfg.connect_timeout = std::time::Duration::from_millis(500);
    let s = Store::from_config(&cfg, dir.path()).unwrap();
    let known = mac("52:54:00:00:00:21");
    s.machine_seen(known, &MachineFacts::default(), 10, "sekrit", None)
        .unwrap();
    assert!(operator(&s, known, pin(Some("rescue"))).unwrap().is_some());
    s.machine(known).unwrap();
    pg.stop();
    let facts = MachineFacts {
        hostname: Some("node21".into()),
        ..Default::default()
    };
    let r = s.machine_seen(known, &facts, 20, "other", None).unwrap();
    assert!(s.degraded());
    assert_eq!(r.secret, "sekrit");
    assert_eq!(
        r.pinned_profile.as_deref(),
        Some("rescue"),
        "operator state kept"
    );
    assert_eq!(r.facts.hostname.as_deref(), Some("node21"));
    assert_eq!(s.machine(known).unwrap().unwrap().last_seen_ms, 20);
    assert!(
        s.machine_seen(mac("52:54:00:00:00:22"), &facts, 20, "x", None)
            .is_err(),
        "an unknown machine waits for the database"
    );
    assert!(
        operator(&s, known, pin(None)).is_err(),
        "operator changes need the database"
    );
    pg.restart();
    let r = s.machine_seen(known, &facts, 30, "other", None).unwrap();
    assert!(!s.degraded());
    assert_eq!((r.last_seen_ms, r.secret.as_str()), (30, "sekrit"));
}

fn sighting(m: &str, at: i64, create: bool) -> Sighting {
    Sighting {
        mac: mac(m),
        at_ms: at,
        arch: Some("efi-x64".into()),
        vendor_class: Some("PXEClient:Arch:00007:UNDI:003016".into()),
        uuid: None,
        create_with_secret: create.then(|| format!("secret-{m}")),
    }
}

fn mark(proven: bool, at: i64, why: &str) -> SecureBootMark {
    SecureBootMark {
        proven,
        at_ms: at,
        why: why.into(),
    }
}

fn firmware_sightings_stages_and_secure_boot_refusals_survive_reopen(db: &Db) {
    let s = db.open();
    let (a, b, c) = (
        "52:54:00:00:70:01",
        "52:54:00:00:70:02",
        "52:54:00:00:70:03",
    );
    s.machines_observe(&Observations {
        // `c` was not admitted: only updated if known, and it is not.
        sightings: vec![
            sighting(a, 1000, true),
            sighting(b, 1000, true),
            sighting(c, 1000, false),
        ],
        stages: vec![
            (mac(a), "firmware-dhcp".into(), 1000),
            (mac(c), "first-stage".into(), 1000),
        ],
        secure_boot: vec![],
    })
    .unwrap();
    assert_eq!(s.machine_count().unwrap(), 2);
    assert_eq!(
        s.machines_known(&[mac(a), mac(b), mac(c)]).unwrap(),
        [mac(a), mac(b)]
            .into_iter()
            .collect::<std::collections::HashSet<_>>()
    );
    let m = s.machine(mac(a)).unwrap().unwrap();
    assert_eq!(m.firmware.arch.as_deref(), Some("efi-x64"));
    assert_eq!(m.firmware.stage.as_deref(), Some("firmware-dhcp"));
    assert_eq!(
        m.facts,
        MachineFacts::default(),
        "DHCP's words are not facts"
    );
    assert_eq!(m.secret, format!("secret-{a}"));
    // A later sighting keeps the secret and what it did not say; an older stage loses to a
    // newer one; a proven refusal is not replaced by an unproven one, the reverse is.
    s.machines_observe(&Observations {
        sightings: vec![Sighting {
            arch: None,
            create_with_secret: Some("other".into()),
            ..sighting(a, 3000, true)
        }],
        stages: vec![
            (mac(a), "secure-boot-refused".into(), 2500),
            (mac(b), "script".into(), 2000),
        ],
        secure_boot: vec![
            (mac(a), mark(true, 2500, "silence")),
            (mac(b), mark(false, 2000, "firmware-dhcp")),
        ],
    })
    .unwrap();
    s.machines_observe(&Observations {
        stages: vec![(mac(b), "first-stage".into(), 1500)],
        secure_boot: vec![
            (mac(a), mark(false, 4000, "firmware-dhcp")),
            (mac(b), mark(true, 4000, "fetched-again")),
        ],
        ..Default::default()
    })
    .unwrap();
    drop(s);
    let s = db.open();
    let m = s.machine(mac(a)).unwrap().unwrap();
    assert_eq!(m.secret, format!("secret-{a}"));
    assert_eq!(m.last_seen_ms, 3000);
    assert_eq!(m.firmware.arch.as_deref(), Some("efi-x64"));
    assert_eq!(m.firmware.stage.as_deref(), Some("secure-boot-refused"));
    assert_eq!(m.firmware.secure_boot, Some(mark(true, 2500, "silence")));
    let m = s.machine(mac(b)).unwrap().unwrap();
    assert_eq!(m.firmware.stage.as_deref(), Some("script"));
    assert_eq!(
        m.firmware.secure_boot,
        Some(mark(true, 4000, "fetched-again"))
    );
    let json = serde_json::to_value(&m).unwrap();
    assert_eq!(json["firmware"]["secure_boot"]["proven"], true, "{json}");
    assert_eq!(
        s.machines_refusing_secure_boot(10).unwrap(),
        [(mac(b), 4000), (mac(a), 2500)]
    );
    assert_eq!(s.machines_refusing_secure_boot(1).unwrap().len(), 1);
}

fn events_and_what_they_tell_about_machines_are_one_transaction(db: &Db) {
    let s = db.open();
    let a = "52:54:00:00:71:01";
    let batch = [ev(2000, a, "tftp"), ev(2001, a, "http")];
    let obs = Observations {
        sightings: vec![sighting(a, 1990, true)],
        stages: vec![(mac(a), "script".into(), 2001)],
        secure_boot: vec![],
    };
    let ids = events::append_observed(&s, &batch, &obs).unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1]);
    let m = s.machine(mac(a)).unwrap().expect("made by the sighting");
    assert_eq!(m.firmware.stage.as_deref(), Some("script"));
    let listed = events::list(
        &s,
        &EventFilter {
            mac: Some(mac(a)),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        listed.iter().map(|e| e.id).collect::<Vec<_>>(),
        [ids[1], ids[0]]
    );
    // Observations alone (a batch of DHCP sightings) are a transaction too, with no event.
    let only = Observations {
        stages: vec![(mac(a), "kernel".into(), 2002)],
        ..Default::default()
    };
    assert_eq!(
        events::append_observed(&s, &[], &only).unwrap(),
        Vec::<i64>::new()
    );
    let m = s.machine(mac(a)).unwrap().unwrap();
    assert_eq!(m.firmware.stage.as_deref(), Some("kernel"));
}

#[test]
fn postgres_refuses_a_v6_address_another_identity_association_holds() {
    let db = postgres();
    let a = db.open().named("pxe-a".into());
    let b = db.open().named("pxe-b".into());
    let mut held = rec6("2001:db8::20", &[0, 4, 1], 7, LeaseState::Bound);
    held.updated = 100;
    held.expires = 200;
    assert!(leases6::save_batch(&a, std::slice::from_ref(&held))
        .unwrap()
        .is_empty());
    // The same DUID with another IAID is another identity association: refused while the
    // lease runs, and told who holds it (and which server bound it).
    let mut other_ia = rec6("2001:db8::20", &[0, 4, 1], 8, LeaseState::Bound);
    other_ia.updated = 150;
    let free = rec6("2001:db8::21", &[0, 4, 2], 1, LeaseState::Bound);
    let refused = leases6::save_batch(&b, &[other_ia.clone(), free.clone()]).unwrap();
    assert_eq!(refused, [written_by(held.clone(), "pxe-a")]);
    // The holder renewing through the other server: accepted.
    let mut renewed = held.clone();
    renewed.updated = 160;
    renewed.expires = 400;
    assert!(leases6::save_batch(&b, std::slice::from_ref(&renewed))
        .unwrap()
        .is_empty());
    // Expired by the writer's clock, another identity association may have it.
    other_ia.updated = 400;
    assert!(leases6::save_batch(&a, std::slice::from_ref(&other_ia))
        .unwrap()
        .is_empty());
    let changed = leases6::changed_since(&b, 300).unwrap();
    assert_eq!(
        changed,
        [written_by(other_ia, "pxe-a")],
        "the other server's write"
    );
    assert!(
        leases6::changed_since(&a, 300).unwrap().is_empty(),
        "not its own"
    );
}

#[test]
fn postgres_each_fleet_server_has_its_own_dhcpv6_duid() {
    let db = postgres();
    let a = db.open().named("pxe-a".into());
    let b = db.open().named("pxe-b".into());
    let da = leases6::server_duid(&a, || vec![0, 4, 0xa]).unwrap();
    let db_ = leases6::server_duid(&b, || vec![0, 4, 0xb]).unwrap();
    assert_ne!(da, db_);
    assert_eq!(leases6::server_duid(&a, || vec![0, 4, 0xc]).unwrap(), da);
    assert_eq!(
        leases6::server_duids(&b).unwrap(),
        [("pxe-a".to_string(), da), ("pxe-b".to_string(), db_)]
    );
    // Two servers may never answer as one DUID.
    let c = db.open().named("pxe-c".into());
    assert!(leases6::server_duid(&c, || vec![0, 4, 0xa]).is_err());
}

#[test]
fn postgres_servers_racing_for_the_same_v6_addresses_never_share_one() {
    let db = postgres();
    // Three servers bind all 120 addresses, each to IAs of its own, in batches of 30, at once.
    let threads: Vec<_> = (0..3u8)
        .map(|n| {
            let s = db.open().named(format!("pxe-{n}"));
            std::thread::spawn(move || {
                let mut won = Vec::new();
                for chunk in 0..4u32 {
                    let batch: Vec<Lease6Record> = (0..30u32)
                        .map(|i| {
                            let host = chunk * 30 + i;
                            let ip = format!("2001:db8:5::{:x}", 0x100 + host);
                            rec6(&ip, &[0, 4, n], host, LeaseState::Bound)
                        })
                        .collect();
                    let refused = leases6::save_batch(&s, &batch).unwrap();
                    won.extend(
                        batch
                            .into_iter()
                            .filter(|r| refused.iter().all(|x| x.ip != r.ip)),
                    );
                }
                won
            })
        })
        .collect();
    let won: Vec<Lease6Record> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(won.len(), 120, "each address won exactly once");
    let stored = leases6::load_all(&db.open()).unwrap();
    assert_eq!(stored.len(), 120);
    for r in &won {
        let row = stored.iter().find(|s| s.ip == r.ip).unwrap();
        assert_eq!((&row.duid, row.iaid), (&r.duid, r.iaid), "{}", r.ip);
    }
}

/// A PostgreSQL store of its own cluster (the tests below stop it), with its state directory:
/// a connect timeout short enough for an outage.
fn outage_store(pg: &PgCluster, url: &str, dir: &std::path::Path, server: &str) -> Store {
    let mut cfg = pg_config(pg, url.to_string(), server);
    cfg.connect_timeout = std::time::Duration::from_millis(500);
    Store::from_config(&cfg, dir).unwrap()
}

/// The row of `ip` in `leases6`: (DUID in hex, IAID, expires, updated).
fn row6(pg: &PgCluster, url: &str, ip: &str) -> String {
    let db = url.rsplit('/').next().unwrap();
    pg.psql(
        db,
        &format!(
            "SELECT encode(duid, 'hex'), iaid, expires, updated FROM leases6 WHERE ip = '{ip}'"
        ),
    )
    .trim()
    .to_string()
}

#[test]
fn postgres_v6_renewals_are_journaled_while_the_database_is_away_and_written_when_it_returns() {
    let pg = PgCluster::start();
    let url = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join(chainboot_store::JOURNAL6_FILE);
    let s = outage_store(&pg, &url, dir.path(), "pxe-a");
    let mut held = rec6("2001:db8::30", &[0, 3, 0, 1, 0xaa], 7, LeaseState::Bound);
    (held.updated, held.expires) = (100, 200);
    let mut other = rec6("2001:db8::31", &[0, 3, 0, 1, 0xbb], 1, LeaseState::Bound);
    (other.updated, other.expires) = (100, 200);
    assert!(leases6::save_batch(&s, &[held.clone(), other.clone()])
        .unwrap()
        .is_empty());

    pg.stop();
    let mut renewal = held.clone();
    (renewal.updated, renewal.expires) = (150, 250);
    let mut stranger = rec6("2001:db8::31", &[0, 3, 0, 1, 0xcc], 1, LeaseState::Bound);
    stranger.updated = 150;
    let new = rec6("2001:db8::32", &[0, 3, 0, 1, 0xdd], 1, LeaseState::Bound);
    let mut other_ia = held.clone();
    (other_ia.iaid, other_ia.updated) = (8, 150);
    let batch = [renewal.clone(), stranger, new, other_ia];
    assert!(leases6::save_batch(&s, &batch).is_err());
    assert!(s.degraded());
    assert!(!journal.exists());
    let journaled = leases6::save_renewals_while_degraded(&s, &batch).unwrap();
    assert_eq!(
        journaled,
        [renewal.ip],
        "only the renewal of the database's lease, by the same DUID and IAID"
    );
    assert!(journal.is_file(), "durable before the Reply leaves");
    // The renewal renewed again: its journaled expiry counts.
    let mut again = renewal.clone();
    (again.updated, again.expires) = (220, 320);
    assert_eq!(
        leases6::save_renewals_while_degraded(&s, std::slice::from_ref(&again)).unwrap(),
        [again.ip]
    );
    assert_eq!(s.lease_journals()[1].1.pending, 2);
    assert_eq!(s.lease_journals()[0].1.pending, 0, "DHCPv4's journal apart");
    assert!(!dir.path().join(chainboot_store::JOURNAL_FILE).exists());

    pg.restart();
    // The next use writes the journal first, then what is newer.
    assert!(leases6::changed_since(&s, 0).unwrap().is_empty());
    assert!(!s.degraded());
    assert_eq!(row6(&pg, &url, "2001:db8::30"), "00030001aa|7|320|220");
    assert!(!journal.exists(), "written, then removed");
    assert_eq!(
        s.lease_journals()[1].1,
        chainboot_store::JournalStats::default()
    );
    assert_eq!(row6(&pg, &url, "2001:db8::31"), "00030001bb|1|200|100");
    assert_eq!(row6(&pg, &url, "2001:db8::32"), "", "the new lease waited");
}

/// `held` (of 2001:db8::`n`, bound from 100 to 200) written through `s`, then the cluster
/// stopped and its renewal (150 to 250) journaled: the renewal.
fn journal_a_renewal_while_stopped(pg: &PgCluster, s: &Store, n: u16) -> Lease6Record {
    let mut held = rec6(
        &format!("2001:db8::{n:x}"),
        &[0, 3, 0, 1, 0xaa],
        7,
        LeaseState::Bound,
    );
    (held.updated, held.expires) = (100, 200);
    leases6::save_batch(s, std::slice::from_ref(&held)).unwrap();
    pg.stop();
    let mut renewal = held;
    (renewal.updated, renewal.expires) = (150, 250);
    assert!(leases6::save_batch(s, std::slice::from_ref(&renewal)).is_err());
    assert_eq!(
        leases6::save_renewals_while_degraded(s, std::slice::from_ref(&renewal)).unwrap(),
        [renewal.ip]
    );
    renewal
}

#[test]
fn postgres_a_v6_journal_left_by_a_server_stopped_during_the_outage_is_written_at_its_start() {
    let pg = PgCluster::start();
    let url = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let s = outage_store(&pg, &url, dir.path(), "pxe-a");
    journal_a_renewal_while_stopped(&pg, &s, 0x40);
    drop(s);
    pg.restart();
    let s = outage_store(&pg, &url, dir.path(), "pxe-a");
    assert_eq!(row6(&pg, &url, "2001:db8::40"), "00030001aa|7|250|150");
    assert!(!dir.path().join(chainboot_store::JOURNAL6_FILE).exists());
    assert_eq!(s.lease_journals()[1].1.pending, 0);
}

#[test]
fn postgres_a_v6_renewal_journaled_past_the_leases_expiry_elsewhere_is_refused_and_counted() {
    let pg = PgCluster::start();
    let url = pg.fresh_database();
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = outage_store(&pg, &url, dir_a.path(), "pxe-a");
    let renewal = journal_a_renewal_while_stopped(&pg, &a, 0x50);
    pg.restart();
    // Another server, whose clock is past the stored expiry, gives the address to another
    // client before this server's journal is replayed.
    let b = outage_store(&pg, &url, dir_b.path(), "pxe-b");
    let mut taker = rec6("2001:db8::50", &[0, 3, 0, 1, 0xee], 1, LeaseState::Bound);
    (taker.updated, taker.expires) = (300, 400);
    assert!(leases6::save_batch(&b, std::slice::from_ref(&taker))
        .unwrap()
        .is_empty());
    // The replay, before the next batch: refused, counted, and the newer batch still written.
    let mut next = rec6("2001:db8::51", &[0, 3, 0, 1, 0xab], 1, LeaseState::Bound);
    (next.updated, next.expires) = (310, 410);
    assert!(leases6::save_batch(&a, std::slice::from_ref(&next))
        .unwrap()
        .is_empty());
    assert_eq!(row6(&pg, &url, "2001:db8::50"), "00030001ee|1|400|300");
    assert_eq!(row6(&pg, &url, "2001:db8::51"), "00030001ab|1|410|310");
    let (family, stats) = a.lease_journals()[1];
    assert_eq!((family, stats.pending, stats.refused), ("ipv6", 0, 1));
    assert!(!dir_a.path().join(chainboot_store::JOURNAL6_FILE).exists());
    // What the database holds now is known: the old holder's renewal is no longer a renewal.
    pg.stop();
    let mut late = renewal;
    (late.updated, late.expires) = (320, 420);
    assert!(leases6::save_batch(&a, std::slice::from_ref(&late)).is_err());
    assert!(
        leases6::save_renewals_while_degraded(&a, std::slice::from_ref(&late))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn postgres_leases_read_at_start_may_be_renewed_from_the_journal_in_an_outage() {
    let pg = PgCluster::start();
    let url = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let held = rec("198.18.8.9", "52:54:00:00:00:09", LeaseState::Bound);
    let held6 = rec6("2001:db8::60", &[0, 3, 0, 1, 0xaa], 7, LeaseState::Bound);
    let s = outage_store(&pg, &url, dir.path(), "pxe-a");
    leases::save_batch(&s, std::slice::from_ref(&held)).unwrap();
    leases6::save_batch(&s, std::slice::from_ref(&held6)).unwrap();
    drop(s);
    // Restarted: its own leases are known from what it reads at start (as the DHCP servers
    // do), not from the fleet's polls, which skip a server's own rows.
    let s = outage_store(&pg, &url, dir.path(), "pxe-a");
    assert_eq!(leases::load_all(&s).unwrap().len(), 1);
    assert_eq!(leases6::load_all(&s).unwrap().len(), 1);
    pg.stop();
    let mut renewal = held.clone();
    renewal.updated = 500;
    let mut renewal6 = held6.clone();
    renewal6.updated = 500;
    assert!(leases::save_batch(&s, std::slice::from_ref(&renewal)).is_err());
    assert_eq!(
        leases::save_renewals_while_degraded(&s, std::slice::from_ref(&renewal)).unwrap(),
        [renewal.ip]
    );
    assert!(leases6::save_batch(&s, std::slice::from_ref(&renewal6)).is_err());
    assert_eq!(
        leases6::save_renewals_while_degraded(&s, std::slice::from_ref(&renewal6)).unwrap(),
        [renewal6.ip]
    );
    let pending: Vec<u64> = s.lease_journals().iter().map(|(_, j)| j.pending).collect();
    assert_eq!(pending, [1, 1]);
}
