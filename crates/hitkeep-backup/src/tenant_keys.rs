//! Keys of a tenant's own (issue 20, step 3): with them, a tenant's snapshots are sealed to that
//! tenant's key pair alone, whose private key the location keeps wrapped to the operator's
//! recipients in a small key file, `keys/tenants/{uuid}/{key id}.json`. Deleting the key files
//! ([`plan_forget`], [`forget`]) makes every snapshot sealed to them unreadable to everyone, while
//! every other database's snapshots stay as they were: no object is shared between databases in
//! encrypted snapshots (format 4's pool names objects by their own ciphertext).
//!
//! The host encrypts only to a tenant key it made and recorded itself (`{data}/.hitkeep-tenant-keys`),
//! never to one read from the location: whoever can write to the bucket could otherwise swap in a
//! key of their own and read every later snapshot of that tenant. When its recorded key's file is
//! gone from the location (forgotten, or removed), the host makes a new key and says so: sealing to
//! a key whose private half is gone would write snapshots nobody can restore.
//!
//! What it does not do: erase anything but the key files. Plaintext that left hitkeep (restores,
//! `export-plain` folders), the live database, snapshots of the tenant not sealed to a key of its
//! own (written before tenant keys were turned on), copies of a key file, older versions a
//! versioned bucket keeps, and metadata (the tenant's UUID in object names, sizes, times) remain.

use std::borrow::Cow;
use std::io;
use std::path::Path;

use age::x25519::Identity;
use hitkeep_storage::{Sha256Digest, Storage};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::manifest::{Database, Manifest};
use crate::snapshot_id::SnapshotId;
use hitkeep_seal::{OpenFailure, Opener, Sealer};

/// The folder of the tenants' key files in a backup location.
pub const TENANT_KEYS_FOLDER: &str = "keys/tenants";
/// [`KeyFile::format`].
const KEY_FORMAT: &str = "hitkeep-tenant-key";
/// [`Tombstone::format`].
const TOMBSTONE_FORMAT: &str = "hitkeep-forgotten-tenant";
/// The tombstone's name in a tenant's key folder.
const TOMBSTONE_NAME: &str = "forgotten.json";

/// A tenant's key file: its public key in the clear (what the operator sees), its private key
/// sealed to the operator's recipients.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: String,
    format_version: u32,
    tenant_id: Uuid,
    /// The tenant's `age1…` public key.
    recipient: String,
    created_at: Timestamp,
    /// The operator's recipients the private key is sealed to.
    wrapped_to: Vec<String>,
    /// The private key (an age identity line), sealed to `wrapped_to`, as base64.
    identity: String,
}

/// What [`forget`] leaves in the tenant's key folder: that its keys were forgotten, and when. It
/// tells a forgotten key from one that went missing.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tombstone {
    format: String,
    format_version: u32,
    tenant_id: Uuid,
    /// The key files deleted, each with when.
    forgotten: Vec<ForgottenKey>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForgottenKey {
    object: String,
    at: Timestamp,
}

/// The key file of `tenant`'s key `recipient`: named by the first 16 hex digits of the SHA-256 of
/// the public key, so a tenant may hold several (a new one after a forget, or per host).
pub fn key_object(tenant: Uuid, recipient: &str) -> String {
    let id = Sha256Digest::of(recipient.as_bytes()).to_string();
    format!("{TENANT_KEYS_FOLDER}/{tenant}/{}.json", &id[..16])
}

fn tombstone_object(tenant: Uuid) -> String {
    format!("{TENANT_KEYS_FOLDER}/{tenant}/{TOMBSTONE_NAME}")
}

