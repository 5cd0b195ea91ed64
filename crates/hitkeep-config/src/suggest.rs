//! "Did you mean …?": the known name an unknown one most likely meant, when one is close enough to be a slip.
//!
//! Deliberately conservative: the environment is shared with the HitKeep server and with whatever else runs
//! there, and a suggestion for a name that meant something else is a warning on a healthy setup.

/// The name in `known` that `name` most likely meant, if one is close: the same words in another case,
/// spelling (`-` or `_`) or order; one word missing or extra (`S3_SECRET_KEY` for `S3_SECRET_ACCESS_KEY`);
/// or a typo of a letter or two (`BACKUP_RETENTON`). Names compare without their `HITKEEP_` prefix.
pub(crate) fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let wanted = normalise(name);
    let mut best: Option<(&str, f64)> = None;
    for candidate in known {
        let stem = normalise(candidate);
        if !is_close(&wanted, &stem) {
            continue;
        }
        let score = strsim::normalized_damerau_levenshtein(&wanted, &stem);
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((candidate, score));
        }
    }
    best.map(|(candidate, _)| candidate)
}

/// `hitkeep_s3-Region` → `S3_REGION`.
fn normalise(name: &str) -> String {
    let upper = name.to_ascii_uppercase().replace('-', "_");
    upper
        .strip_prefix("HITKEEP_")
        .map_or(upper.clone(), str::to_owned)
}

fn is_close(unknown: &str, known: &str) -> bool {
    let longest = unknown.len().max(known.len());
    let typos = if longest <= 8 { 1 } else { 2 };
    strsim::osa_distance(unknown, known) <= typos || words_close(unknown, known)
}

/// Same words in any order; one word missing from a name of two words or more; or one word extra, though
/// not in front: a leading word is a namespace of someone else's (`HITKEEP_E2E_S3_ENDPOINT`, a test's).
fn words_close(unknown: &str, known: &str) -> bool {
    let unknown: Vec<&str> = unknown.split('_').collect();
    let known: Vec<&str> = known.split('_').collect();
    let within = |a: &[&str], b: &[&str]| a.iter().all(|w| b.contains(w));
    let (u, k) = (unknown.len(), known.len());
    if u == k {
        within(&unknown, &known) && within(&known, &unknown)
    } else if u + 1 == k {
        u >= 2 && within(&unknown, &known)
    } else if u == k + 1 {
        k >= 2 && within(&known, &unknown) && known.contains(&unknown[0])
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &[&str] = &[
        "HITKEEP_BACKUP_RETENTION",
        "HITKEEP_BACKUP_INTERVAL",
        "HITKEEP_S3_SECRET_ACCESS_KEY",
        "HITKEEP_S3_ACCESS_KEY_ID",
        "HITKEEP_S3_REGION",
        "HITKEEP_DB_PATH",
        "HITKEEP_DATA_PATH",
    ];

    fn suggest(name: &str) -> Option<&'static str> {
        closest(name, OURS.iter().copied())
    }

    #[test]
    fn slips_are_recognised() {
        let cases = [
            ("HITKEEP_BACKUP_RETENTON", "HITKEEP_BACKUP_RETENTION"),
            ("HITKEEP_S3_SECRET_KEY", "HITKEEP_S3_SECRET_ACCESS_KEY"),
            ("HITKEEP_S3_ACCESS_KEY", "HITKEEP_S3_ACCESS_KEY_ID"),
            ("HITKEEP_BACKUP_INTERVAL_MINUTES", "HITKEEP_BACKUP_INTERVAL"),
            ("HITKEEP_S3_REGOIN", "HITKEEP_S3_REGION"),
            ("hitkeep_s3_region", "HITKEEP_S3_REGION"),
            ("HITKEEP_REGION_S3", "HITKEEP_S3_REGION"),
            ("s3-region", "HITKEEP_S3_REGION"),
        ];
        for (name, meant) in cases {
            assert_eq!(suggest(name), Some(meant), "{name}");
        }
    }

    #[test]
    fn far_names_are_left_alone() {
        for name in [
            "HITKEEP_FOO",
            "HITKEEP_VERSION",
            "HITKEEP_S3_BUCKET",
            "HITKEEP_S3_KEY",
            "HITKEEP_PATH",
            "HITKEEP_DB",
            "HITKEEP_STRIPE_SECRET_KEY",
            "HITKEEP_HTTP_PORT",
            "HITKEEP_E2E_S3_REGION",
            "HITKEEP_BENCH_DB_PATH",
        ] {
            assert_eq!(suggest(name), None, "{name}");
        }
    }
}
