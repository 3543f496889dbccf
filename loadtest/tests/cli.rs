//! The `ferry-loadtest` command line: documented exit codes for bad scenarios and targets.
//! (Runs against a real server are in the root package's `tests/loadtest_smoke.rs`.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ferry-loadtest");

fn scenario_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "ferry-loadtest-cli-{}-{name}.toml",
        std::process::id()
    ));
    std::fs::write(&path, text).expect("write a scenario");
    path
}

#[test]
fn check_accepts_the_shipped_scenarios() {
    for name in [
        "smoke",
        "refugee-wave",
        "comment-storm",
        "flash-sale",
        "video-fanout",
    ] {
        let path = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(BIN)
            .args(["check", &path])
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
    }
}

#[test]
fn an_unknown_key_exits_2_and_names_the_key() {
    let path = scenario_file(
        "typo",
        "name = \"t\"\n[run]\nmax_viewerz = 3\n[[phases]]\nkind = \"hold\"\nrate = 1\nduration = \"1s\"\n",
    );
    for args in [vec!["check"], vec!["run"]] {
        let out = Command::new(BIN)
            .args(&args)
            .arg(&path)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("max_viewerz"));
    }
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_remote_target_is_refused_with_exit_2() {
    let path = scenario_file(
        "remote",
        "name = \"t\"\n[[phases]]\nkind = \"hold\"\nrate = 1\nduration = \"1s\"\n",
    );
    let out = Command::new(BIN)
        .arg("run")
        .arg(&path)
        .args(["--target", "ws://10.1.2.3:8080/ws", "--quiet"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.0/8"));
    let out = Command::new(BIN)
        .arg("run")
        .arg(&path)
        .arg("--quiet")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "no target at all");
    let _ = std::fs::remove_file(path);
}
