//! The destination checks: a backup or archive location exercised the way backups use it, under
//! `_doctor/{uuid}/`, which is removed after.

use std::path::Path;
use std::time::Duration;

use hitkeep_config::{Location, ObjectLock, S3Checksum, Settings};
use hitkeep_storage::{
    ChecksumSupport, ListMode, ObjectInfo, Sha256Digest, Storage, StorageOptions, TransferOptions,
};

use super::{Outcome, Report, first_line};

/// Request signing tolerates 15 minutes of skew; a warning comes well before that.
const SKEW_FAILS: i64 = 15 * 60;
const SKEW_WARNS: i64 = 5 * 60;

/// Every check of one destination, `label` (`backup` or `archive`) naming it in the checks.
pub(super) async fn check(
    settings: &Settings,
    label: &str,
    location: &Location,
    report: &mut Report,
) {
    // Few retries: a self-test should answer in seconds, and a retried failure is still a failure.
    let mut options = StorageOptions::default();
    options.retries = 2;
    options.max_backoff = Duration::from_secs(1);
    let storage = match Storage::open_with(location, &settings.s3, &options).await {
        Ok(s) => s,
        Err(e) => return report.fail(format!("{label}: open {location}"), &e),
    };
    report.ok(
        format!("{label}: open"),
        format!("{location} exists and can be listed"),
    );
    if label == "backup"
        && let Some(lock) = settings.backup.object_lock
    {
        object_lock(&storage, lock, report).await;
    }
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
            let (outcome, detail, hint) = judge_checksums(&support, setting);
            report.add(name, outcome, detail, hint);
        }
        // A local directory: no headers to take.
        Ok(None) => {}
        Err(e) => report.fail(name, &e),
    }
}

/// A setting whose header the service refuses fails; one where another setting fits better warns. The
/// detail always ends with the assignment to use.
fn judge_checksums(
    support: &ChecksumSupport,
    setting: S3Checksum,
) -> (Outcome, String, Option<String>) {
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
        return (Outcome::Failure, detail, Some(hint));
    }
    let (outcome, hint) = match (setting, best) {
        (S3Checksum::Auto, S3Checksum::Md5) => (
            Outcome::Warning,
            Some("auto switches to Content-MD5 after the first refused upload; set HITKEEP_S3_CHECKSUM=md5 to start with it".to_owned()),
        ),
        (S3Checksum::Off, S3Checksum::Auto | S3Checksum::Md5) => (
            Outcome::Warning,
            Some(format!("uploads carry no integrity header, so a body damaged on the way can be stored; set HITKEEP_S3_CHECKSUM={best}")),
        ),
        (S3Checksum::Md5, S3Checksum::Auto) => (
            Outcome::Ok,
            Some("CRC32C is accepted too: HITKEEP_S3_CHECKSUM=auto would use it".to_owned()),
        ),
        _ => (Outcome::Ok, None),
    };
    (outcome, detail, hint)
}

/// The round trip, clock, conditional writes, multipart upload, paging and delete, in that order;
/// `Err` once a step failed (it is in the report), since the later steps build on the earlier.
async fn exercise(
    storage: &Storage,
    label: &str,
    run: &str,
    report: &mut Report,
) -> Result<(), ()> {
    let small = format!("{run}/small.txt");
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
    step(
        round_trip(storage, run, &small).await,
        "write, read back, stat",
        report,
        "a small object round-trips byte-identical",
    )?;
    clock(storage, label, &small, report).await;
    conditional_writes(storage, label, &format!("{run}/conditional"), report).await;
    step(
        multipart(storage, run).await,
        "multipart upload",
        report,
        "3 parts of 5 MiB and a tail read back with the same SHA-256",
    )?;
    step(
        paging(storage, run).await,
        "paginated listing",
        report,
        "3 objects listed one page at a time",
    )?;
    step(
        deleting(storage, run, &small).await,
        "delete",
        report,
        "a deleted object is gone from a fresh listing",
    )
}

async fn round_trip(
    storage: &Storage,
    run: &str,
    small: &str,
) -> Result<(), hitkeep_storage::Error> {
    let body = format!("hitkeep doctor {run}\n").into_bytes();
    storage.write(small, body.clone()).await?;
    let back = storage.read(small).await?;
    let size = storage.stat(small).await?;
    if back.as_ref() != body.as_slice() || size != Some(body.len() as u64) {
        return Err(hitkeep_storage::Error::integrity(small));
    }
    Ok(())
}

