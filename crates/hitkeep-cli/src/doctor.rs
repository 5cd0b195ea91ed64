//! `hitkeep doctor`: a self-test of the configured destinations, run before trusting them.

use std::path::Path;
use std::process::ExitCode;

use hitkeep_config::{Credentials, Location, S3Checksum, Settings};
use hitkeep_storage::{
    ChecksumSupport, ListMode, ObjectInfo, Sha256Digest, Storage, TransferOptions,
};
use serde::Serialize;

use crate::EXIT_USAGE;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warning,
    Failure,
}

#[derive(Debug, Serialize)]
struct Check {
    name: String,
    status: Status,
    detail: String,
    hint: Option<String>,
}

#[derive(Default)]
struct Report(Vec<Check>);

impl Report {
    fn add(
        &mut self,
        name: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
        hint: Option<String>,
    ) {
        self.0.push(Check {
            name: name.into(),
            status,
            detail: detail.into(),
            hint,
        });
    }

    fn ok(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(name, Status::Ok, detail, None);
    }

    fn fail(&mut self, name: impl Into<String>, e: &hitkeep_storage::Error) {
        let detail = e.to_string().lines().next().unwrap_or_default().to_owned();
        self.add(name, Status::Failure, detail, e.hint().map(str::to_owned));
    }
}

pub fn doctor(settings: &Settings, config: &hitkeep_config::Config, json: bool) -> ExitCode {
    let mut report = Report::default();
    match config.warnings.len() {
        0 => report.ok("config", "valid"),
        n => report.add(
            "config",
            Status::Warning,
            format!("valid, with {n} warning(s)"),
            Some("run `hitkeep config check`".into()),
        ),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let mut destinations = Vec::new();
    if let Some(backup) = &settings.backup.location {
        destinations.push(("backup", backup.clone()));
    } else {
        report.add(
            "backup",
            Status::Warning,
            "backups are disabled",
            Some("set HITKEEP_BACKUP_PATH".into()),
        );
    }
    destinations.push(("archive", settings.archive.clone()));
    if destinations.iter().any(|(_, l)| l.is_s3()) {
        credentials(settings, &mut report);
    }
    for (label, location) in &destinations {
        runtime.block_on(destination(settings, label, location, &mut report));
    }
    local(settings, &mut report);
    tenant_layout(settings, &mut report);
    print(&report, json)
}

/// Where the credentials come from, never what they are.
fn credentials(settings: &Settings, report: &mut Report) {
    let var = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    let source = match &settings.s3.credentials {
        Credentials::Static {
            session_token: Some(_),
            ..
        } => "static keys with a session token (HITKEEP_S3_*)",
        Credentials::Static { .. } => {
            "static keys (HITKEEP_S3_ACCESS_KEY_ID / HITKEEP_S3_SECRET_ACCESS_KEY)"
        }
        Credentials::Chain if var("AWS_ACCESS_KEY_ID") => {
            "AWS credential chain: environment (AWS_ACCESS_KEY_ID)"
        }
        Credentials::Chain if var("AWS_WEB_IDENTITY_TOKEN_FILE") => {
            "AWS credential chain: web identity"
        }
        Credentials::Chain if var("AWS_PROFILE") || var("AWS_SHARED_CREDENTIALS_FILE") => {
            "AWS credential chain: profile"
        }
        Credentials::Chain if var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") => {
            "AWS credential chain: ECS task role"
        }
        Credentials::Chain => {
            "AWS credential chain: instance role or ~/.aws (resolved on first request)"
        }
    };
    report.ok("credentials", source);
}

