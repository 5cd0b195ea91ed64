//! The older versions a versioned bucket keeps of an object (`ListObjectVersions`, then
//! `DeleteObject` with a `versionId`), which OpenDAL does not expose. On such a bucket (every one
//! with Object Lock is) a plain delete only adds a delete marker and the bytes stay readable to
//! anyone with the bucket's keys: erasing an object means deleting each version.

use http::Method;
use opendal::raw::{QueryPairsWriter, percent_encode_path};
use serde::Deserialize;

use crate::error::{Error, Result, Service};
use crate::s3api::SignedS3;

const LIST: &str = "list versions";
const DELETE: &str = "delete version";

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct ListVersionsResult {
    is_truncated: bool,
    next_key_marker: String,
    next_version_id_marker: String,
    version: Vec<VersionEntry>,
    delete_marker: Vec<VersionEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct VersionEntry {
    key: String,
    version_id: String,
}

/// Lists and deletes the versions of keys under a location's prefix.
pub(crate) struct Versions<'a> {
    pub(crate) api: &'a SignedS3,
    /// The location's prefix with a trailing `/`; `""` for a whole bucket.
    pub(crate) prefix: &'a str,
    pub(crate) location: &'a str,
    pub(crate) service: &'a Service,
}

impl Versions<'_> {
    /// Every version id and delete marker the bucket keeps of exactly `key`; `None` when the store
    /// does not implement the listing (Garage, s3s-fs: stores that keep no versions).
    pub(crate) async fn of(&self, key: &str) -> Result<Option<Vec<String>>> {
        let full = format!("{}{key}", self.prefix);
        let (mut ids, mut marker) = (Vec::new(), None::<(String, String)>);
        loop {
            let mut url = QueryPairsWriter::new(self.api.endpoint())
                .push("versions", "")
                .push("prefix", &percent_encode_path(&full));
            if let Some((key_marker, version_marker)) = &marker {
                url = url
                    .push("key-marker", &percent_encode_path(key_marker))
                    .push("version-id-marker", &percent_encode_path(version_marker));
            }
            let body = match self.api.send(Method::GET, &url.finish()).await {
                Ok(response) => response.into_body().to_bytes(),
                Err(e) if e.kind() == opendal::ErrorKind::Unsupported => return Ok(None),
                Err(e) => return Err(self.err(e, LIST, key)),
            };
            let page: ListVersionsResult = quick_xml::de::from_str(&String::from_utf8_lossy(&body))
                .map_err(|e| {
                    Error::new(
                        crate::ErrorKind::Other,
                        LIST,
                        self.describe(key),
                        format!("the server's answer does not parse: {e}"),
                    )
                })?;
            // The listing is by prefix: `a.json` also lists `a.json.bak`.
            ids.extend(
                page.version
                    .into_iter()
                    .chain(page.delete_marker)
                    .filter(|v| v.key == full)
                    .map(|v| v.version_id),
            );
            if !page.is_truncated || page.next_key_marker.is_empty() {
                return Ok(Some(ids));
            }
            marker = Some((page.next_key_marker, page.next_version_id_marker));
        }
    }

    /// Deletes one version (or delete marker) of `key` for good.
    pub(crate) async fn delete(&self, key: &str, version_id: &str) -> Result<()> {
        let url = QueryPairsWriter::new(&self.api.object_url(&format!("{}{key}", self.prefix)))
            .push("versionId", &percent_encode_path(version_id))
            .finish();
        self.api
            .send(Method::DELETE, &url)
            .await
            .map(drop)
            .map_err(|e| self.err(e, DELETE, key))
    }

    fn err(&self, e: opendal::Error, operation: &'static str, key: &str) -> Error {
        let error = Error::from_opendal(e, operation, self.describe(key), self.service);
        match error.kind() {
            crate::ErrorKind::AccessDenied => error.with_hint(
                "the key may lack s3:ListBucketVersions or s3:DeleteObjectVersion: allow them on the bucket",
            ),
            _ => error,
        }
    }

    fn describe(&self, key: &str) -> String {
        format!("{}/{key}", self.location.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_delete_markers_are_read_in_any_order() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>b</Name><Prefix>p/k.json</Prefix><IsTruncated>true</IsTruncated>
  <NextKeyMarker>p/k.json</NextKeyMarker><NextVersionIdMarker>v3</NextVersionIdMarker>
  <DeleteMarker><Key>p/k.json</Key><VersionId>v1</VersionId><IsLatest>true</IsLatest></DeleteMarker>
  <Version><Key>p/k.json</Key><VersionId>v2</VersionId><Size>10</Size></Version>
  <DeleteMarker><Key>p/k.json.bak</Key><VersionId>v9</VersionId></DeleteMarker>
  <Version><Key>p/k.json</Key><VersionId>v3</VersionId><Size>12</Size></Version>
</ListVersionsResult>"#;
        let page: ListVersionsResult = quick_xml::de::from_str(xml).unwrap();
        let ids: Vec<_> = page
            .version
            .iter()
            .chain(&page.delete_marker)
            .map(|v| (v.key.as_str(), v.version_id.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                ("p/k.json", "v2"),
                ("p/k.json", "v3"),
                ("p/k.json", "v1"),
                ("p/k.json.bak", "v9")
            ]
        );
        assert!(page.is_truncated);
        assert_eq!(
            (
                page.next_key_marker.as_str(),
                page.next_version_id_marker.as_str()
            ),
            ("p/k.json", "v3")
        );
    }
}
