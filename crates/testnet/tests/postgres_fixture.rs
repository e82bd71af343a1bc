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
    let dir = std::path::PathBuf::from(format!("/proc/{pid2}"));
    drop(pg);
    assert!(!dir.exists(), "postmaster {pid2} gone (first was {pid})");
}
