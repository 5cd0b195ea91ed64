//! The HitKeep server's own settings. The server shares the `HITKEEP_*` environment and its YAML file with
//! us, so its names are normal there even when we do not use them, and never an error or a warning.

/// Every variable in HitKeep's configuration catalogue, ours included, cloud-only ones too: the `env` tags of
/// `Config` in HitKeep's `config/config.go` @ `6f2f125` (PascaleBeier/hitkeep), the catalogue behind
/// `hitkeep.example.yaml` @ `23aa949`; §6 of our HitKeep 2.13 reference lists the data and backup ones.
/// Keep it in step when HitKeep adds settings: a new HitKeep key in a shared YAML file is an error until then.
const SERVER_ENV: &[&str] = &[
    // General, server and clustering.
    "HITKEEP_HTTP_ADDR",
    "HITKEEP_PUBLIC_URL",
    "HITKEEP_LOG_LEVEL",
    "HITKEEP_JWT_SECRET",
    "HITKEEP_TRUSTED_PROXIES",
    "HITKEEP_AUTH_REMEMBER_ME_DAYS",
    "HITKEEP_AUTH_SESSION_MINUTES",
    "HITKEEP_AUTH_SESSION_WARNING_SECONDS",
    "HITKEEP_BIND_ADDR",
    "HITKEEP_JOIN_ADDR",
    "HITKEEP_NODE_NAME",
    "HITKEEP_NSQ_TCP_ADDRESS",
    "HITKEEP_NSQ_HTTP_ADDRESS",
    // Data.
    "HITKEEP_DB_PATH",
    "HITKEEP_DATA_PATH",
    "HITKEEP_ARCHIVE_PATH",
    "HITKEEP_DATA_RETENTION_DAYS",
    "HITKEEP_DUCKDB_MEMORY_LIMIT",
    "HITKEEP_DUCKDB_THREADS",
    "HITKEEP_DB_COMPACT_ON_START",
    "HITKEEP_DB_AUTO_RECOVER",
    "HITKEEP_DB_AUTO_RECOVER_WAL",
    "HITKEEP_DB_CHECKPOINT_INTERVAL",
    "HITKEEP_DB_RECOVERY_PATH",
    "HITKEEP_IMPORT_MAX_STAGE_BYTES",
    "HITKEEP_IMPORT_STAGE_RETENTION_DAYS",
    "HITKEEP_API_URL",
    "HITKEEP_API_TOKEN",
    // Backups and S3.
    "HITKEEP_BACKUP_PATH",
    "HITKEEP_BACKUP_INTERVAL",
    "HITKEEP_BACKUP_RETENTION",
    "HITKEEP_S3_ACCESS_KEY_ID",
    "HITKEEP_S3_SECRET_ACCESS_KEY",
    "HITKEEP_S3_SESSION_TOKEN",
    "HITKEEP_S3_REGION",
    "HITKEEP_S3_ENDPOINT",
    "HITKEEP_S3_URL_STYLE",
    "HITKEEP_S3_USE_SSL",
    // Rate limits.
    "HITKEEP_INGEST_RATE_LIMIT",
    "HITKEEP_API_RATE_LIMIT",
    "HITKEEP_AUTH_RATE_LIMIT",
    "HITKEEP_WEBHOOK_RATE_LIMIT",
    "HITKEEP_API_BURST",
    "HITKEEP_AUTH_BURST",
    "HITKEEP_INGEST_BURST",
    "HITKEEP_WEBHOOK_BURST",
    // Social sign-in.
    "HITKEEP_SOCIAL_GOOGLE_CLIENT_ID",
    "HITKEEP_SOCIAL_GOOGLE_CLIENT_SECRET",
    "HITKEEP_SOCIAL_GITHUB_CLIENT_ID",
    "HITKEEP_SOCIAL_GITHUB_CLIENT_SECRET",
    "HITKEEP_SOCIAL_MICROSOFT_CLIENT_ID",
    "HITKEEP_SOCIAL_MICROSOFT_CLIENT_SECRET",
    "HITKEEP_SOCIAL_MICROSOFT_TENANT",
    "HITKEEP_SOCIAL_SIGNUP_ENABLED",
    // Email (SMTP).
    "HITKEEP_MAIL_DRIVER",
    "HITKEEP_MAIL_ENCRYPTION",
    "HITKEEP_MAIL_INSECURE_SKIP_VERIFY",
    "HITKEEP_MAIL_HOST",
    "HITKEEP_MAIL_PORT",
    "HITKEEP_MAIL_USERNAME",
    "HITKEEP_MAIL_PASSWORD",
    "HITKEEP_MAIL_FROM_ADDRESS",
    "HITKEEP_MAIL_FROM_NAME",
    // Spam filtering.
    "HITKEEP_SPAM_FILTER_AUTO_UPDATE",
    "HITKEEP_SPAM_FILTER_PATH",
    "HITKEEP_SPAM_FILTER_UPDATE_INTERVAL",
    // Webhooks.
    "HITKEEP_WEBHOOK_ALLOW_DEVELOPMENT_TARGETS",
    "HITKEEP_WEBHOOK_DELIVERY_TIMEOUT",
    "HITKEEP_WEBHOOK_DELIVERY_CONCURRENCY",
    "HITKEEP_WEBHOOK_PER_ENDPOINT_CONCURRENCY",
    "HITKEEP_WEBHOOK_MAX_ATTEMPTS",
    "HITKEEP_WEBHOOK_RETRY_BASE_SECONDS",
    "HITKEEP_WEBHOOK_RETRY_MAX_SECONDS",
    "HITKEEP_WEBHOOK_RETENTION_DAYS",
    "HITKEEP_WEBHOOK_SWEEP_SECONDS",
    // Google Search Console.
    "HITKEEP_GOOGLE_SEARCH_CONSOLE_CLIENT_ID",
    "HITKEEP_GOOGLE_SEARCH_CONSOLE_CLIENT_SECRET",
    "HITKEEP_GOOGLE_SEARCH_CONSOLE_REDIRECT_URL",
    // MCP.
    "HITKEEP_MCP_ENABLED",
    "HITKEEP_MCP_PATH",
    "HITKEEP_MCP_MAX_RANGE_DAYS",
    "HITKEEP_MCP_DOCS_ENABLED",
    "HITKEEP_MCP_DOCS_URL",
    "HITKEEP_MCP_DOCS_CACHE_MINUTES",
    // Custom tracking domains.
    "HITKEEP_CUSTOM_TRACKING_DNS_TARGET",
    "HITKEEP_CUSTOM_TRACKING_TLS_MODE",
    "HITKEEP_CADDY_TLS_ASK_TOKEN",
    // AI.
    "HITKEEP_AI_ENABLED",
    "HITKEEP_ASK_AI_ENABLED",
    "HITKEEP_AI_PROVIDER",
    "HITKEEP_AI_MODEL",
    "HITKEEP_AI_BASE_URL",
    "HITKEEP_AI_REGION",
    "HITKEEP_AI_API_KEY",
    "HITKEEP_AI_TIMEOUT_SECONDS",
    "HITKEEP_AI_REQUEST_LIMIT",
    "HITKEEP_AI_TOKEN_LIMIT",
    "HITKEEP_AI_BUDGET_WINDOW",
    // Managed cloud (cloud builds only; an open-source HitKeep rejects these keys in its YAML file).
    "HITKEEP_CLOUD_HOSTED",
    "HITKEEP_CLOUD_SIGNUP_ENABLED",
    "HITKEEP_CLOUD_JURISDICTION",
    "HITKEEP_CLOUD_REGION",
    "HITKEEP_CLOUD_UPGRADE_URL",
    "HITKEEP_CLOUD_SUPPORT_URL",
    "HITKEEP_CLOUD_PLAN_CODE",
    "HITKEEP_CLOUD_PLAN_NAME",
    "HITKEEP_CLOUD_MAX_TEAMS",
    "HITKEEP_CLOUD_MAX_SITES_PER_TEAM",
    "HITKEEP_CLOUD_MAX_RETENTION_DAYS",
    "HITKEEP_CLOUD_MAX_TEAM_MEMBERS",
    "HITKEEP_CLOUD_ALLOW_SSO",
    "HITKEEP_CLOUD_ALLOW_CUSTOM_BRANDING",
    "HITKEEP_CLOUD_CHECKOUT_SUCCESS_URL",
    "HITKEEP_CLOUD_CHECKOUT_CANCEL_URL",
    "HITKEEP_STRIPE_SECRET_KEY",
    "HITKEEP_STRIPE_PUBLISHABLE_KEY",
    "HITKEEP_STRIPE_WEBHOOK_SECRET",
    "HITKEEP_STRIPE_PORTAL_CONFIGURATION_ID",
    "HITKEEP_STRIPE_PRICE_PRO_MONTHLY",
    "HITKEEP_STRIPE_PRICE_BUSINESS_MONTHLY",
    "HITKEEP_STRIPE_PRICE_PRO_ANNUAL",
    "HITKEEP_STRIPE_PRICE_BUSINESS_ANNUAL",
];

