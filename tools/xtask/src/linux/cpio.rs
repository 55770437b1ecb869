//! A writer for the `newc` cpio format, the one Linux unpacks as an initramfs.
//!
//! Each entry is a 110-byte ASCII header (`070701` and thirteen 8-digit hexadecimal fields), the
//! NUL-terminated path padded to a multiple of 4 bytes, then the data padded likewise; the archive
//! ends with an entry named `TRAILER!!!`. The kernel creates each path as it comes without making
//! missing parents, so the writer emits every parent directory before its first child.
//!
//! Owner is root, times are 0: the archive depends only on what is put in it.

use crate::Result;
use std::collections::BTreeSet;
use std::io::Write;

/// The `newc` magic (no checksum).
#[cfg(test)]
pub(crate) const MAGIC: &[u8; 6] = b"070701";
/// The name of the entry that ends an archive.
pub(crate) const TRAILER: &str = "TRAILER!!!";
/// Length of a header: the magic and thirteen 8-digit fields.
pub(crate) const HEADER_LEN: usize = 110;

/// File type bits of `st_mode`.
pub(crate) const S_IFDIR: u32 = 0o040_000;
pub(crate) const S_IFREG: u32 = 0o100_000;
pub(crate) const S_IFLNK: u32 = 0o120_000;
pub(crate) const S_IFCHR: u32 = 0o020_000;

/// Writes a `newc` archive to `out`.
#[derive(Debug)]
pub(crate) struct CpioWriter<W: Write> {
    out: W,
    /// Bytes written so far, for the 4-byte alignment.
    written: u64,
    next_inode: u32,
    directories: BTreeSet<String>,
}

/// The fields of a header that vary between entries.
#[derive(Clone, Copy, Debug, Default)]
struct Fields {
    inode: u32,
    mode: u32,
    nlink: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

impl<W: Write> CpioWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_inode: 1,
            directories: BTreeSet::new(),
        }
    }

    /// A directory (mode 0755) and its parents; adding one twice is harmless.
    pub(crate) fn directory(&mut self, path: &str) -> Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        if self.directories.contains(&path) {
            return Ok(());
        }
        let fields = self.fields(S_IFDIR | 0o755, 2);
        self.entry(&path, fields, &[])?;
        self.directories.insert(path);
        Ok(())
    }

    /// A regular file with permission bits `permissions` (e.g. 0o755).
    pub(crate) fn file(&mut self, path: &str, permissions: u32, data: &[u8]) -> Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        let fields = self.fields(S_IFREG | (permissions & 0o7777), 1);
        self.entry(&path, fields, data)
    }

    /// A symbolic link to `target` (its data is the target).
    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        let fields = self.fields(S_IFLNK | 0o777, 1);
        self.entry(&path, fields, target.as_bytes())
    }

    /// A character device node.
    pub(crate) fn char_device(
        &mut self,
        path: &str,
        permissions: u32,
        major: u32,
        minor: u32,
    ) -> Result<()> {
        let path = normalize(path)?;
        self.parents(&path)?;
        let mut fields = self.fields(S_IFCHR | (permissions & 0o7777), 1);
        fields.rdev_major = major;
        fields.rdev_minor = minor;
        self.entry(&path, fields, &[])
    }

    /// Writes the trailer and returns the output.
    pub(crate) fn finish(mut self) -> Result<W> {
        let fields = Fields {
            nlink: 1,
            ..Fields::default()
        };
        self.entry(TRAILER, fields, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn fields(&mut self, mode: u32, nlink: u32) -> Fields {
        let inode = self.next_inode;
        self.next_inode += 1;
        Fields {
            inode,
            mode,
            nlink,
            ..Fields::default()
        }
    }

    fn parents(&mut self, path: &str) -> Result<()> {
        let mut end = 0;
        while let Some(slash) = path.get(end..).and_then(|rest| rest.find('/')) {
            let parent = path.get(..end + slash).ok_or("cpio: bad path")?;
            if !self.directories.contains(parent) {
                let fields = self.fields(S_IFDIR | 0o755, 2);
                self.entry(parent, fields, &[])?;
                self.directories.insert(parent.to_string());
            }
            end += slash + 1;
        }
        Ok(())
    }

    fn entry(&mut self, name: &str, fields: Fields, data: &[u8]) -> Result<()> {
        let file_size = u32::try_from(data.len())
            .map_err(|_| format!("cpio: `{name}` is larger than 4 GiB"))?;
        let name_size = u32::try_from(name.len() + 1)?;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            fields.inode,
            fields.mode,
            0, // uid
            0, // gid
            fields.nlink,
            0, // mtime
            file_size,
            0, // devmajor
            0, // devminor
            fields.rdev_major,
            fields.rdev_minor,
            name_size,
            0, // check
        );
        debug_assert_eq!(header.len(), HEADER_LEN);
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let padding = (4 - self.written % 4) % 4;
        let zeros = [0u8; 3];
        self.put(zeros.get(..usize::try_from(padding)?).unwrap_or_default())
    }
}

