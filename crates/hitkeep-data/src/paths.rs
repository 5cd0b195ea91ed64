//! The local files HitKeep's jobs keep beside the data, named once here so no other crate joins a
//! path by hand (two crates that disagree on a name is how one job wipes another's files).

use std::path::PathBuf;

use uuid::Uuid;

use crate::DataLayout;

/// `{data}/.hitkeep-backup.lock`: held by a backup cycle, a prune and a restore of snapshots.
pub const BACKUP_LOCK_FILE: &str = ".hitkeep-backup.lock";
/// `{data}/.hitkeep-backup-status.json`: the last results of the backup jobs.
pub const STATUS_FILE: &str = ".hitkeep-backup-status.json";
/// `{data}/.hitkeep-archive-cache`: archive files downloaded for `archive query`.
pub const ARCHIVE_CACHE_DIR: &str = ".hitkeep-archive-cache";

impl DataLayout {
    /// The lock that keeps backup cycles (and prunes) on this data from overlapping.
    pub fn backup_lock_file(&self) -> PathBuf {
        self.data_path.join(BACKUP_LOCK_FILE)
    }

    /// Where the backup jobs' status is kept between runs.
    pub fn status_file(&self) -> PathBuf {
        self.data_path.join(STATUS_FILE)
    }

    /// Where archive files are cached for queries.
    pub fn archive_cache_dir(&self) -> PathBuf {
        self.data_path.join(ARCHIVE_CACHE_DIR)
    }

    /// `{data}/tenants`, the folder of the tenant databases.
    pub fn tenants_dir(&self) -> PathBuf {
        self.data_path.join("tenants")
    }

    /// The tenant database files present on disk, by tenant, sorted; folders that are not a tenant
    /// id are ignored. A missing `tenants` folder is no tenants.
    pub fn tenant_files(&self) -> std::io::Result<Vec<(Uuid, PathBuf)>> {
        let entries = match std::fs::read_dir(self.tenants_dir()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| Uuid::parse_str(n).ok())
            else {
                continue;
            };
            let path = self.tenant_db(id);
            if path.is_file() {
                files.push((id, path));
            }
        }
        files.sort();
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_files_lists_only_tenant_databases() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DataLayout::new(dir.path().join("hitkeep.db"), dir.path().join("data"));
        assert!(layout.tenant_files().unwrap().is_empty());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        for id in [a, b] {
            std::fs::create_dir_all(layout.tenant_db(id).parent().unwrap()).unwrap();
        }
        std::fs::write(layout.tenant_db(a), b"x").unwrap();
        std::fs::create_dir_all(layout.tenants_dir().join("not-a-tenant")).unwrap();
        assert_eq!(
            layout.tenant_files().unwrap(),
            vec![(a, layout.tenant_db(a))]
        );
        assert_eq!(
            layout.status_file(),
            dir.path().join("data/.hitkeep-backup-status.json")
        );
    }
}
