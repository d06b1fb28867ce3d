//! A minimal writer for the "newc" cpio format, the one the kernel unpacks as an initramfs.
//!
//! Entries are collected in memory (file contents are read from the host when written) and emitted
//! sorted by path, so every directory precedes its contents; parent directories are created
//! implicitly. Everything is owned by root.
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

enum Entry {
    Dir,
    File { mode: u32, data: Data },
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

enum Data {
    Bytes(Vec<u8>),
    Host(PathBuf),
}

#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn dir(&mut self, path: &str) {
        let path = normalize(path);
        if path.is_empty() {
            return;
        }
        self.parents(&path);
        self.entries.entry(path).or_insert(Entry::Dir);
    }

    /// A file whose contents are read from `host` when the archive is written.
    pub fn host_file(&mut self, path: &str, mode: u32, host: &Path) {
        self.insert(
            path,
            Entry::File {
                mode,
                data: Data::Host(host.to_path_buf()),
            },
        );
    }

    pub fn file(&mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) {
        self.insert(
            path,
            Entry::File {
                mode,
                data: Data::Bytes(data.into()),
            },
        );
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.insert(path, Entry::Symlink(target.to_string()));
    }

    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) {
        self.insert(path, Entry::CharDev { major, minor });
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(&normalize(path))
    }

    fn insert(&mut self, path: &str, entry: Entry) {
        let path = normalize(path);
        self.parents(&path);
        self.entries.insert(path, entry);
    }

    fn parents(&mut self, path: &str) {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            end += i;
            self.entries
                .entry(path[..end].to_string())
                .or_insert(Entry::Dir);
            end += 1;
        }
    }

    pub fn write_to(&self, out: &Path) -> Result<()> {
        let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = BufWriter::new(file);
        for (ino, (path, entry)) in (1..).zip(&self.entries) {
            let (mode, data, rdev) = match entry {
                Entry::Dir => (S_IFDIR | 0o755, Vec::new(), (0, 0)),
                Entry::File { mode, data } => {
                    let bytes = match data {
                        Data::Bytes(b) => b.clone(),
                        Data::Host(p) => {
                            fs::read(p).with_context(|| format!("reading {}", p.display()))?
                        }
                    };
                    (S_IFREG | mode, bytes, (0, 0))
                }
                Entry::Symlink(target) => (S_IFLNK | 0o777, target.clone().into_bytes(), (0, 0)),
                Entry::CharDev { major, minor } => (S_IFCHR | 0o600, Vec::new(), (*major, *minor)),
            };
            write_entry(&mut w, ino, path, mode, &data, rdev)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        write_entry(&mut w, 0, "TRAILER!!!", 0, &[], (0, 0))
            .and_then(|()| w.flush())
            .with_context(|| format!("writing {}", out.display()))
    }
}

fn normalize(path: &str) -> String {
    path.trim_matches('/').to_string()
}

fn write_entry(
    w: &mut impl Write,
    ino: u32,
    name: &str,
    mode: u32,
    data: &[u8],
    (rmajor, rminor): (u32, u32),
) -> io::Result<()> {
    let size = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{name} is too large")))?;
    let namesize = name.len() + 1;
    let nlink = if mode & S_IFMT == S_IFDIR { 2 } else { 1 };
    write!(
        w,
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
         {dmaj:08x}{dmin:08x}{rmajor:08x}{rminor:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        dmaj = 0,
        dmin = 0,
        check = 0,
    )?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w, 110 + namesize)?;
    w.write_all(data)?;
    pad(w, data.len())
}

fn pad(w: &mut impl Write, len: usize) -> io::Result<()> {
    let n = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..n])
}
