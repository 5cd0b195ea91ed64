//! `hitkeep demo`, `backup run`, `backup list` and `backup verify --deep`, as a user runs them, against a
//! local directory and the in-process S3 server.

use std::path::Path;

use hitkeep_testkit::{BUCKET, S3Server};

use crate::{hk, local_env, run};

fn s3_env(dir: &Path, server: &S3Server) -> Vec<(String, String)> {
    crate::s3_env(dir, server, BUCKET, "hitkeep/backups", "hitkeep/archive")
}

fn demo_backup_list_verify(dir: &Path, env: &[(String, String)]) {
    let out = hk(&["demo", "--hits", "5000", "--tenants", "2"], env, dir);
    assert!(out.starts_with("exit: 0"), "{out}");
    let out = hk(&["backup", "run"], env, dir);
    assert!(
        out.starts_with("exit: 0") && out.contains("committed"),
        "{out}"
    );
    // HitKeep 2.13's layout (the demo's default): the default tenant has a database of its own.
    assert_eq!(
        out.matches(": complete").count(),
        3,
        "the default and two other tenants backed up: {out}"
    );
    assert!(
        out.contains("(default): complete") && out.contains("layout split"),
        "{out}"
    );
    let out = hk(&["backup", "list"], env, dir);
    assert!(out.starts_with("exit: 0"), "{out}");
    assert_eq!(out.matches(" complete ").count(), 4, "{out}");
    assert!(
        out.contains("split  <- latest"),
        "the layout is shown: {out}"
    );
    assert!(out.contains("<- latest"), "{out}");
    let out = hk(&["backup", "list", "--json"], env, dir);
    let json: serde_json::Value = serde_json::from_str(
        out.split("----- stdout -----\n")
            .nth(1)
            .unwrap()
            .split("----- stderr")
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 4);
    assert_eq!(json[0]["layout"], "split", "{json}");
    let out = hk(
        &["backup", "verify", "-snapshot", "latest", "--deep"],
        env,
        dir,
    );
    assert!(out.starts_with("exit: 0"), "{out}");
    assert_eq!(out.matches(" ok: ").count(), 4, "{out}");
    assert!(out.contains("layout split"), "{out}");
    let out = hk(&["backup", "status", "--json"], env, dir);
    assert!(
        out.contains("\"consecutive_failures\": 0")
            && out.contains("\"last_snapshot\"")
            && out.contains("\"last_layout\": \"split\""),
        "{out}"
    );
}

#[test]
fn demo_backup_list_verify_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    demo_backup_list_verify(dir.path(), &local_env(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_backup_list_verify_on_s3() {
    let server = S3Server::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = s3_env(dir.path(), &server);
    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || demo_backup_list_verify(&path, &env))
        .await
        .unwrap();
}

/// reqsign (under OpenDAL) logs the static credential at debug level: whatever the level, the
/// binary's log filter must keep the secret out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_never_hold_the_secret() {
    let server = S3Server::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut env = s3_env(dir.path(), &server);
    env.push(("HITKEEP_LOG_LEVEL".into(), "trace".into()));
    let path = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let demo = hk(&["demo", "--hits", "2000", "--tenants", "1"], &env, &path);
        demo + &hk(&["backup", "run"], &env, &path)
    })
    .await
    .unwrap();
    assert!(
        out.contains("committed") && out.contains(" TRACE "),
        "{out}"
    );
    assert!(!out.contains(hitkeep_testkit::SECRET_ACCESS_KEY));
}

#[test]
fn a_database_held_by_another_process_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let env = local_env(dir.path());
    assert!(hk(&["demo", "--hits", "1000"], &env, dir.path()).starts_with("exit: 0"));
    let db = dir.path().join("hitkeep.db");
    // Read before opening: closing any descriptor of the file would drop this process's POSIX lock.
    let before = std::fs::read(&db).unwrap();
    // This process plays the running HitKeep server: it holds the file open for writing.
    let conn = duckdb::Connection::open(&db).unwrap();
    let out = hk(&["backup", "run"], &env, dir.path());
    assert!(out.starts_with("exit: 1"), "{out}");
    assert!(
        out.contains("is in use by another process") && out.contains("stop the HitKeep server"),
        "{out}"
    );
    assert!(out.contains("PID"), "names the holder: {out}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the file was not touched"
    );
    drop(conn);
    assert!(
        !dir.path().join("backups").join("shared").exists(),
        "nothing was backed up"
    );
}

