//! The throw-away PostgreSQL cluster starts, answers, stops and restarts, and leaves nothing
//! behind.

use chainboot_testnet::postgres::PgCluster;

#[test]
fn a_throwaway_cluster_answers_restarts_and_is_gone_after_drop() {
    let pg = PgCluster::start();
    assert_eq!(pg.psql("chainboot", "SELECT 40 + 2").trim(), "42");
    let pid = pg.pid().expect("postmaster running");
    let url = pg.fresh_database();
    assert!(url.starts_with("postgres://chainboot@127.0.0.1:"), "{url}");
    pg.stop();
    assert!(pg.pid().is_none(), "stopped");
    pg.restart();
    assert_eq!(pg.psql("chainboot", "SELECT 1").trim(), "1");
    let pid2 = pg.pid().expect("running again");
    drop(pg);
    // Gone, or a zombie waiting for whichever process adopted it to reap it.
    let state = std::fs::read_to_string(format!("/proc/{pid2}/stat")).unwrap_or_default();
    let running = state
        .rsplit(") ")
        .next()
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c != 'Z');
    assert!(
        !running,
        "postmaster {pid2} still running (first was {pid}): {state}"
    );
}