async fn destination(settings: &Settings, label: &str, location: &Location, report: &mut Report) {
    // Few retries: a self-test should answer in seconds, and a retried failure is still a failure.
    let mut options = hitkeep_storage::StorageOptions::default();
    options.retries = 2;
    options.max_backoff = std::time::Duration::from_secs(1);
    let storage = match Storage::open_with(location, &settings.s3, &options).await {
        Ok(s) => s,
        Err(e) => return report.fail(format!("{label}: open {location}"), &e),
    };
    report.ok(
        format!("{label}: open"),
        format!("{location} exists and can be listed"),
    );
    let run = format!("_doctor/{}", uuid::Uuid::new_v4());
    checksums(&storage, settings.s3.checksum, label, &run, report).await;
    // A failing step is already in the report; clean up whatever it left either way.
    let _ = exercise(&storage, label, &run, report).await;
    if let Err(e) = storage.delete_prefix(&run).await {
        report.fail(format!("{label}: clean up {run}"), &e);
    }
}

/// Which integrity headers the service takes, and the `HITKEEP_S3_CHECKSUM` assignment that fits it.
async fn checksums(
    storage: &Storage,
    setting: S3Checksum,
    label: &str,
    run: &str,
    report: &mut Report,
) {
    let name = format!("{label}: integrity headers");
    match storage
        .probe_checksums(&format!("{run}/integrity-probe"))
        .await
    {
        Ok(Some(support)) => {
            let (status, detail, hint) = judge_checksums(&support, setting);
            report.add(name, status, detail, hint);
        }
        Ok(None) => {}
        Err(e) => report.fail(name, &e),
    }
}

/// A setting whose header the service refuses fails; one where another setting fits better warns. The
/// detail always ends with the assignment to use.
fn judge_checksums(
    support: &ChecksumSupport,
    setting: S3Checksum,
) -> (Status, String, Option<String>) {
    let answer = |r: &Result<(), String>| match r {
        Ok(()) => "accepted".to_owned(),
        Err(refusal) => format!("refused ({refusal})"),
    };
    let best = support.recommended();
    let detail = format!(
        "x-amz-checksum-crc32c {}, Content-MD5 {}: use HITKEEP_S3_CHECKSUM={best}",
        answer(&support.crc32c),
        answer(&support.md5)
    );
    let refused = match setting {
        // auto falls back to Content-MD5, so only both refused stops it.
        S3Checksum::Auto => support.crc32c.is_err() && support.md5.is_err(),
        S3Checksum::Crc32c => support.crc32c.is_err(),
        S3Checksum::Md5 => support.md5.is_err(),
        S3Checksum::Off => false,
    };
    if refused {
        let hint = format!(
            "uploads will be refused with HITKEEP_S3_CHECKSUM={setting}; set HITKEEP_S3_CHECKSUM={best}"
        );
        return (Status::Failure, detail, Some(hint));
    }
    let (status, hint) = match (setting, best) {
        (S3Checksum::Auto, S3Checksum::Md5) => (
            Status::Warning,
            Some("auto switches to Content-MD5 after the first refused upload; set HITKEEP_S3_CHECKSUM=md5 to start with it".to_owned()),
        ),
        (S3Checksum::Off, S3Checksum::Auto | S3Checksum::Md5) => (
            Status::Warning,
            Some(format!("uploads carry no integrity header, so a body damaged on the way can be stored; set HITKEEP_S3_CHECKSUM={best}")),
        ),
        (S3Checksum::Md5, S3Checksum::Auto) => (
            Status::Ok,
            Some("CRC32C is accepted too: HITKEEP_S3_CHECKSUM=auto would use it".to_owned()),
        ),
        _ => (Status::Ok, None),
    };
    (status, detail, hint)
}