/// The sealer of `tenant`'s snapshots: to its own key, recorded in `dir`, whose key file is in the
/// location; a new key (key file written first, then recorded) when there is none or its file is
/// gone. The key file is sealed to `operator`'s recipients.
pub(crate) async fn tenant_sealer(
    storage: &Storage,
    dir: &Path,
    tenant: Uuid,
    operator: &Sealer,
) -> Result<Sealer> {
    let record = dir.join(tenant.to_string());
    if let Some(recipient) = read_record(&record)? {
        let object = key_object(tenant, &recipient);
        if let Some(file) = live_key_file(storage, tenant, &object).await? {
            let (mut theirs, mut ours) = (file.wrapped_to, operator.recipients());
            theirs.sort();
            ours.sort();
            if theirs != ours {
                tracing::warn!(%tenant, object, "the tenant's key file is sealed to other recipients than HITKEEP_BACKUP_RECIPIENTS: run `hitkeep backup rewrap` so that the new identity opens this tenant's snapshots and the old one no longer does");
            }
            return sealer_of(&recipient, object);
        }
        tracing::warn!(%tenant, object, "the tenant's key file is gone from the backup location or named by its tombstone (forgotten with `hitkeep backup forget-tenant`, or removed): a new key is made; snapshots sealed to the old one stay unreadable");
        std::fs::remove_file(&record).map_err(|e| Error::io(&record, e))?;
    }
    let identity = Identity::generate();
    let recipient = identity.to_public().to_string();
    let object = key_object(tenant, &recipient);
    let file = KeyFile::wrap(tenant, &identity, operator)?;
    storage.write(&object, file.to_bytes()).await?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    match write_record(&record, &recipient) {
        Ok(()) => {
            tracing::info!(%tenant, object, "a new key for the tenant's snapshots");
            sealer_of(&recipient, object)
        }
        // A cycle of another process on the same data recorded one first: its key is the one.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let _ = storage.delete(&object).await;
            let recipient = read_record(&record)?
                .ok_or_else(|| Error::Internal(format!("{} vanished", record.display())))?;
            let object = key_object(tenant, &recipient);
            sealer_of(&recipient, object)
        }
        Err(e) => Err(Error::io(&record, e)),
    }
}

/// The key file `object` of `tenant`, when it is there and no tombstone names it (a forget that
/// stopped before deleting it still forgot it).
async fn live_key_file(storage: &Storage, tenant: Uuid, object: &str) -> Result<Option<KeyFile>> {
    if storage.stat(object).await?.is_none() || tombstoned(storage, tenant, object).await? {
        return Ok(None);
    }
    read_key_file(storage, object).await.map(Some)
}

/// Whether `tenant`'s tombstone names the key file `object`.
async fn tombstoned(storage: &Storage, tenant: Uuid, object: &str) -> Result<bool> {
    Ok(read_tombstone(storage, tenant)
        .await?
        .is_some_and(|t| t.forgotten.iter().any(|k| k.object == object)))
}

fn sealer_of(recipient: &str, object: String) -> Result<Sealer> {
    Sealer::for_tenant(recipient, object)
        .map_err(|why| Error::Internal(format!("a recorded tenant key: {why}")))
}

/// The recorded public key in `record`, if there is one.
fn read_record(record: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(record) {
        Ok(text) => {
            let recipient = text.trim().to_owned();
            match Sealer::new(std::slice::from_ref(&recipient)) {
                Ok(Some(_)) => Ok(Some(recipient)),
                _ => Err(Error::TenantKey {
                    object: record.display().to_string(),
                    why: "is not an age public key (age1…)".into(),
                    forgotten_at: None,
                }),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(record, e)),
    }
}

/// `recipient` written to the new file `record`, synced.
fn write_record(record: &Path, recipient: &str) -> io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create_new(record)?;
    let written = file
        .write_all(format!("{recipient}\n").as_bytes())
        .and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = std::fs::remove_file(record);
    }
    written
}

