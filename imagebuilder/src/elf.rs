//! Is this ELF file static? Reads the ELF header, the program headers and the
//! dynamic segment.
//!
//! A binary that goes into the image runs in a container that has no dynamic
//! loader and no libraries, so it must need neither: no `PT_INTERP` program header
//! (the loader's path) and no `DT_NEEDED` entry in its dynamic segment (a static
//! PIE has a `PT_DYNAMIC` for its own relocations but needs nothing). Layouts from
//! the System V gABI, "Program Header" and "Dynamic Section" chapters, and
//! `elf(5)`. Written by hand: it is one header walk, for 32/64-bit and either byte
//! order, and a general object-file crate would be a large dependency for it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Why a file could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file starts like ELF but its headers are inconsistent.
    #[error("{path} is a malformed ELF file: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// `e_type` values that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfType {
    /// `ET_REL`: an object file.
    Relocatable,
    /// `ET_EXEC`: a fixed-address executable.
    Executable,
    /// `ET_DYN`: a PIE or a shared library.
    Shared,
    /// Anything else (core files, processor-specific).
    Other(u16),
}

/// What the headers say about linking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// The file's type.
    pub elf_type: ElfType,
    /// The `PT_INTERP` path, if any.
    pub interpreter: Option<String>,
    /// The number of `DT_NEEDED` entries.
    pub needed: usize,
    /// `e_machine`: the processor it is for (`cartimage::arch::EM_X86_64`, ...).
    pub machine: u16,
}

impl ElfInfo {
    /// No interpreter and no needed libraries.
    pub fn is_static(&self) -> bool {
        self.interpreter.is_none() && self.needed == 0
    }

    /// An executable or shared object (something that would be loaded).
    pub fn is_loadable(&self) -> bool {
        matches!(self.elf_type, ElfType::Executable | ElfType::Shared)
    }
}

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
/// Bound on header table sizes read, against hostile values.
const MAX_TABLE: u64 = 16 << 20;

struct Reader {
    wide: bool,
    big: bool,
}