async fn exercise(
    storage: &Storage,
    label: &str,
    run: &str,
    report: &mut Report,
) -> Result<(), ()> {
    let small = format!("{run}/small.txt");
    let body = format!("hitkeep doctor {run}\n").into_bytes();
    let step = |r: Result<(), hitkeep_storage::Error>,
                name: &str,
                report: &mut Report,
                detail: &str| match r {
        Ok(()) => {
            report.ok(format!("{label}: {name}"), detail);
            Ok(())
        }
        Err(e) => {
            report.fail(format!("{label}: {name}"), &e);
            Err(())
        }
    };
    let written = async {
        storage.write(&small, body.clone()).await?;
        let back = storage.read(&small).await?;
        let size = storage.stat(&small).await?;
        if back.as_ref() != body.as_slice() || size != Some(body.len() as u64) {
            return Err(hitkeep_storage::Error::integrity(&small));
        }
        Ok(())
    }
    .await;
    step(
        written,
        "write, read back, stat",
        report,
        "a small object round-trips byte-identical",
    )?;

    clock(storage, label, &small, report).await;
    conditional_writes(storage, label, &format!("{run}/conditional"), report).await;

    let multipart = multipart(storage, run).await;
    step(
        multipart,
        "multipart upload",
        report,
        "3 parts of 5 MiB and a tail read back with the same SHA-256",
    )?;

    let paging = async {
        for i in 0..3 {
            storage.write(&format!("{run}/page/{i}"), &b"p"[..]).await?;
        }
        let listed = storage
            .list_paged(&format!("{run}/page"), ListMode::Recursive, Some(1))
            .await?;
        if listed.len() != 3 {
            return Err(hitkeep_storage::Error::integrity(&format!("{run}/page")));
        }
        Ok(())
    }
    .await;
    step(
        paging,
        "paginated listing",
        report,
        "3 objects listed one page at a time",
    )?;

    let deleting = async {
        storage.delete(&small).await?;
        let listed = storage.list(run, ListMode::Recursive).await?;
        if storage.stat(&small).await?.is_some() || listed.iter().any(|e| e.key == small) {
            return Err(hitkeep_storage::Error::integrity(&small));
        }
        Ok(())
    }
    .await;
    step(
        deleting,
        "delete",
        report,
        "a deleted object is gone from a fresh listing",
    )
}

/// Whether the service refuses a second `If-None-Match: *` create, which is how a cycle claims its
/// snapshot id. Without it, cycles claim by reading their marker back after a pause: still safe for
/// the usual case, but two installations on one destination are then kept apart by timing alone.
async fn conditional_writes(storage: &Storage, label: &str, key: &str, report: &mut Report) {
    let name = format!("{label}: conditional writes");
    match storage.honours_if_absent(key).await {
        Ok(true) => report.ok(name, "a second If-None-Match: * create is refused (snapshot ids are claimed atomically)"),
        // Not a fault: one installation per destination, the normal case, needs no atomic claim, and
        // cycles fall back to reading their marker back. Said, so that sharing a destination is a choice.
        Ok(false) => report.ok(
            name,
            "not honoured (the service overwrites): cycles claim snapshot ids by reading their marker back; keep one installation per HITKEEP_BACKUP_PATH",
        ),
        Err(e) => report.ok(
            name,
            format!(
                "not supported ({}): cycles claim snapshot ids by reading their marker back; keep one installation per HITKEEP_BACKUP_PATH",
                e.to_string().lines().next().unwrap_or_default()
            ),
        ),
    }
    let _ = storage.delete(key).await;
}

/// Request signing tolerates 15 minutes of skew; warn well before that.
async fn clock(storage: &Storage, label: &str, key: &str, report: &mut Report) {
    let Ok(Some(modified)) = storage.modified_at(key).await else {
        return report.add(
            format!("{label}: clock"),
            Status::Warning,
            "the server reported no modification time",
            None,
        );
    };
    let Ok(server) = modified.parse::<jiff::Timestamp>() else {
        return;
    };
    let skew = (jiff::Timestamp::now().as_second() - server.as_second()).abs();
    let hint = Some("synchronise this machine's clock (NTP); S3 rejects requests signed more than 15 minutes off".to_owned());
    match skew {
        s if s > 15 * 60 => report.add(
            format!("{label}: clock"),
            Status::Failure,
            format!("{s} s apart from the server"),
            hint,
        ),
        s if s > 5 * 60 => report.add(
            format!("{label}: clock"),
            Status::Warning,
            format!("{s} s apart from the server"),
            hint,
        ),
        s => report.ok(
            format!("{label}: clock"),
            format!("within {s} s of the server"),
        ),
    }
}