impl KeyFile {
    fn wrap(tenant: Uuid, identity: &Identity, operator: &Sealer) -> Result<KeyFile> {
        use age::secrecy::ExposeSecret as _;
        let secret = identity.to_string();
        let sealed = operator
            .seal_bytes(secret.expose_secret().as_bytes())
            .map_err(|e| Error::Internal(format!("sealing a tenant key: {e}")))?;
        Ok(KeyFile {
            format: KEY_FORMAT.to_owned(),
            format_version: 1,
            tenant_id: tenant,
            recipient: identity.to_public().to_string(),
            created_at: Timestamp::now(),
            wrapped_to: operator.recipients(),
            identity: base64_simd::STANDARD.encode_to_string(&sealed),
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("key files always serialise");
        bytes.push(b'\n');
        bytes
    }
}

/// What opens `manifest`'s objects: `opener` itself, or for a snapshot sealed to a tenant key,
/// that key, unwrapped with `opener` from its key file. Fails, naming the key file, when the key
/// was forgotten, is missing or damaged, or does not open with `opener`.
pub(crate) async fn opener_for<'a>(
    storage: &Storage,
    manifest: &Manifest,
    opener: Option<&'a Opener>,
) -> Result<Option<Cow<'a, Opener>>> {
    let Some(object) = manifest
        .encryption
        .as_ref()
        .and_then(|e| e.tenant_key.as_deref())
    else {
        return Ok(opener.map(Cow::Borrowed));
    };
    let refuse = |why: &str| Error::TenantKey {
        object: storage.describe(object),
        why: why.to_owned(),
        forgotten_at: None,
    };
    let (Database::Tenant { tenant_id }, [recipient]) = (
        manifest.database,
        manifest
            .encryption
            .as_ref()
            .map_or(&[][..], |e| &e.recipients[..]),
    ) else {
        return Err(refuse(
            "is named by a snapshot that is not a tenant's, or that has more than one recipient",
        ));
    };
    if key_object(tenant_id, recipient) != object {
        return Err(refuse("is not the key file of the snapshot's recipient"));
    }
    // The tombstone is the record of a forget: a copy of the key file back in place (a rewrap that
    // raced the forget and stopped, a bucket restored from elsewhere) opens nothing.
    if storage.stat(object).await?.is_none() || tombstoned(storage, tenant_id, object).await? {
        return Err(gone(storage, tenant_id, object).await);
    }
    let file = read_key_file(storage, object).await?;
    if file.tenant_id != tenant_id || file.recipient != *recipient {
        return Err(refuse("holds another tenant's or another key's record"));
    }
    let opener = opener.ok_or_else(|| Error::NotOpened {
        object: storage.describe(object),
        failure: OpenFailure::NoIdentity,
        recipients: file.wrapped_to.clone(),
    })?;
    let identity = unwrap_key(storage, object, &file, opener)?;
    Ok(Some(Cow::Owned(Opener::new(vec![identity]))))
}

/// The tenant key in `file` (the key file `object`), unwrapped with `opener`.
fn unwrap_key(
    storage: &Storage,
    object: &str,
    file: &KeyFile,
    opener: &Opener,
) -> Result<Identity> {
    let refuse = |why: &str| Error::TenantKey {
        object: storage.describe(object),
        why: why.to_owned(),
        forgotten_at: None,
    };
    let wrapped = base64_simd::STANDARD
        .decode_to_vec(&file.identity)
        .map_err(|_| refuse("holds a private key that is not base64"))?;
    use age::secrecy::ExposeSecret as _;
    // Wiped when dropped: the private key is in the clear here.
    let secret: age::secrecy::SecretSlice<u8> = opener
        .open_bytes(&wrapped)
        .map_err(|failure| Error::NotOpened {
            object: storage.describe(object),
            failure,
            recipients: file.wrapped_to.clone(),
        })?
        .into();
    std::str::from_utf8(secret.expose_secret())
        .ok()
        .and_then(|s| s.trim().parse::<Identity>().ok())
        .filter(|i| i.to_public().to_string() == file.recipient)
        .ok_or_else(|| refuse("holds a private key that is not its recipient's"))
}

/// The key file `object`, read and checked to be one.
async fn read_key_file(storage: &Storage, object: &str) -> Result<KeyFile> {
    let bytes = storage.read(object).await?;
    let refuse = |why: String| Error::TenantKey {
        object: storage.describe(object),
        why,
        forgotten_at: None,
    };
    let file: KeyFile =
        serde_json::from_slice(&bytes).map_err(|e| refuse(format!("is not a key file ({e})")))?;
    if file.format != KEY_FORMAT || file.format_version != 1 {
        return Err(refuse(
            "is of a key file format this hitkeep does not read; upgrade hitkeep".into(),
        ));
    }
    // Forgets and their tombstones go by the folder: a file naming another tenant is not one of ours.
    let folder = object
        .strip_prefix(TENANT_KEYS_FOLDER)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|rest| rest.split('/').next());
    if folder != Some(file.tenant_id.to_string().as_str()) {
        return Err(refuse(format!(
            "names tenant {} but is not in that tenant's folder ({TENANT_KEYS_FOLDER}/{}/); hitkeep never writes one so: it may have been moved or tampered with",
            file.tenant_id, file.tenant_id
        )));
    }
    Ok(file)
}