/// The archive path for `path`: relative, no empty, `.` or `..` components.
fn normalize(path: &str) -> Result<String> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    let valid = !trimmed.is_empty()
        && !trimmed.contains('\0')
        && trimmed
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !valid || trimmed == TRAILER {
        return Err(format!("cpio: invalid path `{path}`").into());
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
pub(crate) mod tests {
    use super::*;

    /// One entry as read back.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Entry {
        pub(crate) name: String,
        pub(crate) inode: u32,
        pub(crate) mode: u32,
        pub(crate) nlink: u32,
        pub(crate) rdev: (u32, u32),
        pub(crate) data: Vec<u8>,
    }

    /// A strict `newc` reader: checks the magic, zero owner/time/check fields, zero padding, the
    /// alignment of every header, the trailer, and that nothing follows it.
    pub(crate) fn parse(mut bytes: &[u8]) -> Vec<Entry> {
        let total = bytes.len();
        let mut entries = Vec::new();
        loop {
            let offset = total - bytes.len();
            assert_eq!(offset % 4, 0, "header at {offset} is not 4-byte aligned");
            let header = &bytes[..HEADER_LEN];
            assert_eq!(&header[..6], MAGIC, "magic at {offset}");
            let field = |i: usize| {
                let text = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).unwrap();
                assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
                u32::from_str_radix(text, 16).unwrap()
            };
            let (uid, gid, mtime, check) = (field(2), field(3), field(5), field(12));
            assert_eq!((uid, gid, mtime, check), (0, 0, 0, 0));
            let file_size = field(6) as usize;
            let name_size = field(11) as usize;
            let name_end = HEADER_LEN + name_size;
            assert_eq!(bytes[name_end - 1], 0, "name is NUL-terminated");
            let name = std::str::from_utf8(&bytes[HEADER_LEN..name_end - 1])
                .unwrap()
                .to_string();
            let data_start = name_end.next_multiple_of(4);
            assert!(bytes[name_end..data_start].iter().all(|&b| b == 0));
            let data_end = data_start + file_size;
            let next = data_end.next_multiple_of(4);
            assert!(bytes[data_end..next].iter().all(|&b| b == 0));
            let entry = Entry {
                name,
                inode: field(0),
                mode: field(1),
                nlink: field(4),
                rdev: (field(9), field(10)),
                data: bytes[data_start..data_end].to_vec(),
            };
            bytes = &bytes[next..];
            if entry.name == TRAILER {
                assert!(bytes.is_empty(), "bytes after the trailer");
                return entries;
            }
            entries.push(entry);
        }
    }

    fn archive() -> Vec<u8> {
        let mut writer = CpioWriter::new(Vec::new());
        writer.file("/init", 0o755, b"#!/bin/sh\n").unwrap();
        writer
            .file("/lib/modules/6.1/virtio.ko", 0o644, &[1, 2, 3, 4, 5])
            .unwrap();
        writer.symlink("/bin/sh", "busybox").unwrap();
        writer.directory("/lib/modules").unwrap();
        writer.char_device("/dev/console", 0o600, 5, 1).unwrap();
        writer.file("empty", 0o644, &[]).unwrap();
        writer.finish().unwrap()
    }

    #[test]
    fn what_is_written_reads_back_with_parents_first() {
        let entries = parse(&archive());
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/virtio.ko",
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "empty",
            ]
        );
        let by_name = |n: &str| entries.iter().find(|e| e.name == n).unwrap().clone();
        assert_eq!(by_name("init").mode, S_IFREG | 0o755);
        assert_eq!(by_name("init").data, b"#!/bin/sh\n");
        assert_eq!(by_name("lib/modules/6.1/virtio.ko").data, [1, 2, 3, 4, 5]);
        assert_eq!(by_name("lib").mode, S_IFDIR | 0o755);
        assert_eq!(by_name("lib").nlink, 2);
        assert_eq!(by_name("bin/sh").mode, S_IFLNK | 0o777);
        assert_eq!(by_name("bin/sh").data, b"busybox");
        assert_eq!(by_name("dev/console").mode, S_IFCHR | 0o600);
        assert_eq!(by_name("dev/console").rdev, (5, 1));
        assert!(by_name("empty").data.is_empty());
        let mut inodes: Vec<u32> = entries.iter().map(|e| e.inode).collect();
        inodes.dedup();
        assert_eq!(inodes.len(), entries.len(), "inodes are distinct");
    }

    #[test]
    fn the_first_header_is_byte_exact_and_the_archive_ends_with_the_trailer() {
        let bytes = archive();
        let first = std::str::from_utf8(&bytes[..HEADER_LEN]).unwrap();
        let fields = [
            "00000001", // inode
            "000081ed", // mode: regular file, 0755
            "00000000", // uid
            "00000000", // gid
            "00000001", // nlink
            "00000000", // mtime
            "0000000a", // file size: 10
            "00000000", // devmajor
            "00000000", // devminor
            "00000000", // rdevmajor
            "00000000", // rdevminor
            "00000005", // name size: "init" and its NUL
            "00000000", // check
        ];
        assert_eq!(first, format!("070701{}", fields.concat()));
        // "init\0" is 5 bytes: 110 + 5 = 115, padded to 116, then 10 bytes of data to 128.
        assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + 6], b"init\0\0");
        assert_eq!(&bytes[116..126], b"#!/bin/sh\n");
        assert_eq!(&bytes[126..128], [0, 0]);
        assert_eq!(&bytes[128..134], MAGIC);
        let trailer = bytes.len() - 124; // 110 + "TRAILER!!!\0" (11) padded to 124
        assert_eq!(&bytes[trailer + HEADER_LEN..trailer + 120], b"TRAILER!!!");
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut writer = CpioWriter::new(Vec::new());
        for path in ["", "/", "a/../b", "a//b", "./a", TRAILER, "a\0b"] {
            assert!(writer.file(path, 0o644, &[]).is_err(), "{path:?}");
        }
    }
}