async fn multipart(storage: &Storage, run: &str) -> Result<(), hitkeep_storage::Error> {
    let dir = tempfile::tempdir()
        .map_err(|e| hitkeep_storage::Error::local_io("multipart", Path::new("."), e))?;
    let path = dir.path().join("multipart.bin");
    let data: Vec<u8> = (0..(15 * 1024 * 1024 + 4321))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&path, &data)
        .map_err(|e| hitkeep_storage::Error::local_io("multipart", &path, e))?;
    let options = TransferOptions::new(5 * 1024 * 1024, 2);
    let key = format!("{run}/multipart.bin");
    let up = storage.upload_file(&path, &key, &options).await?;
    let want = ObjectInfo {
        size: data.len() as u64,
        sha256: Sha256Digest::of(&data),
    };
    if up != want {
        return Err(hitkeep_storage::Error::integrity(&key));
    }
    storage
        .download_file(&key, &dir.path().join("back.bin"), Some(&want), &options)
        .await?;
    Ok(())
}

/// The databases are readable, and the staging disk has room for a snapshot of them.
/// The layout the shared database records (HitKeep 2.13's split or not) and whether every tenant a
/// cycle backs up has its database. Read-only, so it works beside a stopped server; a running one holds
/// the file, and that is reported rather than waited for.
fn tenant_layout(settings: &Settings, report: &mut Report) {
    const NAME: &str = "data: tenant layout";
    if !settings.db_path.is_file() {
        return; // already reported above
    }
    let set = hitkeep_data::open_read_only(&settings.db_path)
        .map_err(|e| e.to_string())
        .and_then(|conn| hitkeep_data::tenant_set(&conn).map_err(|e| e.to_string()));
    let set = match set {
        Ok(set) => set,
        Err(e) => {
            let detail = format!(
                "could not read {}: {}",
                settings.db_path.display(),
                e.lines().next().unwrap_or_default()
            );
            let hint = "a running HitKeep server holds its database: check the layout with the server stopped, or trust the next backup cycle's report".to_owned();
            report.add(NAME, Status::Warning, detail, Some(hint));
            return;
        }
    };
    let layout = crate::backup::layout(settings);
    let missing: Vec<(uuid::Uuid, std::path::PathBuf)> = set
        .backed_up
        .iter()
        .map(|t| (*t, layout.tenant_db(*t)))
        .filter(|(_, path)| !path.exists())
        .collect();
    let detail = format!(
        "{} (HitKeep {}): {} tenant database(s) to back up, {} missing",
        set.layout,
        set.layout.hitkeep_version(),
        set.backed_up.len(),
        missing.len()
    );
    let default_missing = missing.iter().find(|(t, _)| {
        set.layout == hitkeep_data::TenantLayout::Split && Some(*t) == set.default_tenant
    });
    if let Some((_, path)) = default_missing {
        let hint = format!(
            "the default tenant's analytics should be at {}: check HITKEEP_DATA_PATH (HitKeep will not start without this file)",
            path.display()
        );
        report.add(NAME, Status::Failure, detail, Some(hint));
    } else if !missing.is_empty() {
        let list: Vec<String> = missing
            .iter()
            .map(|(t, p)| format!("{t} ({})", p.display()))
            .collect();
        let hint = format!(
            "backups skip these until HitKeep creates them on first use: {}",
            list.join(", ")
        );
        report.add(NAME, Status::Warning, detail, Some(hint));
    } else {
        report.ok(NAME, detail);
    }
}

