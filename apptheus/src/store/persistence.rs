//! The persistence file (`--persistence.file`): the store of live and retained containers,
//! written atomically (a new temp file of an unpredictable name, fsync, rename, fsync dir), all
//! relative to the directory held open, and loaded at start.
//!
//! Format: JSON with a header naming the format and its version, so a foreign file (the Go
//! original's protobuf file, say) is recognised as such and set aside, never misread.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::store::Record;
use crate::support::owned_dir::OwnedDir;

const FORMAT: &str = "apptheus-store";
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Document {
    format: String,
    version: u32,
    written: SystemTime,
    containers: Vec<Record>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {err}")]
    Read { path: PathBuf, err: io::Error },
    #[error("{path} is not an apptheus store (corrupt, truncated or foreign): {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path} is an apptheus store of version {found}; this agent reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
}

/// Decode a persistence file's bytes.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Vec<Record>, LoadError> {
    let corrupt = |detail: String| LoadError::Corrupt { path: path.to_path_buf(), detail };
    // Check the header first, so that a file of another format or version says so plainly.
    #[derive(Deserialize)]
    struct Header {
        format: String,
        version: u32,
    }
    let header: Header = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if header.format != FORMAT {
        return Err(corrupt(format!("format is {:?}, not {FORMAT:?}", header.format)));
    }
    if header.version != VERSION {
        return Err(LoadError::Version { path: path.to_path_buf(), found: header.version });
    }
    let doc: Document = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    Ok(doc.containers)
}

/// The persistence file in its directory, held open: every read, write and set-aside is made
/// relative to that directory and never through a name another user planted (see
/// [`OwnedDir`]). Opening refuses a directory others could swap names in.
pub struct StoreFile {
    dir: OwnedDir,
    name: OsString,
}

impl StoreFile {
    pub fn open(path: &Path) -> anyhow::Result<StoreFile> {
        let name = path.file_name().ok_or_else(|| anyhow::anyhow!("--persistence.file {} has no file name", path.display()))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let dir = OwnedDir::open(dir, name, false).map_err(|e| anyhow::anyhow!("--persistence.file: {e}"))?;
        Ok(StoreFile { dir, name: name.to_os_string() })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join(&self.name)
    }

    /// Load the file; a missing file is an empty store.
    pub fn load(&self) -> Result<Vec<Record>, LoadError> {
        match self.dir.read(&self.name) {
            Ok(Some(bytes)) => decode(&self.path(), &bytes),
            Ok(None) => Ok(Vec::new()),
            Err(err) => Err(LoadError::Read { path: self.path(), err }),
        }
    }

    /// Load the file, or, if it cannot be used, log one line, move it aside
    /// (`<file>.corrupt-<unix seconds>`, never over an existing name, so a good file is never
    /// lost silently) and start empty.
    pub fn load_or_set_aside(&self) -> Vec<Record> {
        let err = match self.load() {
            Ok(records) => return records,
            Err(err) => err,
        };
        let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut last = None;
        for attempt in 0..8 {
            let mut aside = self.name.clone();
            aside.push(if attempt == 0 { format!(".corrupt-{stamp}") } else { format!(".corrupt-{stamp}-{attempt}") });
            match self.dir.rename_noreplace(&self.name, &aside) {
                Ok(()) => {
                    let moved_to = self.dir.path().join(&aside);
                    tracing::error!(%err, moved_to = %moved_to.display(), "persistence file unusable; starting empty");
                    return Vec::new();
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        let mv = last.map(|e| e.to_string()).unwrap_or_default();
        tracing::error!(%err, move_error = %mv, "persistence file unusable and could not be moved aside; starting empty");
        Vec::new()
    }

    /// Write the file atomically: a reader (or a crash) sees the old file or the new one, whole.
    pub fn save(&self, records: Vec<Record>) -> io::Result<()> {
        let doc = Document { format: FORMAT.into(), version: VERSION, written: SystemTime::now(), containers: records };
        let bytes = serde_json::to_vec(&doc).map_err(io::Error::other)?;
        self.dir.write_atomic(&self.name, &bytes, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::{Sample, Timed};
    use crate::store::ContainerInfo;
    use std::time::Duration;

    fn record(id: &str) -> Record {
        let mut sample = Sample::default();
        sample.cpu.usage_ns = Some(123);
        sample.memory.limit = Some(crate::kernfs::Limit::Unlimited);
        Record {
            info: ContainerInfo {
                id: id.into(),
                cgroup_path: format!("/metric_gateway/{id}"),
                pid: 42,
                user: "alice".into(),
                exe: "/usr/libexec/apptainer/bin/starter".into(),
                image: "/home/alice/lolcow.sif".into(),
                started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                labels: vec![("slurm_job_id".into(), "7".into())],
            },
            latest: Some(Timed { at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_010), sample }),
            cpu_percent: Some(12.5),
            ended: None,
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let file = StoreFile::open(&dir.path().join("store.json")).unwrap();
        file.save(vec![record("starter_42"), record("starter_43")]).unwrap();
        let back = file.load().unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].info, record("starter_42").info);
        assert_eq!(back[0].latest.as_ref().unwrap().sample.cpu.usage_ns, Some(123));
        assert_eq!(back[0].latest.as_ref().unwrap().sample.memory.limit, Some(crate::kernfs::Limit::Unlimited));
        // No temp file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(StoreFile::open(&dir.path().join("store.json")).unwrap().load().unwrap().is_empty());
    }

    #[test]
    fn truncated_garbage_and_foreign_files_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.json");
        let file = StoreFile::open(&path).unwrap();
        file.save(vec![record("starter_42")]).unwrap();
        let good = std::fs::read(&path).unwrap();
        let cases: Vec<Vec<u8>> = vec![
            good[..good.len() / 2].to_vec(),
            b"\x00\x01garbage\xff".to_vec(),
            br#"{"format":"pushgateway","version":1}"#.to_vec(),
            br#"{"format":"apptheus-store","version":99,"containers":[]}"#.to_vec(),
            Vec::new(),
        ];
        for (i, bytes) in cases.into_iter().enumerate() {
            std::fs::write(&path, &bytes).unwrap();
            assert!(file.load().is_err(), "case {i} loaded");
            assert!(file.load_or_set_aside().is_empty());
            assert!(!path.exists(), "case {i}: file not moved aside");
            let aside: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
                .collect();
            assert_eq!(aside.len(), 1, "case {i}");
            assert_eq!(std::fs::read(aside[0].path()).unwrap(), bytes, "case {i}: content not kept");
            std::fs::remove_file(aside[0].path()).unwrap();
        }
    }

    #[test]
    fn a_directory_gone_is_an_error_not_a_panic() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        let file = StoreFile::open(&dir.join("store.json")).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        let err = file.save(vec![]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(Path::new("x"), &bytes);
        }
    }
}
