//! Encrypted snapshots as an operator runs them: keys from `hitkeep backup keygen`, a host that
//! holds only the public keys, restores that need the identity, and a bucket that holds no plaintext.
//! The kill, fault-proxy and bit-flip sections run on the same keys (see `mod.rs`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::faults::tree;
use super::tools::diff;
use super::{Ctx, Env, Keys, entries};

/// The first bytes of every age file.
const AGE_HEADER: &[u8] = b"age-encryption.org/v1\n";
/// A value every demo database holds in its rows (sites' domains, hits' hostnames).
const MARKER: &[u8] = b"example.com";

/// A new key pair from `hitkeep backup keygen`: the identity file and the public key it printed. The
/// private key joins the secret scan.
pub fn keygen(ctx: &mut Ctx, name: &str) -> Result<(PathBuf, String)> {
    let dir = ctx.dir("keys")?;
    let file = dir.join(name);
    let out = ctx.hk(
        &dir,
        &Env::default(),
        &["backup", "keygen", &file.to_string_lossy()],
    )?;
    ensure!(out.ok(), "backup keygen failed: {}", out.brief());
    let public = out.stdout.trim().to_owned();
    ensure!(public.starts_with("age1"), "keygen printed {public:?}");
    let text = std::fs::read_to_string(&file)?;
    let secret = text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .context("keygen wrote no private key")?;
    ctx.secrets.push(secret.to_owned());
    Ok((file, public))
}

/// The operator's key and a second recipient's (a colleague's, or the offline copy): snapshots are
/// encrypted to both, and the operator's identity is what restores use.
pub fn keys(ctx: &mut Ctx) -> Result<Keys> {
    let (identity, operator) = keygen(ctx, "operator.key")?;
    let (second, colleague) = keygen(ctx, "second.key")?;
    Ok(Keys {
        recipients: format!("{operator},{colleague}"),
        identity,
        second,
    })
}

/// One encrypted cycle: listed as encrypted, verified without the identity, restored with either
/// recipient's, refused without one or with a stranger's, exported plain for DuckDB 1.5; every
/// stored object but the clear manifests is an age file and none holds the demo's row values, which
/// a plain snapshot of the same data does.
pub fn round_trip(ctx: &mut Ctx) -> Result<()> {
    let keys = ctx.keys.clone().context("no keys")?;
    let dir = ctx.dir("encrypted")?;
    let env = ctx.s3_env_at("encrypted");
    ctx.demo(&dir, &env, 100_000, 2)?;
    let fp = ctx.fingerprint(&dir)?;
    let out = ctx.hk(&dir, &env, &["backup", "run"])?;
    ensure!(out.ok(), "the encrypted backup failed: {}", out.brief());
    let listed = ctx.snapshots(&dir, &env)?;
    let open_to = |s: &Value| s["encrypted_to"].as_array().map_or(0, Vec::len);
    ctx.report.check(
        format!(
            "backup list --json: all {} snapshots encrypted to both recipients",
            listed.len()
        ),
        listed.len() == fp.len() && listed.iter().all(|s| open_to(s) == 2),
        format!("{listed:?}"),
    );
    let host = env.clone().unset("HITKEEP_BACKUP_IDENTITY_FILE");
    let out = ctx.hk(&dir, &host, &["backup", "verify"])?;
    ctx.report.check(
        "backup verify without the identity checks the stored bytes",
        out.ok(),
        out.brief(),
    );
    let out = ctx.hk(&dir, &env, &["backup", "verify", "--deep"])?;
    ctx.report.check(
        "backup verify --deep with the identity",
        out.ok(),
        out.brief(),
    );

    restores(ctx, &keys, &fp)?;
    refusals(ctx, &dir, &env, &host)?;
    no_plaintext(ctx, &dir, &env)?;
    let local = ctx.dir("encrypted-plain")?;
    super::scenarios::plain_for_hitkeep(ctx, &dir, &env, &local, &fp)
}

/// Restores of the latest cycle into empty folders, with each recipient's identity.
fn restores(ctx: &mut Ctx, keys: &Keys, fp: &super::Fingerprint) -> Result<()> {
    let from = ctx.s3.url("encrypted/backups");
    for (who, identity) in [("operator", &keys.identity), ("second", &keys.second)] {
        let target = ctx.dir(&format!("encrypted-restore-{who}"))?;
        let env = ctx
            .s3_env()
            .set("HITKEEP_BACKUP_IDENTITY_FILE", identity.to_string_lossy());
        let out = ctx.restore(&target, &env, &from, None)?;
        let got = ctx.fingerprint(&target)?;
        ctx.report.check(
            format!("restore with the {who} recipient's identity: every database, every row equal"),
            out.ok() && got == *fp,
            format!("{}\n{}", out.brief(), diff(&got, fp)),
        );
    }
    Ok(())
}