fn local(settings: &Settings, report: &mut Report) {
    let mut total = 0u64;
    match std::fs::File::open(&settings.db_path).and_then(|f| f.metadata()) {
        Ok(m) => {
            total += m.len();
            report.ok(
                "data: shared database",
                format!(
                    "{} is readable ({} bytes)",
                    settings.db_path.display(),
                    m.len()
                ),
            );
        }
        Err(e) => report.add(
            "data: shared database",
            Status::Warning,
            format!("{}: {e}", settings.db_path.display()),
            Some(
                "check HITKEEP_DB_PATH (no database yet is fine before HitKeep's first start)"
                    .into(),
            ),
        ),
    }
    let tenants = settings.data_path.join("tenants");
    let mut count = 0;
    for entry in std::fs::read_dir(&tenants).into_iter().flatten().flatten() {
        if let Ok(m) =
            std::fs::File::open(entry.path().join("hitkeep.db")).and_then(|f| f.metadata())
        {
            total += m.len();
            count += 1;
        }
    }
    report.ok(
        "data: tenant databases",
        format!("{count} readable under {}", tenants.display()),
    );
    let mut probe = settings.data_path.as_path();
    while !probe.exists() {
        probe = probe
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
    }
    match fs4::available_space(probe) {
        // An export is about half a database's size; ask for the whole size to be safe.
        Ok(free) if free >= total => report.ok(
            "data: staging room",
            format!("{free} bytes free for snapshots of {total} bytes"),
        ),
        Ok(free) => report.add(
            "data: staging room",
            Status::Failure,
            format!("{free} bytes free, the databases take {total}"),
            Some(format!(
                "free space on {} (exports are staged under HITKEEP_DATA_PATH)",
                probe.display()
            )),
        ),
        Err(e) => report.add(
            "data: staging room",
            Status::Warning,
            format!("{}: {e}", probe.display()),
            None,
        ),
    }
}

fn print(report: &Report, json: bool) -> ExitCode {
    let worst = report
        .0
        .iter()
        .map(|c| c.status)
        .fold(Status::Ok, |a, b| match (a, b) {
            (Status::Failure, _) | (_, Status::Failure) => Status::Failure,
            (Status::Warning, _) | (_, Status::Warning) => Status::Warning,
            _ => Status::Ok,
        });
    if json {
        println!(
            "{:#}",
            serde_json::json!({ "status": worst, "checks": report.0 })
        );
    } else {
        for c in &report.0 {
            let label = match c.status {
                Status::Ok => "ok     ",
                Status::Warning => "warning",
                Status::Failure => "FAILURE",
            };
            println!("{label} {}: {}", c.name, c.detail);
            if let Some(hint) = &c.hint {
                println!("        hint: {hint}");
            }
        }
    }
    match worst {
        Status::Ok => ExitCode::SUCCESS,
        Status::Warning => ExitCode::from(1),
        Status::Failure => ExitCode::from(EXIT_USAGE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Result<(), String> {
        Err("400 InvalidArgument: Unsupported header 'x-amz-checksum-crc32c' received for this API call.".into())
    }

    /// Each setting against each kind of provider: the assignment is always printed, and only a
    /// setting whose uploads would be refused fails.
    #[test]
    fn the_assignment_to_use_follows_what_the_service_takes() {
        let aws = ChecksumSupport::new(Ok(()), Ok(()));
        let b2 = ChecksumSupport::new(refused(), Ok(()));
        let neither = ChecksumSupport::new(refused(), refused());
        let judge = |s: &ChecksumSupport, setting| judge_checksums(s, setting);
        assert_eq!(judge(&aws, S3Checksum::Auto).0, Status::Ok);
        let (status, detail, hint) = judge(&b2, S3Checksum::Auto);
        assert_eq!(status, Status::Warning);
        assert!(
            detail.contains("InvalidArgument") && detail.ends_with("HITKEEP_S3_CHECKSUM=md5"),
            "{detail}"
        );
        assert!(hint.unwrap().contains("HITKEEP_S3_CHECKSUM=md5"));
        assert_eq!(judge(&b2, S3Checksum::Md5).0, Status::Ok);
        assert_eq!(judge(&b2, S3Checksum::Crc32c).0, Status::Failure);
        assert_eq!(judge(&b2, S3Checksum::Off).0, Status::Warning);
        let (status, detail, _) = judge(&neither, S3Checksum::Auto);
        assert_eq!(status, Status::Failure);
        assert!(detail.ends_with("HITKEEP_S3_CHECKSUM=off"), "{detail}");
        assert_eq!(judge(&neither, S3Checksum::Off).0, Status::Ok);
    }
}