#[test]
fn backup_commands_without_a_backup_path_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["backup", "run"], &[], dir.path());
    assert!(
        out.starts_with("exit: 2") && out.contains("HITKEEP_BACKUP_PATH"),
        "{out}"
    );
}

/// On S3, cycles do not prune (lifecycle rules are preferred); `backup prune` shows its plan, refuses
/// without a "yes", and with `-yes` deletes down to the retention count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_prune_is_explicit_and_confirmed() {
    let server = S3Server::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut env = s3_env(dir.path(), &server);
    env.push(("HITKEEP_BACKUP_RETENTION".into(), "1".into()));
    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        assert!(
            hk(&["demo", "--hits", "1000", "--tenants", "1"], &env, &path).starts_with("exit: 0")
        );
        for _ in 0..3 {
            let out = hk(&["backup", "run"], &env, &path);
            assert!(out.starts_with("exit: 0"), "{out}");
        }
        let listed = hk(&["backup", "list"], &env, &path);
        assert_eq!(
            listed.matches(" complete ").count(),
            9,
            "nothing pruned on S3 by default (shared, default tenant, one more): {listed}"
        );

        let dry = hk(&["backup", "prune", "--dry-run"], &env, &path);
        assert!(
            dry.starts_with("exit: 0") && dry.contains("dry run: nothing deleted"),
            "{dry}"
        );
        assert_eq!(
            dry.matches("older than the newest retained cycles").count(),
            6,
            "{dry}"
        );
        let refused = hk(&["backup", "prune"], &env, &path);
        assert!(
            refused.starts_with("exit: 2")
                && refused.contains("Type \"yes\" to confirm prune:")
                && refused.contains("pass -yes"),
            "{refused}"
        );
        assert_eq!(
            hk(&["backup", "list"], &env, &path)
                .matches(" complete ")
                .count(),
            9
        );

        let pruned = hk(&["backup", "prune", "-yes"], &env, &path);
        assert!(
            pruned.starts_with("exit: 0") && pruned.contains("deleted 6 snapshots"),
            "{pruned}"
        );
        let listed = hk(&["backup", "list"], &env, &path);
        assert_eq!(listed.matches(" complete ").count(), 3, "{listed}");
        assert!(
            listed.contains("<- latest"),
            "the newest cycle is kept: {listed}"
        );
    })
    .await
    .unwrap();
}

/// Incremental snapshots share table files in `pool/`: a prune says what it swept there, and the
/// objects the newest cycle names stay.
#[test]
fn an_incremental_prune_sweeps_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::local_env(dir.path());
    env.push(("HITKEEP_BACKUP_MODE".into(), "incremental".into()));
    env.push(("HITKEEP_BACKUP_RETENTION".into(), "1".into()));
    let path = dir.path();
    let out = hk(&["demo", "--hits", "1000", "--tenants", "1"], &env, path);
    assert!(out.starts_with("exit: 0"), "{out}");
    for _ in 0..2 {
        let out = hk(&["backup", "run"], &env, path);
        assert!(out.starts_with("exit: 0"), "{out}");
    }
    let listed = hk(&["backup", "list"], &env, path);
    assert_eq!(listed.matches(" incremental ").count(), 3, "{listed}");
    let dry = hk(&["backup", "prune", "--dry-run"], &env, path);
    assert!(
        dry.contains(
            "the pool (table files of incremental snapshots) is swept after the deletions"
        ),
        "{dry}"
    );
    let pruned = hk(&["backup", "prune", "-yes"], &env, path);
    let pool = pruned
        .lines()
        .find(|l| l.starts_with("pool: "))
        .unwrap_or_else(|| panic!("{pruned}"));
    // Nothing changed between the cycles: every object is named, none goes.
    let objects = pool.split(' ').nth(1).unwrap();
    assert!(
        pool.contains(&format!(
            "{objects} objects, {objects} named by snapshots; removed 0 unused"
        )),
        "{pruned}"
    );
    let verified = hk(&["backup", "verify", "-deep"], &env, path);
    assert!(verified.starts_with("exit: 0"), "{verified}");
}

