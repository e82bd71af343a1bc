//! The fleet's database stops while machines keep booting: the event log holds what it cannot
//! write and writes it, in order, when the database is back; the store reconnects by itself.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chainboot_events::{EventLog, EventSettings};
use chainboot_store::events::{self, EventFilter};
use chainboot_store::{Store, StoreBackend, StoreConfig};
use chainboot_testnet::postgres::PgCluster;

#[test]
fn events_recorded_while_the_database_is_down_are_written_when_it_returns() {
    let pg = PgCluster::start();
    let cfg = StoreConfig {
        backend: StoreBackend::Postgres,
        url: Some(pg.fresh_database()),
        password_file: Some(pg.password_file()),
        connect_timeout: Duration::from_millis(500),
        server_name: Some("pxe-1".into()),
        ..Default::default()
    };
    let state = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::from_config(&cfg, state.path()).unwrap());
    let log = EventLog::start(store.clone(), EventSettings::default());
    let mac = Some("52:54:00:00:00:01".parse().unwrap());
    log.record(mac, "api", serde_json::json!({"n": 0}));
    assert!(log.flush(Duration::from_secs(10)));

    pg.stop();
    for n in 1..=200 {
        log.record(mac, "api", serde_json::json!({"n": n}));
    }
    // The writer tried, failed, and holds them.
    let deadline = Instant::now() + Duration::from_secs(20);
    while log.stats().held.load(Ordering::Relaxed) < 200 {
        assert!(Instant::now() < deadline, "events not held");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(store.degraded(), "the store knows the database is gone");
    assert!(store.ping().is_err());

    pg.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        log.flush(Duration::from_secs(10));
        if log.stats().held.load(Ordering::Relaxed) == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "held events not written after the database returned"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    store.ping().expect("reconnected by itself");
    assert!(!store.degraded());
    let list = events::list(
        &store,
        &EventFilter {
            limit: Some(1000),
            ..Default::default()
        },
    )
    .unwrap();
    let ns: Vec<i64> = list
        .iter()
        .rev()
        .map(|e| e.detail["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, (0..=200).collect::<Vec<i64>>(), "all present, in order");
    assert!(list.iter().all(|e| e.server.as_deref() == Some("pxe-1")));
    assert_eq!(log.stats().dropped.load(Ordering::Relaxed), 0);
}
