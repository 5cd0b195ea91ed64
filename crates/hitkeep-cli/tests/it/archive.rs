//! `hitkeep archive run | list | query | restore` as a user runs them, on local disk and S3.

use std::path::Path;

use hitkeep_testkit::{BUCKET, S3Server};

use crate::{hk, local_env};

fn stdout(out: &str) -> &str {
    out.split("----- stdout -----\n")
        .nth(1)
        .and_then(|s| s.split("----- stderr -----").next())
        .unwrap_or_default()
}

/// Rows per table over all of HitKeep's databases, for one site.
fn site_rows(dir: &Path, site: &str) -> Vec<(String, i64)> {
    let mut dbs = vec![dir.join("hitkeep.db")];
    for t in std::fs::read_dir(dir.join("data/tenants")).unwrap() {
        dbs.push(t.unwrap().path().join("hitkeep.db"));
    }
    let mut rows = Vec::new();
    for db in dbs {
        let conn = duckdb::Connection::open(&db).unwrap();
        for t in [
            "hits",
            "events",
            "imported_traffic_daily",
            "hit_rollups_daily",
            "hit_rollups_monthly",
            "hit_rollups_hourly",
        ] {
            let sql = format!(
                "SELECT count(*), coalesce(sum(hash(x)::HUGEINT) % 1000000007, 0)::BIGINT FROM {t} x WHERE site_id = '{site}'"
            );
            let (n, h): (i64, i64) = conn
                .query_row(&sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            if n > 0 {
                rows.push((format!("{t}@{}", db.display()), n * 1_000_000_007 + h));
            }
        }
    }
    rows
}

fn round_trip(dir: &Path, env: &[(String, String)]) {
    assert!(hk(&["demo", "--hits", "6000", "--tenants", "2"], env, dir).starts_with("exit: 0"));
    let dry = hk(&["archive", "run", "--dry-run"], env, dir);
    assert!(
        dry.starts_with("exit: 0") && dry.contains("would be archived") && dry.contains("hits"),
        "{dry}"
    );
    let out = hk(&["archive", "run"], env, dir);
    assert!(
        out.starts_with("exit: 0") && out.matches("rows archived to").count() == 6,
        "{out}"
    );
    // Each line says which rows went: those before the site's cutoff.
    assert_eq!(out.matches("Z)\n").count(), 6, "{out}");
    assert_eq!(out.matches(" (before 20").count(), 6, "{out}");
    let again = hk(&["archive", "run"], env, dir);
    assert!(
        again.starts_with("exit: 0") && again.matches("nothing expired").count() == 6,
        "a second run finds nothing: {again}"
    );

    let list: serde_json::Value =
        serde_json::from_str(stdout(&hk(&["archive", "list", "--json"], env, dir))).unwrap();
    let files = list.as_array().unwrap();
    assert_eq!(files.len(), 6);
    let site = files[0]["site_id"].as_str().unwrap().to_owned();
    let archived_hits = files[0]["tables"]["hits"].as_u64().unwrap();
    let q = hk(
        &[
            "archive",
            "query",
            "--site",
            &site,
            "SELECT count(*) AS n FROM archive WHERE _source = 'hits'",
        ],
        env,
        dir,
    );
    assert!(
        q.starts_with("exit: 0") && stdout(&q) == format!("n\n{archived_hits}\n"),
        "{q}"
    );

    let before_restore = site_rows(dir, &site);
    // A ranged restore covering everything, twice: the second finds every row present and skips it.
    let range = [
        "archive",
        "restore",
        "--site",
        &site,
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
    ];
    let r = hk(&range, env, dir);
    assert!(
        r.starts_with("exit: 0") && !r.contains(": 0 rows restored"),
        "{r}"
    );
    let after_restore = site_rows(dir, &site);
    assert_ne!(before_restore, after_restore);
    let again = hk(&range, env, dir);
    assert!(
        again.contains(": 0 rows restored"),
        "restore is idempotent: {again}"
    );
    assert_eq!(site_rows(dir, &site), after_restore);
    // A full restore then retires the files, so queries stop counting them.
    let full = hk(&["archive", "restore", "--site", &site], env, dir);
    assert!(
        full.starts_with("exit: 0") && full.contains(": 0 rows restored"),
        "{full}"
    );
    // Archiving again takes exactly what came back, into a new file, with nothing duplicated.
    let out = hk(&["archive", "run"], env, dir);
    assert!(
        out.contains(&format!("site {site}")) && out.matches("rows archived to").count() == 1,
        "{out}"
    );
    let q = hk(
        &[
            "archive",
            "query",
            "--site",
            &site,
            "SELECT count(*) AS n FROM archive WHERE _source = 'hits'",
        ],
        env,
        dir,
    );
    assert!(
        stdout(&q) == format!("n\n{archived_hits}\n"),
        "the retired file is not counted twice: {q}"
    );
    assert_eq!(site_rows(dir, &site), before_restore);
}

#[test]
fn archive_round_trip_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(dir.path(), &local_env(dir.path()));
    // Without recipients nothing is sealed, and no key is made.
    assert!(!dir.path().join("data/.hitkeep-archive-key").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_round_trip_on_s3() {
    let server = S3Server::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Short prefixes: the in-process s3s-fs test server cannot hold very long keys.
    let env = crate::s3_env(dir.path(), &server, BUCKET, "b", "a");
    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || round_trip(&path, &env))
        .await
        .unwrap();
}

/// `archive list` as printed, over the files of a run on local disk: the default tenant's at the
/// root, another tenant's under `tenants/`. Ids, times, sizes and counts are masked; the files come
/// in the order of their (random) site ids, so they are shown here root files first.
#[test]
fn the_list_as_printed() {
    let dir = tempfile::tempdir().unwrap();
    let env = local_env(dir.path());
    let out = hk(
        &["demo", "--hits", "2000", "--tenants", "1"],
        &env,
        dir.path(),
    );
    assert!(out.starts_with("exit: 0"), "{out}");
    let out = hk(&["archive", "run"], &env, dir.path());
    assert!(out.matches("rows archived to").count() == 4, "{out}");
    let out = hk(&["archive", "list"], &env, dir.path());
    assert!(out.starts_with("exit: 0"), "{out}");
    let (head, rest) = out.split_once("----- stdout -----\n").unwrap();
    let (listing, stderr) = rest.split_once("----- stderr -----").unwrap();
    // One block per file: its line, then its indented lines.
    let mut blocks: Vec<String> = Vec::new();
    for line in listing.lines() {
        match blocks.last_mut() {
            Some(block) if line.starts_with(' ') => {
                block.push_str(line);
                block.push('\n');
            }
            _ => blocks.push(format!("{line}\n")),
        }
    }
    assert_eq!(blocks.len(), 4, "{listing}");
    blocks.sort_by_key(|b| b.starts_with("tenants/"));
    let shown = format!(
        "{head}----- stdout -----\n{}----- stderr -----{stderr}",
        blocks.concat()
    );
    let tmp = crate::regex_escape(&dir.path().display().to_string());
    insta::with_settings!({
        filters => vec![
            (tmp.as_str(), "[TMP]"),
            (crate::restore::UUID, "[UUID]"),
            (r"_\d+\.parquet", "_[UNIX].parquet"),
            // A run's files per table are listed by the run's name.
            (r"(site_(?:\[UUID\]_)?)\d+\b", "${1}[UNIX]"),
            (r"\d{4}-\d{2}-\d{2}( \d{2}:\d{2}:\d{2}(\.\d+)?\+\d{2})?", "[TIME]"),
            (r"\b\d+ rows", "[N] rows"),
            (r"\b\d+ bytes", "[N] bytes"),
            (r"(?m)^(    \S+ +)\d+$", "${1}[N]"),
        ],
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_snapshot!("archive_list", shown);
    });
}

/// With recipients set, archives are sealed: the whole round trip (run, query, restore, archive
/// again) works on the host through its archive key; every archive file on disk is an age file;
/// without a key that opens them a query stops with exit 1 naming the identity setting, and the
/// operator's identity alone opens them.
#[test]
fn an_encrypted_archive_round_trip_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = local_env(dir.path());
    let identity = dir.path().join("operator.key");
    let made = hk(
        &["backup", "keygen", &identity.display().to_string()],
        &env,
        dir.path(),
    );
    let public = made.lines().nth(2).unwrap_or_default().to_owned();
    assert!(public.starts_with("age1"), "{made}");
    env.push(("HITKEEP_BACKUP_RECIPIENTS".into(), public));
    round_trip(dir.path(), &env);
    let mut sealed = 0;
    for entry in walk(&dir.path().join("archive")) {
        let bytes = std::fs::read(&entry).unwrap();
        if entry.extension().is_some_and(|e| e == "parquet") {
            assert!(
                bytes.starts_with(b"age-encryption.org/v1\n"),
                "{}",
                entry.display()
            );
            sealed += 1;
        }
    }
    assert!(sealed >= 6, "{sealed}");

    // Elsewhere (no host key, no cached copies): refused without the identity, read with it.
    let data = dir.path().join("data");
    std::fs::remove_file(data.join(".hitkeep-archive-key")).unwrap();
    let _ = std::fs::remove_dir_all(data.join(hitkeep_data::ARCHIVE_CACHE_DIR));
    let query = ["archive", "query", "SELECT count(*) AS n FROM archive"];
    let refused = hk(&query, &env, dir.path());
    assert!(
        refused.starts_with("exit: 1") && refused.contains("HITKEEP_BACKUP_IDENTITY_FILE"),
        "{refused}"
    );
    assert!(
        !data.join(".hitkeep-archive-key").exists(),
        "a reading command never makes the archive key"
    );
    env.push((
        "HITKEEP_BACKUP_IDENTITY_FILE".into(),
        identity.display().to_string(),
    ));
    let opened = hk(&query, &env, dir.path());
    assert!(opened.starts_with("exit: 0"), "{opened}");
}

/// Every file under `dir`.
pub(crate) fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