impl Reader {
    fn u16(&self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.big {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    }
    fn u32(&self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }
    fn u64(&self, b: &[u8]) -> u64 {
        let a = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
        if self.big {
            u64::from_be_bytes(a)
        } else {
            u64::from_le_bytes(a)
        }
    }
    /// A word: 8 bytes in ELFCLASS64, 4 in ELFCLASS32.
    fn word(&self, b: &[u8]) -> u64 {
        if self.wide {
            self.u64(b)
        } else {
            u64::from(self.u32(b))
        }
    }
}

/// Reads `path`'s ELF headers; `Ok(None)` if it is not an ELF file.
pub fn inspect(path: &Path) -> Result<Option<ElfInfo>, ElfError> {
    let io = |source| ElfError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bad = |reason: &str| ElfError::Malformed {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let mut f = File::open(path).map_err(io)?;
    let mut ident = [0u8; 64];
    let n = read_up_to(&mut f, &mut ident).map_err(io)?;
    if n < 4 || &ident[..4] != b"\x7fELF" {
        return Ok(None);
    }
    if n < 52 {
        return Err(bad("truncated ELF header"));
    }
    let r = Reader {
        wide: match ident[4] {
            1 => false,
            2 => true,
            _ => return Err(bad("unknown ELF class")),
        },
        big: match ident[5] {
            1 => false,
            2 => true,
            _ => return Err(bad("unknown byte order")),
        },
    };
    if r.wide && n < 64 {
        return Err(bad("truncated ELF header"));
    }
    let elf_type = match r.u16(&ident[16..]) {
        1 => ElfType::Relocatable,
        2 => ElfType::Executable,
        3 => ElfType::Shared,
        other => ElfType::Other(other),
    };
    let (phoff, phentsize, phnum) = if r.wide {
        (
            r.u64(&ident[32..]),
            r.u16(&ident[54..]),
            r.u16(&ident[56..]),
        )
    } else {
        (
            u64::from(r.u32(&ident[28..])),
            r.u16(&ident[42..]),
            r.u16(&ident[44..]),
        )
    };
    let mut info = ElfInfo {
        elf_type,
        interpreter: None,
        needed: 0,
        machine: r.u16(&ident[18..]),
    };
    if phnum == 0 {
        return Ok(Some(info));
    }
    let min_ent = if r.wide { 56 } else { 32 };
    if usize::from(phentsize) < min_ent {
        return Err(bad("program header entries too small"));
    }
    let table = read_at(&mut f, phoff, u64::from(phentsize) * u64::from(phnum))
        .map_err(|_| bad("program headers beyond the end of the file"))?;
    for ph in table.chunks_exact(usize::from(phentsize)) {
        let p_type = r.u32(ph);
        let (offset, filesz) = if r.wide {
            (r.u64(&ph[8..]), r.u64(&ph[32..]))
        } else {
            (u64::from(r.u32(&ph[4..])), u64::from(r.u32(&ph[16..])))
        };
        match p_type {
            PT_INTERP => {
                let bytes = read_at(&mut f, offset, filesz)
                    .map_err(|_| bad("PT_INTERP beyond the end of the file"))?;
                let s = bytes.split(|&b| b == 0).next().unwrap_or(&[]);
                info.interpreter = Some(String::from_utf8_lossy(s).into_owned());
            }
            PT_DYNAMIC => {
                let bytes = read_at(&mut f, offset, filesz)
                    .map_err(|_| bad("PT_DYNAMIC beyond the end of the file"))?;
                let ent = if r.wide { 16 } else { 8 };
                for d in bytes.chunks_exact(ent) {
                    let tag = r.word(d);
                    if tag == DT_NULL {
                        break;
                    }
                    if tag == DT_NEEDED {
                        info.needed += 1;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Some(info))
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn read_at(f: &mut File, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    if len > MAX_TABLE {
        return Err(std::io::Error::other("table too large"));
    }
    f.seek(SeekFrom::Start(offset))?;
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_binaries_are_dynamic() {
        // /bin/sh on any Debian host is dynamically linked.
        let info = inspect(Path::new("/bin/sh")).unwrap().unwrap();
        assert!(info.interpreter.is_some());
        assert!(info.needed > 0);
        assert!(!info.is_static());
    }

    #[test]
    fn the_machine_is_read() {
        assert_eq!(
            inspect(Path::new("/bin/sh")).unwrap().unwrap().machine,
            cartimage::arch::Arch::host().unwrap().elf_machine()
        );
        // A static aarch64 executable's header: ELFCLASS64, little endian, ET_EXEC,
        // EM_AARCH64, no program headers.
        let mut header = [0u8; 64];
        header[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        header[16] = 2;
        header[18] = 183;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a64");
        std::fs::write(&p, header).unwrap();
        let info = inspect(&p).unwrap().unwrap();
        assert_eq!(info.machine, cartimage::arch::EM_AARCH64);
        assert!(info.is_static() && info.is_loadable());
        // Staged into an x86_64 image, it is refused, naming the file and both arches.
        let err = crate::stage::check_static(
            "tool",
            dir.path(),
            Path::new("a64"),
            Some(cartimage::arch::Arch::X86_64),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("package tool: a64 is built for aarch64, not x86_64"),
            "{err}"
        );
        crate::stage::check_static(
            "tool",
            dir.path(),
            Path::new("a64"),
            Some(cartimage::arch::Arch::Aarch64),
        )
        .unwrap();
    }

    #[test]
    fn non_elf_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("script");
        std::fs::write(&p, "#!/bin/sh\necho hi\n").unwrap();
        assert_eq!(inspect(&p).unwrap(), None);
    }

    #[test]
    fn truncated_elf_is_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad");
        std::fs::write(&p, b"\x7fELF\x02\x01\x01").unwrap();
        assert!(inspect(&p).is_err());
        let mut bytes = std::fs::read("/bin/sh").unwrap();
        bytes.truncate(200);
        std::fs::write(&p, bytes).unwrap();
        assert!(
            inspect(&p)
                .unwrap_err()
                .to_string()
                .contains("beyond the end")
        );
    }
}