/// For [`crate::verify_snapshot`]: `Ok` when `manifest` names no tenant key or its key file is there;
/// otherwise the error a restore would give (forgotten, or missing).
pub(crate) async fn check_key_file(storage: &Storage, manifest: &Manifest) -> Result<()> {
    let Some(object) = manifest
        .encryption
        .as_ref()
        .and_then(|e| e.tenant_key.as_deref())
    else {
        return Ok(());
    };
    let Database::Tenant { tenant_id } = manifest.database else {
        return Ok(()); // a restore refuses it, naming why
    };
    match storage.stat(object).await? {
        Some(_) if !tombstoned(storage, tenant_id, object).await? => Ok(()),
        _ => Err(gone(storage, tenant_id, object).await),
    }
}

/// The error for a key file that is not there: forgotten (its tombstone says when) or missing.
async fn gone(storage: &Storage, tenant: Uuid, object: &str) -> Error {
    let forgotten_at = read_tombstone(storage, tenant)
        .await
        .ok()
        .flatten()
        .and_then(|t| t.forgotten.into_iter().find(|k| k.object == object))
        .map(|k| k.at);
    Error::TenantKey {
        object: storage.describe(object),
        why: match forgotten_at {
            Some(_) => "was deleted by `hitkeep backup forget-tenant`".into(),
            None => "is missing".into(),
        },
        forgotten_at,
    }
}

async fn read_tombstone(storage: &Storage, tenant: Uuid) -> Result<Option<Tombstone>> {
    let object = tombstone_object(tenant);
    if storage.stat(&object).await?.is_none() {
        return Ok(None);
    }
    let bytes = storage.read(&object).await?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::TenantKey {
            object: storage.describe(&object),
            why: format!("is not a tombstone hitkeep wrote ({e})"),
            forgotten_at: None,
        })
}

/// The key files forgotten in this location, from the tombstones [`forget`] leaves: `backup list`
/// marks the snapshots sealed to them. One listing of the key folder, and a read per tombstone.
pub async fn forgotten_keys(storage: &Storage) -> Result<std::collections::BTreeSet<String>> {
    let listed = storage
        .list(TENANT_KEYS_FOLDER, hitkeep_storage::ListMode::Recursive)
        .await?;
    let mut forgotten = std::collections::BTreeSet::new();
    for entry in listed {
        let Some(tenant) = entry
            .key
            .strip_suffix(&format!("/{TOMBSTONE_NAME}"))
            .and_then(|k| k.rsplit('/').next())
            .and_then(|t| t.parse::<Uuid>().ok())
        else {
            continue;
        };
        // One damaged tombstone must not stop a listing: it is said, and its snapshots shown as
        // they are (a restore of them still reads it, and fails naming it).
        match read_tombstone(storage, tenant).await {
            Ok(Some(tombstone)) => {
                forgotten.extend(tombstone.forgotten.into_iter().map(|k| k.object));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(%tenant, error = %e, "a tenant's tombstone cannot be read"),
        }
    }
    Ok(forgotten)
}

/// What [`forget`] would do for one tenant: which key files it deletes, and which of the tenant's
/// snapshots that makes unreadable and which it leaves readable.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ForgetPlan {
    /// The tenant.
    pub tenant: Uuid,
    /// The key files to delete (object keys).
    pub keys: Vec<String>,
    /// The tenant's snapshots sealed to one of those keys: unreadable afterwards.
    pub unreadable: Vec<SnapshotId>,
    /// The tenant's snapshots not sealed to a key of its own (plain, or sealed to the operator's
    /// recipients): the forget leaves them readable; prune or delete them to erase them.
    pub readable: Vec<SnapshotId>,
    /// The tenant's snapshots whose key was forgotten before.
    pub forgotten_before: Vec<SnapshotId>,
}