/// A prune killed part-way through its sweep, again and again, never leaves a manifest naming a
/// missing pool object, and the one that runs to the end leaves exactly the named objects.
#[test]
fn a_prune_killed_mid_sweep_never_removes_a_named_object() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let mut env = crate::local_env(path);
    env.push(("HITKEEP_BACKUP_MODE".into(), "incremental".into()));
    env.push(("HITKEEP_BACKUP_RETENTION".into(), "3".into()));
    for args in [
        &["demo", "--hits", "1000", "--tenants", "1"][..],
        &["backup", "run"],
        &["backup", "run"],
    ] {
        let out = hk(args, &env, path);
        assert!(out.starts_with("exit: 0"), "{args:?}: {out}");
    }
    let backups = path.join("backups");
    let pool = backups.join("pool");
    // What killed cycles leave: objects no manifest names, enough that a sweep takes a while.
    for i in 0..2000u128 {
        // Spread over the pool's folders as real names are (the first two hex digits vary).
        let sha = format!("{:064x}", (i * 0x9E37_79B9_7F4A_7C15) << 64 | (i + 1));
        let folder = pool.join(&sha[..2]);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join(format!("{sha}.parquet")), b"orphan").unwrap();
    }
    // Two days old, named or not: from here only a name keeps an object.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400);
    for object in pool_files(&pool) {
        let file = std::fs::File::options().write(true).open(&object).unwrap();
        file.set_modified(old).unwrap();
    }
    let named = named_objects(&backups);
    assert!(!named.is_empty());
    env.retain(|(k, _)| k != "HITKEEP_BACKUP_RETENTION");
    env.push(("HITKEEP_BACKUP_RETENTION".into(), "1".into()));
    let mut killed = 0;
    loop {
        let before = pool_files(&pool).len();
        let mut prune = std::process::Command::new(env!("CARGO_BIN_EXE_hitkeep"))
            .args(["backup", "prune", "-yes"])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Killed (SIGKILL) as soon as it has removed something: in the middle of its sweep.
        let finished = loop {
            if let Some(status) = prune.try_wait().unwrap() {
                break Some(status);
            }
            if pool_files(&pool).len() < before {
                prune.kill().unwrap();
                prune.wait().unwrap();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        for object in named_objects(&backups) {
            assert!(
                backups.join(&object).is_file(),
                "{object} is named by a manifest but gone after {killed} killed prunes"
            );
        }
        match finished {
            Some(status) => {
                assert!(status.success(), "the last prune: {status}");
                break;
            }
            None => killed += 1,
        }
        assert!(killed < 1000, "the sweep makes no progress");
    }
    assert!(killed > 0, "no prune was stopped part-way");
    eprintln!("{killed} prunes killed in their sweep");
    let left: std::collections::BTreeSet<String> = pool_files(&pool)
        .iter()
        .map(|f| f.strip_prefix(&backups).unwrap().display().to_string())
        .collect();
    assert_eq!(
        left,
        named_objects(&backups),
        "after {killed} killed prunes"
    );
    let out = hk(
        &["backup", "verify", "-snapshot", "latest", "--deep"],
        &env,
        path,
    );
    assert!(out.starts_with("exit: 0"), "{out}");
}

/// Every table file in the pool (not its clock).
fn pool_files(pool: &Path) -> Vec<std::path::PathBuf> {
    let Ok(folders) = std::fs::read_dir(pool) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for folder in folders.flatten().filter(|e| e.path().is_dir()) {
        for file in std::fs::read_dir(folder.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if file.path().extension().is_some_and(|x| x == "parquet") {
                files.push(file.path());
            }
        }
    }
    files
}

/// Every pool object a manifest under `backups` names (its `object` fields).
fn named_objects(backups: &Path) -> std::collections::BTreeSet<String> {
    fn objects(value: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match v {
                        serde_json::Value::String(s) if key == "object" => {
                            out.insert(s.clone());
                        }
                        _ => objects(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| objects(v, out)),
            _ => {}
        }
    }
    fn walk(dir: &Path, out: &mut std::collections::BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() && !path.ends_with("pool") {
                walk(&path, out);
            } else if path.file_name().is_some_and(|n| n == "manifest.json") {
                // A manifest half-deleted by a kill is gone or whole: the storage writes whole files.
                if let Ok(bytes) = std::fs::read(&path) {
                    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                    objects(&value, out);
                }
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(backups, &mut out);
    out
}

/// A pinned cycle outlives the retention until it is unpinned.
#[test]
fn a_pinned_cycle_outlives_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::local_env(dir.path());
    env.push(("HITKEEP_BACKUP_RETENTION".into(), "1".into()));
    let path = dir.path();
    let ok = |args: &[&str]| {
        let out = hk(args, &env, path);
        assert!(out.starts_with("exit: 0"), "{args:?}: {out}");
        out
    };
    ok(&["demo", "--hits", "300", "--tenants", "0"]);
    ok(&["backup", "run"]);
    let pinned = ok(&["backup", "pin", "-snapshot", "latest"]);
    let id = pinned
        .lines()
        .find_map(|l| l.strip_prefix("pinned "))
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("{pinned}"));
    assert!(
        pinned.contains(&format!("pinned {id}: no prune deletes it")),
        "{pinned}"
    );
    ok(&["backup", "run"]);
    let listed = ok(&["backup", "list"]);
    let line = |listed: &str| {
        listed
            .lines()
            .find(|l| l.starts_with("shared ") && l.contains(id))
            .map(str::to_owned)
    };
    assert!(
        line(&listed).is_some_and(|l| l.contains("(pinned)")),
        "retention 1 keeps the pinned cycle: {listed}"
    );
    let dry = ok(&["backup", "prune", "--dry-run"]);
    assert!(!dry.contains(id), "{dry}");

    ok(&["backup", "unpin", "-snapshot", id]);
    let again = hk(&["backup", "unpin", "-snapshot", id], &env, path);
    assert!(
        again.starts_with("exit: 1") && again.contains("is not pinned"),
        "{again}"
    );
    ok(&["backup", "run"]);
    let listed = ok(&["backup", "list"]);
    assert!(line(&listed).is_none(), "unpinned, it goes: {listed}");
}

#[test]
fn lifecycle_rule_for_the_guide_example() {
    let dir = tempfile::tempdir().unwrap();
    crate::hitkeep_snapshot!(
        "lifecycle_aws_example",
        &["backup", "lifecycle"],
        &[
            (
                "HITKEEP_BACKUP_PATH",
                "s3://my-analytics-bucket/hitkeep/backups"
            ),
            ("HITKEEP_BACKUP_INTERVAL", "60"),
            ("HITKEEP_BACKUP_RETENTION", "24"),
            ("HITKEEP_S3_REGION", "eu-central-1"),
        ]
    );
    let out = run(
        &["backup", "lifecycle"],
        &[("HITKEEP_BACKUP_PATH", "/srv/backups")],
        dir.path(),
    );
    assert!(out.starts_with("exit: 2"), "{out}");
    let out = run(
        &["backup", "lifecycle"],
        &[("HITKEEP_BACKUP_PATH", "s3://whole-bucket")],
        dir.path(),
    );
    assert!(
        out.starts_with("exit: 2") && out.contains("every object in the bucket"),
        "{out}"
    );
}

/// `hitkeep` with no command runs the scheduler: a first cycle shortly after start, then SIGTERM stops it
/// cleanly, and the status file records the success.
#[test]
fn the_scheduler_backs_up_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = local_env(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    env.push(("HITKEEP_HTTP_ADDR".into(), addr.clone()));
    assert!(hk(&["demo", "--hits", "1000"], &env, dir.path()).starts_with("exit: 0"));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_hitkeep"))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status_file = dir.path().join("data").join(".hitkeep-backup-status.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !status_file.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(status_file.exists(), "no cycle ran within a minute");
    // The status endpoints answer for real, over HTTP.
    let (code, body) = http_get(&addr, "/healthz");
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(&addr, "/api/admin/system/backups");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200);
    assert_eq!(status["enabled"], true);
    assert!(
        status["last_backup"].is_string()
            && status["next_backup"].is_string()
            && status.get("last_error").is_none(),
        "{status}"
    );
    assert_eq!(status["interval_min"], 60);
    let (code, body) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    for metric in [
        "hitkeep_backup_last_success_timestamp_seconds",
        "hitkeep_backup_uploaded_bytes_total",
        "hitkeep_backup_snapshots{database=\"shared\"} 1",
    ] {
        assert!(body.contains(metric), "{metric} missing from:\n{body}");
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("committed") && stdout.contains("backup scheduler stopped"),
        "{stdout}"
    );
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&status_file).unwrap()).unwrap();
    assert_eq!(status["consecutive_failures"], 0);
    assert!(
        status["last_backup"].is_string() && status["next_backup"].is_string(),
        "{status}"
    );
}

