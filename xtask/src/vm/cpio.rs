//! A minimal writer for the "newc" cpio format, the one the kernel unpacks as an initramfs.
//!
//! Entries are collected in memory (file contents are read from the host when written) and emitted
//! sorted by path, so every directory precedes its contents; parent directories are created
//! implicitly. Everything is owned by root.
//!
//! [`write_tree`] archives a whole directory instead (a root filesystem built by mmdebstrap), with
//! each file's own owner, mode and type.
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

enum Entry {
    Dir { mode: u32 },
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
        self.dir_mode(path, 0o755);
    }

    /// A directory with these permissions. An archive unpacked over an existing tree (an
    /// overlay) sets them on the directory that is there, as it does for implicit parents (0755).
    pub fn dir_mode(&mut self, path: &str, mode: u32) {
        let path = normalize(path);
        if path.is_empty() {
            return;
        }
        self.parents(&path);
        self.entries.insert(path, Entry::Dir { mode });
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
                .or_insert(Entry::Dir { mode: 0o755 });
            end += 1;
        }
    }

    pub fn write_to(&self, out: &Path) -> Result<()> {
        let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = BufWriter::new(file);
        for (ino, (path, entry)) in (1..).zip(&self.entries) {
            let (mode, data, rdev) = match entry {
                Entry::Dir { mode } => (S_IFDIR | mode, Vec::new(), (0, 0)),
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
            let header = Header {
                ino,
                mode,
                rdev,
                ..Header::default()
            };
            write_entry(&mut w, &header, path, &data)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        write_entry(&mut w, &Header::default(), TRAILER, &[])
            .and_then(|()| w.flush())
            .with_context(|| format!("writing {}", out.display()))
    }
}

const TRAILER: &str = "TRAILER!!!";

/// Writes the tree below `root` as a newc archive (paths relative to `root`, directories before
/// their contents), with each entry's owner, permissions, type and modification time. Hard links
/// are written as separate copies. Returns the number of entries.
pub fn write_tree(root: &Path, w: &mut impl Write) -> Result<u32> {
    let mut ino = 0;
    walk(root, "", w, &mut ino)?;
    write_entry(w, &Header::default(), TRAILER, &[]).context("writing the cpio trailer")?;
    Ok(ino)
}

fn walk(dir: &Path, prefix: &str, w: &mut impl Write, ino: &mut u32) -> Result<()> {
    let mut names = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let name = name
            .to_str()
            .with_context(|| format!("{} is not UTF-8", path.display()))?;
        let archived = format!("{prefix}{name}");
        let meta = fs::symlink_metadata(&path).with_context(|| format!("{}", path.display()))?;
        let kind = meta.file_type();
        let data = if kind.is_file() {
            fs::read(&path).with_context(|| format!("reading {}", path.display()))?
        } else if kind.is_symlink() {
            let target = fs::read_link(&path).with_context(|| format!("{}", path.display()))?;
            target.into_os_string().into_encoded_bytes()
        } else {
            Vec::new()
        };
        let rdev = if kind.is_char_device() || kind.is_block_device() {
            let dev = meta.rdev();
            (libc::major(dev), libc::minor(dev))
        } else {
            (0, 0)
        };
        *ino += 1;
        let header = Header {
            ino: *ino,
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            // the format has 32 bits; dates past 2106 are not a concern here
            mtime: u32::try_from(meta.mtime().max(0)).unwrap_or(u32::MAX),
            rdev,
        };
        write_entry(w, &header, &archived, &data)
            .with_context(|| format!("archiving {}", path.display()))?;
        if kind.is_dir() {
            walk(&path, &format!("{archived}/"), w, ino)?;
        }
    }
    Ok(())
}

fn normalize(path: &str) -> String {
    path.trim_matches('/').to_string()
}

#[derive(Default)]
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u32,
    /// (major, minor) of a device node.
    rdev: (u32, u32),
}

fn write_entry(w: &mut impl Write, h: &Header, name: &str, data: &[u8]) -> io::Result<()> {
    let size = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{name} is too large")))?;
    let namesize = name.len() + 1;
    let nlink = if h.mode & S_IFMT == S_IFDIR { 2 } else { 1 };
    write!(
        w,
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
         {dmaj:08x}{dmin:08x}{rmajor:08x}{rminor:08x}{namesize:08x}{check:08x}",
        ino = h.ino,
        mode = h.mode,
        uid = h.uid,
        gid = h.gid,
        mtime = h.mtime,
        dmaj = 0,
        dmin = 0,
        rmajor = h.rdev.0,
        rminor = h.rdev.1,
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