impl ForgetPlan {
    /// Whether it deletes nothing.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What forgetting `tenant` would delete and what it would leave, from the location's key files
/// and `catalog`'s snapshots.
pub async fn plan_forget(storage: &Storage, catalog: &Catalog, tenant: Uuid) -> Result<ForgetPlan> {
    let folder = format!("{TENANT_KEYS_FOLDER}/{tenant}");
    let tombstone = tombstone_object(tenant);
    let keys: Vec<String> = storage
        .list(&folder, hitkeep_storage::ListMode::Recursive)
        .await?
        .into_iter()
        .filter(|e| !e.is_dir && e.key.ends_with(".json") && e.key != tombstone)
        .map(|e| e.key)
        .collect();
    let mut plan = ForgetPlan {
        tenant,
        keys,
        unreadable: Vec::new(),
        readable: Vec::new(),
        forgotten_before: Vec::new(),
    };
    for snapshot in catalog.snapshots(Database::Tenant { tenant_id: tenant }) {
        let key = snapshot
            .manifest
            .as_ref()
            .and_then(|m| m.encryption.as_ref())
            .and_then(|e| e.tenant_key.as_ref());
        match key {
            Some(k) if plan.keys.contains(k) => plan.unreadable.push(snapshot.id),
            Some(_) => plan.forgotten_before.push(snapshot.id),
            None => plan.readable.push(snapshot.id),
        }
    }
    Ok(plan)
}

/// Deletes the key files `plan` names, each with every version a versioned bucket keeps of it,
/// after recording them in the tenant's tombstone, and confirms with a fresh look that no version
/// is left. Returns how many key files were deleted.
pub async fn forget(storage: &Storage, plan: &ForgetPlan) -> Result<usize> {
    let tenant = plan.tenant;
    let mut tombstone = read_tombstone(storage, tenant).await?.unwrap_or(Tombstone {
        format: TOMBSTONE_FORMAT.to_owned(),
        format_version: 1,
        tenant_id: tenant,
        forgotten: Vec::new(),
    });
    let at = Timestamp::now();
    for object in &plan.keys {
        tombstone.forgotten.push(ForgottenKey {
            object: object.clone(),
            at,
        });
    }
    let mut bytes = serde_json::to_vec_pretty(&tombstone).expect("tombstones always serialise");
    bytes.push(b'\n');
    // Written first: a forget stopped half-way leaves keys a tombstone names, which a second run
    // deletes, never a key gone without a word of why.
    storage.write(&tombstone_object(tenant), bytes).await?;
    // Every version: on a versioned bucket (every locked one) a plain delete leaves the key's bytes
    // behind a delete marker, readable to anyone with the bucket's keys and the operator's identity.
    let mut versions = 0;
    for object in &plan.keys {
        versions += storage.erase(object).await?;
    }
    for object in &plan.keys {
        // Once more before failing: a rewrap that checked before the tombstone may write the key
        // after the erase above (and erases it again itself once it sees the tombstone).
        if storage.any_version(object).await? {
            versions += storage.erase(object).await?;
        }
        if storage.any_version(object).await? {
            return Err(Error::TenantKey {
                object: storage.describe(object),
                why: "is still there, or a version of it, after it was deleted".into(),
                forgotten_at: None,
            });
        }
    }
    tracing::warn!(%tenant, keys = plan.keys.len(), versions, snapshots = plan.unreadable.len(), "tenant forgotten: its key files are deleted with every version a versioned bucket kept, and the snapshots sealed to them can no longer be opened by anyone");
    Ok(plan.keys.len())
}

/// One key file [`rewrap`] rewrites.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Rewrap {
    /// The key file.
    pub object: String,
    /// Its tenant.
    pub tenant: Uuid,
    /// The recipients it is sealed to now.
    pub from: Vec<String>,
    /// Its new content: the same key, sealed to the new recipients. Holds no plaintext secret.
    content: Vec<u8>,
}

/// What [`rewrap`] would do: every tenant key file sealed to the new recipients, each already
/// opened (so a key file the identity does not open stops the plan, before anything is written).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RewrapPlan {
    /// The new recipients.
    pub to: Vec<String>,
    /// The key files to rewrite.
    pub keys: Vec<Rewrap>,
    /// Key files already sealed to exactly the new recipients.
    pub unchanged: usize,
}

