//! Parsing `/proc/PID/mountinfo` (`proc_pid_mountinfo(5)`), from text so tests can use
//! fixtures.

use std::path::PathBuf;

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique mount ID.
    pub mount_id: u32,
    /// ID of the parent mount.
    pub parent_id: u32,
    /// `st_dev` major of the filesystem.
    pub major: u32,
    /// `st_dev` minor of the filesystem.
    pub minor: u32,
    /// The directory of the filesystem that is mounted (`/` for all of it), unescaped.
    pub root: PathBuf,
    /// Where it is mounted, relative to the reading process's root, unescaped.
    pub mount_point: PathBuf,
    /// Per-mount options (`ro,nosuid,nodev,relatime`).
    pub options: String,
    /// Filesystem type (`ext4`, `tmpfs`, ...).
    pub fstype: String,
    /// Mount source (`/dev/loop3`, the tmpfs name, ...).
    pub source: String,
    /// Per-superblock options (`rw,cpu` for a cgroup v1 hierarchy).
    pub super_options: String,
}

/// Undoes the octal escapes (`\040` for a space) the kernel writes in paths.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(digits)) = (bytes[i], octal) {
            let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one line; `None` for a line that does not have the documented shape.
pub fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let dash = fields.iter().position(|&f| f == "-")?;
    let (major, minor) = fields.get(2)?.split_once(':')?;
    Some(MountEntry {
        mount_id: fields.first()?.parse().ok()?,
        parent_id: fields.get(1)?.parse().ok()?,
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        root: PathBuf::from(unescape(fields.get(3)?)),
        mount_point: PathBuf::from(unescape(fields.get(4)?)),
        options: (*fields.get(5)?).to_string(),
        fstype: (*fields.get(dash + 1)?).to_string(),
        source: unescape(fields.get(dash + 2)?),
        super_options: fields
            .get(dash + 3)
            .map_or_else(String::new, |o| (*o).to_string()),
    })
}

/// Reads and parses the mountinfo file at `path`. Its paths are whatever bytes the mounts'
/// owners chose (only space, tab, newline and backslash are escaped): a container can mount
/// on a name that is not UTF-8, or have cartinject bind one, so the text is read as bytes
/// and invalid sequences replaced rather than refused.
pub fn read(path: &std::path::Path) -> std::io::Result<Vec<MountEntry>> {
    // Not std::fs::read: procfs says size 0, and std would read from 32 bytes doubling while
    // the kernel formats the file again for every read. (Self-contained: the fuzz target
    // includes this file alone.)
    let mut bytes = Vec::with_capacity(16 * 1024);
    std::io::Read::read_to_end(&mut std::fs::File::open(path)?, &mut bytes)?;
    Ok(parse(&String::from_utf8_lossy(&bytes)))
}

/// Parses a whole mountinfo file, skipping malformed lines.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// The mounts at `mount_point`, bottom first (the last one is the one visible there).
pub fn at<'a>(entries: &'a [MountEntry], mount_point: &str) -> Vec<&'a MountEntry> {
    entries
        .iter()
        .filter(|e| e.mount_point.as_os_str() == mount_point)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
845 724 0:120 / / rw,relatime master:300 - overlay overlay rw,lowerdir=/a
846 845 0:122 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
847 845 0:123 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
900 847 7:3 / /dev/crashcart ro,nosuid,nodev,relatime - ext4 /dev/loop3 ro
901 845 8:1 /a\\040b /mnt/with\\040space rw - ext4 /dev/sda1 rw
";

    #[test]
    fn parses_and_finds_crashcart() {
        let entries = parse(FIXTURE);
        assert_eq!(entries.len(), 5);
        let found = at(&entries, "/dev/crashcart");
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].major, found[0].minor), (7, 3));
        assert_eq!(found[0].source, "/dev/loop3");
        assert_eq!(found[0].fstype, "ext4");
        assert_eq!(found[0].parent_id, 847);
        assert_eq!(found[0].options, "ro,nosuid,nodev,relatime");
        assert_eq!(entries[4].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(entries[4].root, PathBuf::from("/a b"));
        assert_eq!(entries[2].super_options, "rw,size=65536k,mode=755");
    }

    #[test]
    fn invalid_utf8_does_not_hide_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("mountinfo");
        let mut text = FIXTURE.as_bytes().to_vec();
        text.extend_from_slice(b"902 847 0:5 /x /dev/\x1b\x9bbad rw - tmpfs tmpfs rw\n");
        std::fs::write(&path, text).expect("write");
        let entries = read(&path).expect("read");
        assert_eq!(entries.len(), 6);
        assert_eq!(at(&entries, "/dev/crashcart").len(), 1);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert!(parse_line("garbage").is_none());
        assert!(parse_line("1 2 x / /a rw - ext4 /dev/sda rw").is_none());
    }
}