/// Restores without an identity (exit 2) and with a stranger's (exit 1), in place over the live
/// databases: nothing downloaded is left, nothing live is changed.
fn refusals(ctx: &mut Ctx, dir: &Path, env: &Env, host: &Env) -> Result<()> {
    let (stranger, _) = keygen(ctx, "stranger.key")?;
    let from = ctx.s3.url("encrypted/backups");
    let live = tree(dir)?;
    let out = ctx.restore(dir, host, &from, None)?;
    ctx.report.check(
        "restore without an identity: exit 2 naming HITKEEP_BACKUP_IDENTITY_FILE, live data byte for byte as it was",
        out.code == Some(2)
            && out.stderr.contains("HITKEEP_BACKUP_IDENTITY_FILE")
            && tree(dir)? == live,
        out.brief(),
    );
    let wrong = env
        .clone()
        .set("HITKEEP_BACKUP_IDENTITY_FILE", stranger.to_string_lossy());
    let out = ctx.restore(dir, &wrong, &from, None)?;
    ctx.report.check(
        "restore with an identity of no recipient: exit 1, live data byte for byte as it was",
        out.code == Some(1) && tree(dir)? == live,
        out.brief(),
    );
    Ok(())
}

/// Every object of the encrypted destination downloaded: all but the records kept in the clear
/// ([`in_the_clear`]) start with age's header, and none holds [`MARKER`]; a plain backup of the same data, the control, does.
fn no_plaintext(ctx: &mut Ctx, dir: &Path, env: &Env) -> Result<()> {
    let plain_env = env
        .clone()
        .unset("HITKEEP_BACKUP_RECIPIENTS")
        .set("HITKEEP_BACKUP_PATH", ctx.s3.url("encrypted/plain-backups"));
    let out = ctx.hk(dir, &plain_env, &["backup", "run"])?;
    ensure!(out.ok(), "the plain control backup failed: {}", out.brief());
    let scan = |ctx: &Ctx, prefix: &str, name: &str| -> Result<Vec<(String, Vec<u8>)>> {
        let local = ctx.dir(name)?;
        ctx.rclone.copy(&local, &ctx.s3.key(prefix), false, &[])?;
        let mut files = Vec::new();
        for path in entries(&local)?.into_iter().filter(|p| p.is_file()) {
            let shown = path.strip_prefix(&local)?.to_string_lossy().into_owned();
            files.push((shown, std::fs::read(&path)?));
        }
        Ok(files)
    };
    let holds = |bytes: &[u8]| bytes.windows(MARKER.len()).any(|w| w == MARKER);
    let control = scan(ctx, "encrypted/plain-backups", "encrypted-scan-plain")?;
    let in_control = control.iter().filter(|(_, b)| holds(b)).count();
    let stored = scan(ctx, "encrypted/backups", "encrypted-scan")?;
    let leaks: Vec<&str> = stored
        .iter()
        .filter(|(_, b)| holds(b))
        .map(|(n, _)| n.as_str())
        .collect();
    let clear: Vec<&str> = stored
        .iter()
        .filter(|(n, b)| !in_the_clear(n) && !b.starts_with(AGE_HEADER))
        .map(|(n, _)| n.as_str())
        .collect();
    ctx.report.check(
        format!(
            "no plaintext in the bucket: all {} objects but the manifests and source records are age files, none holds the demo's {:?} ({} objects of a plain backup do)",
            stored.len(),
            String::from_utf8_lossy(MARKER),
            in_control
        ),
        leaks.is_empty() && clear.is_empty() && in_control > 0 && !stored.is_empty(),
        format!("holding the marker: {leaks:?}\nnot age files: {clear:?}"),
    );
    Ok(())
}

/// What an encrypted destination keeps in the clear, as the README's threat model says: manifests
/// (what `backup list` and a plain `verify` read), each installation's record in `sources/` (its
/// host name and data path), and the pool sweep's clock note (a time).
fn in_the_clear(key: &str) -> bool {
    key.ends_with("/manifest.json")
        || (key.starts_with("sources/") && key.ends_with(".json"))
        || key == "pool/clock.json"
}