/// Plans sealing every tenant key file in the location to `sealer`'s recipients: each is opened
/// with `opener` now, and resealed in memory.
pub async fn plan_rewrap(
    storage: &Storage,
    opener: &Opener,
    sealer: &Sealer,
) -> Result<RewrapPlan> {
    let mut to = sealer.recipients();
    to.sort();
    let listed = storage
        .list(TENANT_KEYS_FOLDER, hitkeep_storage::ListMode::Recursive)
        .await?;
    let mut plan = RewrapPlan {
        to: sealer.recipients(),
        keys: Vec::new(),
        unchanged: 0,
    };
    let objects = listed
        .into_iter()
        .filter(|e| !e.is_dir && e.key.ends_with(".json"))
        .filter(|e| !e.key.ends_with(&format!("/{TOMBSTONE_NAME}")));
    for entry in objects {
        let file = read_key_file(storage, &entry.key).await?;
        let mut from = file.wrapped_to.clone();
        from.sort();
        if from == to {
            plan.unchanged += 1;
            continue;
        }
        let identity = unwrap_key(storage, &entry.key, &file, opener)?;
        let resealed = KeyFile {
            created_at: file.created_at,
            ..KeyFile::wrap(file.tenant_id, &identity, sealer)?
        };
        plan.keys.push(Rewrap {
            object: entry.key,
            tenant: file.tenant_id,
            from: file.wrapped_to,
            content: resealed.to_bytes(),
        });
    }
    Ok(plan)
}

/// Writes one key file, read back and compared; `false` when its tenant was forgotten meanwhile
/// (nothing of it is left then).
async fn rewrap_one(storage: &Storage, key: &Rewrap) -> Result<bool> {
    // A forget since the plan: writing the key again would undo it. A key file that is there and
    // tombstoned is a forget left unfinished: finished. (A rewrap stopped between its write and its
    // check below leaves a key already sealed to the new recipients, which the next plan counts as
    // unchanged; `forget-tenant` again erases it, as its plan lists the tenant's whole folder.)
    if tombstoned(storage, key.tenant, &key.object).await? {
        if storage.any_version(&key.object).await? {
            erase_forgotten(storage, key).await?;
        } else {
            tracing::warn!(object = key.object, tenant = %key.tenant, "the key file was forgotten since the plan: not written again");
        }
        return Ok(false);
    }
    if storage.stat(&key.object).await?.is_none() {
        tracing::warn!(object = key.object, tenant = %key.tenant, "the key file was removed since the plan: not written again");
        return Ok(false);
    }
    storage.write(&key.object, key.content.clone()).await?;
    let back = storage.read(&key.object).await;
    // After the read-back: a forget that erased the key before it is not a failed read. A failure
    // here leaves the key written and perhaps forgotten: said so, since a rerun finishes the forget.
    let kept = undo_if_forgotten(storage, key).await.map_err(|e| match e {
        e @ Error::TenantKey { .. } => e,
        e => Error::TenantKey {
            object: storage.describe(&key.object),
            why: format!("was written, but whether its tenant was forgotten meanwhile could not be checked ({e}); if tenant {} was being forgotten, run `hitkeep backup forget-tenant {}` again, which erases every key file of its folder", key.tenant, key.tenant),
            forgotten_at: None,
        },
    })?;
    if !kept {
        return Ok(false);
    }
    if back?.as_ref() != key.content.as_slice() {
        return Err(Error::TenantKey {
            object: storage.describe(&key.object),
            why: "does not read back as written".into(),
            forgotten_at: None,
        });
    }
    Ok(true)
}

/// The check before the write leaves a window: a forget (another operator, another host) may
/// tombstone and erase the key between that check and the write, which would bring the key back
/// after the forget reported it gone. A forget writes its tombstone before its first erase, so a
/// write it can have missed finds the tombstone here, and is erased as the forget would; a forget
/// whose tombstone comes later erases the write itself. `true` when the key stays written.
async fn undo_if_forgotten(storage: &Storage, key: &Rewrap) -> Result<bool> {
    if !tombstoned(storage, key.tenant, &key.object).await? {
        return Ok(true);
    }
    erase_forgotten(storage, key).await?;
    Ok(false)
}

/// Erases every version of a key file its tenant's tombstone names, as the forget does.
async fn erase_forgotten(storage: &Storage, key: &Rewrap) -> Result<()> {
    let failed = match storage.erase(&key.object).await {
        Ok(_) => {
            (storage.any_version(&key.object).await?).then(|| "a version is still there".to_owned())
        }
        Err(e) => Some(e.to_string()),
    };
    if let Some(failed) = failed {
        return Err(Error::TenantKey {
            object: storage.describe(&key.object),
            why: format!(
                "was forgotten, and erasing it again failed ({failed}; a bucket's default retention holds a version a rewrap wrote until its retain-until date); run `hitkeep backup forget-tenant {}` again, with a key that may delete object versions (s3:DeleteObjectVersion)",
                key.tenant
            ),
            forgotten_at: None,
        });
    }
    tracing::warn!(object = key.object, tenant = %key.tenant, "the key file was forgotten while it was rewrapped, or a forget was left unfinished: erased, as the forget does");
    Ok(())
}