/// A minimal HTTP/1.1 GET: status code and body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = local_env(dir.path());
    env.push(("HITKEEP_LOG_FORMAT".into(), "json".into()));
    assert!(hk(&["demo", "--hits", "500"], &env, dir.path()).starts_with("exit: 0"));
    let out = hk(&["backup", "run"], &env, dir.path());
    let stderr = out.split("----- stderr -----\n").nth(1).unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 2, "{out}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
}

/// The secret read from `HITKEEP_S3_SECRET_ACCESS_KEY_FILE` (as a container mounts it, newline and all)
/// signs real requests: a backup commits and lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_with_the_secret_from_a_file() {
    let server = S3Server::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("s3-secret");
    std::fs::write(&secret, format!("{}\n", hitkeep_testkit::SECRET_ACCESS_KEY)).unwrap();
    let mut env = s3_env(dir.path(), &server);
    env.retain(|(k, _)| k != "HITKEEP_S3_SECRET_ACCESS_KEY");
    env.push((
        "HITKEEP_S3_SECRET_ACCESS_KEY_FILE".into(),
        secret.display().to_string(),
    ));
    let path = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let demo = hk(&["demo", "--hits", "2000", "--tenants", "1"], &env, &path);
        assert!(demo.starts_with("exit: 0"), "{demo}");
        hk(&["backup", "run"], &env, &path) + &hk(&["backup", "list"], &env, &path)
    })
    .await
    .unwrap();
    assert!(
        out.starts_with("exit: 0") && out.contains("committed") && out.contains("<- latest"),
        "{out}"
    );
    assert!(!out.contains(hitkeep_testkit::SECRET_ACCESS_KEY));
    // A wrong secret in the file is refused by the server: the file's content is what is sent.
    std::fs::write(&secret, "not-the-secret\n").unwrap();
    let env = {
        let mut env = s3_env(dir.path(), &server);
        env.retain(|(k, _)| k != "HITKEEP_S3_SECRET_ACCESS_KEY");
        env.push((
            "HITKEEP_S3_SECRET_ACCESS_KEY_FILE".into(),
            secret.display().to_string(),
        ));
        env
    };
    let path = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || hk(&["backup", "list"], &env, &path))
        .await
        .unwrap();
    assert!(!out.starts_with("exit: 0"), "{out}");
}