/// Tenant keys (`HITKEEP_BACKUP_TENANT_KEYS`): every tenant's snapshot is sealed to a key of its
/// own; after `forget-tenant`, another tenant of the same cycle restores row for row (read by
/// DuckDB 1.5) and the forgotten one is refused (exit 1), live data byte for byte unchanged.
pub fn tenant_keys(ctx: &mut Ctx) -> Result<()> {
    let dir = ctx.dir("tenant-keys")?;
    let env = ctx
        .s3_env_at("tenant-keys")
        .set("HITKEEP_BACKUP_TENANT_KEYS", "true");
    ctx.demo(&dir, &env, 20_000, 2)?;
    let fp = ctx.fingerprint(&dir)?;
    let out = ctx.hk(&dir, &env, &["backup", "run"])?;
    ensure!(
        out.ok(),
        "the backup with tenant keys failed: {}",
        out.brief()
    );
    let listed = ctx.snapshots(&dir, &env)?;
    let keyed: Vec<String> = listed
        .iter()
        .filter(|s| s["tenant_key"].is_string())
        .filter_map(|s| s["database"].as_str()?.strip_prefix("tenants/"))
        .map(str::to_owned)
        .collect();
    ctx.report.check(
        format!(
            "backup list --json: each of the {} tenant snapshots sealed to a tenant key, the shared one not",
            keyed.len()
        ),
        keyed.len() + 1 == listed.len() && keyed.len() >= 2,
        format!("{listed:?}"),
    );
    let (gone, kept) = match keyed.as_slice() {
        [gone, kept, ..] => (gone.clone(), kept.clone()),
        _ => return Ok(()),
    };
    let out = ctx.hk(&dir, &env, &["backup", "forget-tenant", &gone, "--yes"])?;
    let listed = ctx.snapshots(&dir, &env)?;
    let forgotten = |s: &Value| s["forgotten"] == true;
    ctx.report.check(
        "backup forget-tenant --yes deletes the tenant's key file; list marks its snapshot forgotten",
        out.ok()
            && out.stdout.contains("deleted 1 key file")
            && listed.iter().filter(|s| forgotten(s)).count() == 1,
        out.brief(),
    );

    let from = ctx.s3.url("tenant-keys/backups");
    let region = ctx.s3.region.clone();
    let restore = |ctx: &mut Ctx, tenant: &str| {
        let args = [
            "recover",
            "restore-backup",
            "-from",
            &from,
            "-tenant",
            tenant,
            "-s3-region",
            &region,
            "-yes",
        ];
        ctx.hk(&dir, &env, &args)
    };
    std::fs::remove_file(dir.join("data/tenants").join(&kept).join("hitkeep.db"))?;
    let out = restore(ctx, &kept)?;
    let got = ctx.fingerprint(&dir)?;
    ctx.report.check(
        "restore -tenant of another tenant of the same cycle: every row equal",
        out.ok() && got == fp,
        format!("{}\n{}", out.brief(), diff(&got, &fp)),
    );
    let live = tree(&dir)?;
    let out = restore(ctx, &gone)?;
    ctx.report.check(
        "restore -tenant of the forgotten tenant: exit 1 saying it was forgotten, live data byte for byte as it was",
        out.code == Some(1) && out.stderr.contains("forgotten") && tree(&dir)? == live,
        out.brief(),
    );
    Ok(())
}

/// The archive scenario with recipients set (run, query, restore, a second run, balances read by
/// DuckDB 1.5), then every archive object downloaded: each Parquet file is an age file and none holds
/// the demo's row values.
pub fn archives(ctx: &mut Ctx) -> Result<()> {
    super::scenarios::archives(ctx)?;
    let local = ctx.dir("archives-scan")?;
    ctx.rclone
        .copy(&local, &ctx.s3.key("archives/archive"), false, &[])?;
    let mut files = Vec::new();
    for path in entries(&local)?.into_iter().filter(|p| p.is_file()) {
        let shown = path.strip_prefix(&local)?.to_string_lossy().into_owned();
        files.push((shown, std::fs::read(&path)?));
    }
    let parquet: Vec<_> = files
        .iter()
        .filter(|(n, _)| n.ends_with(".parquet"))
        .collect();
    let open: Vec<&str> = parquet
        .iter()
        .filter(|(_, b)| !b.starts_with(AGE_HEADER) || b.windows(MARKER.len()).any(|w| w == MARKER))
        .map(|(n, _)| n.as_str())
        .collect();
    ctx.report.check(
        format!(
            "all {} archive files in the bucket are age files holding none of the demo's {:?}",
            parquet.len(),
            String::from_utf8_lossy(MARKER)
        ),
        !parquet.is_empty() && open.is_empty(),
        format!("not sealed: {open:?}"),
    );
    Ok(())
}