/// Writes the key files `plan` holds, each read back and compared, leaving none that a forget
/// running beside it deleted ([`undo_if_forgotten`]). Returns how many.
pub async fn rewrap(storage: &Storage, plan: &RewrapPlan) -> Result<usize> {
    let mut written = 0;
    for key in &plan.keys {
        if rewrap_one(storage, key).await? {
            written += 1;
        }
    }
    tracing::info!(keys = written, to = ?plan.to, "tenant key files sealed to the new recipients");
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rewrap whose check passed before a forget (another operator, another host) tombstoned and
    /// erased the key, and whose write landed after that erase: the key must not come back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rewrap_racing_a_forget_leaves_no_key_behind() {
        let server = hitkeep_testkit::S3Server::start().await.unwrap();
        let storage = server.storage("backups").await;
        let tenant = Uuid::from_u128(7);
        let key = |name: &str| Rewrap {
            object: format!("{TENANT_KEYS_FOLDER}/{tenant}/{name}.json"),
            tenant,
            from: Vec::new(),
            content: format!("{name} resealed").into_bytes(),
        };
        let (raced, kept) = (key("raced"), key("kept"));
        for k in [&raced, &kept] {
            storage
                .write(&k.object, &b"sealed to the old recipients"[..])
                .await
                .unwrap();
        }

        // No forget: the key is rewritten and stays.
        assert!(rewrap_one(&storage, &kept).await.unwrap());
        assert_eq!(
            storage.read(&kept.object).await.unwrap().as_ref(),
            kept.content.as_slice()
        );

        // The forget runs to its end between the rewrap's check and its write.
        let plan = ForgetPlan {
            tenant,
            keys: vec![raced.object.clone()],
            unreadable: Vec::new(),
            readable: Vec::new(),
            forgotten_before: Vec::new(),
        };
        assert_eq!(forget(&storage, &plan).await.unwrap(), 1);
        storage
            .write(&raced.object, raced.content.clone())
            .await
            .unwrap();
        assert!(!undo_if_forgotten(&storage, &raced).await.unwrap());
        assert!(
            !storage.any_version(&raced.object).await.unwrap(),
            "the forgotten key stays gone"
        );
        // The other key file of the same tenant is no concern of that forget.
        assert!(undo_if_forgotten(&storage, &kept).await.unwrap());
        assert!(storage.any_version(&kept.object).await.unwrap());

        // A rewrap that starts after the forget writes nothing.
        assert!(!rewrap_one(&storage, &raced).await.unwrap());
        assert!(!storage.any_version(&raced.object).await.unwrap());

        // A rewrap that stopped after its write, before it saw the tombstone: the next one erases.
        storage
            .write(&raced.object, raced.content.clone())
            .await
            .unwrap();
        assert!(!rewrap_one(&storage, &raced).await.unwrap());
        assert!(!storage.any_version(&raced.object).await.unwrap());
    }

    /// A key file is its folder's tenant's: forgets and tombstones go by the folder, so a file naming
    /// another tenant is refused, not opened.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_file_in_another_tenants_folder_is_refused() {
        let server = hitkeep_testkit::S3Server::start().await.unwrap();
        let storage = server.storage("backups").await;
        let operator = Identity::generate();
        let sealer = Sealer::new(&[operator.to_public().to_string()])
            .unwrap()
            .unwrap();
        let (owner, elsewhere) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let file = KeyFile::wrap(owner, &Identity::generate(), &sealer).unwrap();
        let right = key_object(owner, &file.recipient);
        storage.write(&right, file.to_bytes()).await.unwrap();
        assert!(read_key_file(&storage, &right).await.is_ok());

        let moved = key_object(elsewhere, &file.recipient);
        storage.write(&moved, file.to_bytes()).await.unwrap();
        let err = read_key_file(&storage, &moved).await.unwrap_err();
        assert!(
            matches!(&err, Error::TenantKey { why, .. } if why.contains("not in that tenant's folder")),
            "{err}"
        );
    }
}