/// Older variable names HitKeep still reads (`deprecatedenv` tags): `HITKEEP_URL` for `HITKEEP_API_URL`.
/// They have no key in the YAML file.
const SERVER_DEPRECATED_ENV: &[&str] = &["HITKEEP_URL"];

/// YAML keys of settings HitKeep has as a flag only (`flag` tags without `env`): `--healthcheck`.
const SERVER_FLAG_ONLY_KEYS: &[&str] = &["healthcheck"];

/// The YAML key of a variable, as HitKeep derives it: `HITKEEP_S3_REGION` → `s3-region`.
pub(crate) fn file_key(env: &str) -> String {
    env.strip_prefix("HITKEEP_")
        .unwrap_or(env)
        .to_ascii_lowercase()
        .replace('_', "-")
}

/// Whether HitKeep reads the variable `name`.
pub(crate) fn is_server_env(name: &str) -> bool {
    SERVER_ENV.contains(&name) || SERVER_DEPRECATED_ENV.contains(&name)
}

/// Every variable HitKeep reads.
pub(crate) fn server_env() -> impl Iterator<Item = &'static str> {
    SERVER_ENV.iter().chain(SERVER_DEPRECATED_ENV).copied()
}

/// Every key HitKeep accepts in its YAML file.
pub(crate) fn server_file_keys() -> impl Iterator<Item = String> {
    SERVER_ENV
        .iter()
        .map(|env| file_key(env))
        .chain(SERVER_FLAG_ONLY_KEYS.iter().map(|&k| k.to_owned()))
}