async fn paging(storage: &Storage, run: &str) -> Result<(), hitkeep_storage::Error> {
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

async fn deleting(storage: &Storage, run: &str, small: &str) -> Result<(), hitkeep_storage::Error> {
    storage.delete(small).await?;
    let listed = storage.list(run, ListMode::Recursive).await?;
    if storage.stat(small).await?.is_some() || listed.iter().any(|e| e.key == small) {
        return Err(hitkeep_storage::Error::integrity(small));
    }
    Ok(())
}

/// Whether the service refuses a second `If-None-Match: *` create, which is how a cycle claims its
/// snapshot id. Without it, cycles claim by writing an announcement of their own and listing the
/// folder: safe between installations of this version where listings are consistent (as on S3, R2,
/// Ceph and single-node Garage), but not against older versions, which claimed by timing.
async fn conditional_writes(storage: &Storage, label: &str, key: &str, report: &mut Report) {
    let name = format!("{label}: conditional writes");
    match storage.honours_if_absent(key).await {
        Ok(true) => report.ok(name, "a second If-None-Match: * create is refused (snapshot ids are claimed atomically)"),
        // Not a fault: one installation per destination, the normal case, needs no atomic claim, and
        // cycles fall back to announcing. Said, so that sharing a destination is a choice.
        Ok(false) => report.ok(
            name,
            "not honoured (the service overwrites): cycles claim snapshot ids by announcement and listing; keep one installation per HITKEEP_BACKUP_PATH",
        ),
        Err(e) => report.ok(
            name,
            format!(
                "not supported ({}): cycles claim snapshot ids by announcement and listing; keep one installation per HITKEEP_BACKUP_PATH",
                first_line(&e.to_string())
            ),
        ),
    }
    let _ = storage.delete(key).await;
}

/// Whether the bucket has the S3 Object Lock that `HITKEEP_BACKUP_OBJECT_LOCK_DAYS` asks for.
async fn object_lock(storage: &Storage, lock: ObjectLock, report: &mut Report) {
    let name = "backup: object lock";
    match storage.bucket_object_lock().await {
        Ok(bucket) if bucket.enabled => report.ok(
            name,
            format!(
                "enabled on the bucket: each snapshot is locked for {} days ({} mode) when written",
                lock.days, lock.mode
            ),
        ),
        Ok(_) => report.add(
            name,
            Outcome::Failure,
            "HITKEEP_BACKUP_OBJECT_LOCK_DAYS is set and the bucket has no Object Lock: cycles fail before writing anything",
            Some(hitkeep_backup::OBJECT_LOCK_HOWTO.to_owned()),
        ),
        Err(e) => report.fail(name, &e),
    }
}

/// This machine's clock against the server's, by the modification time it gives the object just written.
async fn clock(storage: &Storage, label: &str, key: &str, report: &mut Report) {
    let name = format!("{label}: clock");
    let Ok(Some(modified)) = storage.modified_at(key).await else {
        return report.add(
            name,
            Outcome::Warning,
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
        s if s > SKEW_FAILS => report.add(
            name,
            Outcome::Failure,
            format!("{s} s apart from the server"),
            hint,
        ),
        s if s > SKEW_WARNS => report.add(
            name,
            Outcome::Warning,
            format!("{s} s apart from the server"),
            hint,
        ),
        s => report.ok(name, format!("within {s} s of the server")),
    }
}

/// A 15 MiB file and a tail, uploaded in 5 MiB parts and downloaded through the verified download,
/// as snapshots are. The local copies live in a temporary folder of the system's, not in the data
/// path: they are the doctor's scratch, not HitKeep's data.
async fn multipart(storage: &Storage, run: &str) -> Result<(), hitkeep_storage::Error> {
    let dir = tempfile::tempdir()
        .map_err(|e| hitkeep_storage::Error::local_io("multipart", Path::new("."), e))?;
    let path = dir.path().join("multipart.bin");
    let data: Vec<u8> = (0..(15 * 1024 * 1024 + 4321))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    tokio::fs::write(&path, &data)
        .await
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
        assert_eq!(judge(&aws, S3Checksum::Auto).0, Outcome::Ok);
        let (outcome, detail, hint) = judge(&b2, S3Checksum::Auto);
        assert_eq!(outcome, Outcome::Warning);
        assert!(
            detail.contains("InvalidArgument") && detail.ends_with("HITKEEP_S3_CHECKSUM=md5"),
            "{detail}"
        );
        assert!(hint.unwrap().contains("HITKEEP_S3_CHECKSUM=md5"));
        assert_eq!(judge(&b2, S3Checksum::Md5).0, Outcome::Ok);
        assert_eq!(judge(&b2, S3Checksum::Crc32c).0, Outcome::Failure);
        assert_eq!(judge(&b2, S3Checksum::Off).0, Outcome::Warning);
        let (outcome, detail, _) = judge(&neither, S3Checksum::Auto);
        assert_eq!(outcome, Outcome::Failure);
        assert!(detail.ends_with("HITKEEP_S3_CHECKSUM=off"), "{detail}");
        assert_eq!(judge(&neither, S3Checksum::Off).0, Outcome::Ok);
    }
}
