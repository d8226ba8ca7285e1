//! The harness itself: a child process a test starts is stopped as `Child` says (SIGTERM, a
//! grace period, then SIGKILL), so none outlives its test. (`.ci/run` also looks for any left
//! after the whole suite.)

use crate::helpers::*;

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry (a zombie would still have one).
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// `sh -c` running `trap` then a loop, returned once its trap is set (it says so in a file).
fn trapping(trap: &str) -> Child {
    let ready = std::env::temp_dir().join(format!("usage-gate-child-ready-{}", uuid::Uuid::new_v4()));
    let script = format!("{trap}; echo > {}; while :; do sleep 0.05; done", ready.display());
    let child = Child(std::process::Command::new("sh").args(["-c", &script]).spawn().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ready.exists() {
        assert!(std::time::Instant::now() < deadline, "the shell set its trap within 10 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::fs::remove_file(&ready).unwrap();
    child
}

#[test]
fn a_dropped_child_gets_sigterm_first_and_is_gone() {
    let mark = std::env::temp_dir().join(format!("usage-gate-child-{}", uuid::Uuid::new_v4()));
    let child = trapping(&format!("trap 'echo term > {}; exit 0' TERM", mark.display()));
    let pid = child.0.id();
    let started = std::time::Instant::now();
    drop(child);
    assert!(!alive(pid), "reaped");
    assert!(started.elapsed() < Child::GRACE, "it exited on SIGTERM, before the grace period ran out");
    assert_eq!(std::fs::read_to_string(&mark).unwrap().trim(), "term", "SIGTERM reached it");
    std::fs::remove_file(&mark).unwrap();
}

#[test]
fn a_child_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let child = trapping("trap '' TERM");
    let pid = child.0.id();
    let started = std::time::Instant::now();
    drop(child);
    assert!(!alive(pid), "killed and reaped");
    assert!(started.elapsed() >= Child::GRACE, "SIGKILL only after the grace period");
}