/// Whether HitKeep accepts `key` in its YAML file.
pub(crate) fn is_server_file_key(key: &str) -> bool {
    SERVER_FLAG_ONLY_KEYS.contains(&key) || SERVER_ENV.iter().any(|env| file_key(env) == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_derive_as_hitkeep_does() {
        assert_eq!(
            file_key("HITKEEP_DB_COMPACT_ON_START"),
            "db-compact-on-start"
        );
        assert!(is_server_file_key("db-auto-recover-wal"));
        assert!(is_server_file_key("healthcheck"));
        assert!(
            !is_server_file_key("url"),
            "deprecated variables have no key"
        );
        assert!(is_server_env("HITKEEP_URL"));
    }

    /// The settings of HitKeep's we share must be in the catalogue, or a shared file could be refused.
    #[test]
    fn catalogue_holds_hitkeeps_data_and_backup_settings() {
        for env in [
            "HITKEEP_DB_PATH",
            "HITKEEP_BACKUP_PATH",
            "HITKEEP_S3_SESSION_TOKEN",
            "HITKEEP_DUCKDB_THREADS",
        ] {
            assert!(is_server_env(env), "{env}");
        }
        let mut seen = std::collections::BTreeSet::new();
        assert!(
            SERVER_ENV.iter().all(|env| seen.insert(env)),
            "no duplicates"
        );
    }
}