/// Pins `output` as snapshot `name`, with what differs between runs masked: the temp dir, snapshot
/// ids, times, UUIDs and source ids, and every count and size with the padding around it.
fn pin(name: &str, output: &str, dir: &Path) {
    let tmp = crate::regex_escape(&dir.display().to_string());
    insta::with_settings!({
        filters => vec![
            (tmp.as_str(), "[TMP]"),
            (r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", "[TIME]"),
            (r"\d{4}-\d{2}-\d{2}T\d{6}Z", "[SNAPSHOT]"),
            (crate::restore::UUID, "[UUID]"),
            (r"\b[0-9a-f]{8}\b", "[SOURCE]"),
            (r" +\d+ +\d+(  |\n)", " [BYTES] [ROWS]$1"),
            (r"\b\d+ (files|bytes|tables|rows)", "[N] $1"),
        ],
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_snapshot!(name, output);
    });
}

/// What `backup run`, `list`, `verify`, `status` and a failed `verify` print, pinned.
#[test]
fn backup_outputs_are_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = local_env(dir.path());
    // The log's progress lines are not what is pinned here; warnings still show.
    env.push(("HITKEEP_LOG_LEVEL".into(), "warn".into()));
    let demo = hk(
        &["demo", "--hits", "2000", "--tenants", "1"],
        &env,
        dir.path(),
    );
    assert!(demo.starts_with("exit: 0"), "{demo}");
    pin(
        "backup_run",
        &hk(&["backup", "run"], &env, dir.path()),
        dir.path(),
    );
    pin(
        "backup_list",
        &hk(&["backup", "list"], &env, dir.path()),
        dir.path(),
    );
    pin(
        "backup_verify",
        &hk(&["backup", "verify", "--deep"], &env, dir.path()),
        dir.path(),
    );
    pin(
        "backup_status",
        &hk(&["backup", "status"], &env, dir.path()),
        dir.path(),
    );
    pin(
        "backup_verify_unknown",
        &hk(
            &["backup", "verify", "-snapshot", "2020-01-01T000000Z"],
            &env,
            dir.path(),
        ),
        dir.path(),
    );
}
