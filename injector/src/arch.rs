//! Which machine a target runs, and whether an image's programs can run there.
//!
//! **The target's arch** ([`target_arch`]) is what its executable is built for: the ELF
//! header of `/proc/PID/exe` (its first [`ELF_HEADER`] bytes only: it is the container's
//! file, hostile data; `EI_CLASS` must be 64-bit, `EI_DATA` little-endian, and `e_machine`
//! one of [`Arch`]'s, `elf(5)`). A process started through binfmt_misc (an aarch64
//! container on an x86_64 host, run by `qemu-aarch64-static` registered with the `F` flag)
//! has the *interpreter* as `/proc/PID/exe` (the kernel replaces the executable with it:
//! `Documentation/admin-guide/binfmt-misc.rst`); so when the executable is the very file
//! (device and inode) an enabled entry's `interpreter` names, the target's arch is the one
//! that entry's magic describes (an ELF header whose `e_machine`, bytes 18-19, little
//! endian, the mask keeps whole).
//!
//! **An image's arch** is what the manifest beside it says ([`cartimage::manifest::Head::arch`],
//! read and checked with the image by [`crate::verify`]): the simplest sound source, since
//! that manifest is the one the image's digest was checked against. An image with no
//! manifest beside it is not verified (cartinject says so) and not checked here either: a
//! program of the wrong arch then fails to execute (exit status 126).
//!
//! **The check** ([`check_image`]): an image of the arch the target's executable has runs
//! (natively, or through the same binfmt_misc entry as the target), and costs one 20-byte
//! read; nothing else is read then. Otherwise the host's binfmt_misc is read: an image of
//! the target's (emulated) arch runs, and so does one of the host's own arch; else one
//! runs only through an enabled entry for its arch with the `F` flag (the interpreter is
//! opened when the entry is registered, so it works inside the container's mount
//! namespace, where its path usually does not exist), and cartinject says so in one line;
//! else the image is refused before anything is mounted.

use std::io;
use std::path::{Path, PathBuf};

pub use cartoci::Arch;

use crate::kernel::Kernel;
use crate::procfs::ProcError;

/// How many bytes of an executable are read: the ELF header up to `e_machine`.
pub const ELF_HEADER: usize = 20;

/// The most binfmt_misc entries read (the kernel has no limit; hosts have a dozen or two).
pub const MAX_BINFMT_ENTRIES: usize = 256;

/// The most bytes of one entry's text read (the kernel's are under 512).
pub const MAX_BINFMT_ENTRY: u64 = 4096;

/// Where binfmt_misc is mounted.
pub const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// Failures telling a target's arch or running an image there.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// `/proc/PID/exe` cannot be read.
    #[error("cannot tell what machine the target (PID {pid}) runs: {source}")]
    Exe {
        /// The target.
        pid: i32,
        /// Why.
        source: ProcError,
    },
    /// Its executable is no ELF file of a known arch.
    #[error("cannot tell what machine the target (PID {pid}) runs: /proc/{pid}/exe {why}")]
    Unknown {
        /// The target.
        pid: i32,
        /// What is wrong with its header.
        why: String,
    },
    /// The target cannot run the image.
    #[error(
        "image {image} is built for {image_arch} but the target (PID {pid}) runs {target}, and this host has no binfmt_misc handler for {image_arch} with the F flag; build the image with `cartbuild RECIPE --arch {target}`"
    )]
    Refused {
        /// The image's file name.
        image: String,
        /// Its arch, as its manifest names it.
        image_arch: String,
        /// The target.
        pid: i32,
        /// The target's arch.
        target: String,
    },
}

/// What the first bytes of an executable are: the arch of a 64-bit little-endian ELF
/// file, or what is wrong (for a message).
pub fn elf_arch(header: &[u8]) -> Result<Arch, String> {
    let Some(header) = header.get(..ELF_HEADER) else {
        return Err(format!(
            "is {} bytes long, too short for an ELF header",
            header.len()
        ));
    };
    if header[..4] != *b"\x7fELF" {
        return Err("is not an ELF file".into());
    }
    if header[4] != 2 {
        return Err(format!("is not a 64-bit ELF file (EI_CLASS {})", header[4]));
    }
    if header[5] != 1 {
        return Err(format!(
            "is not a little-endian ELF file (EI_DATA {})",
            header[5]
        ));
    }
    let machine = u16::from_le_bytes([header[18], header[19]]);
    Arch::from_elf_machine(machine).ok_or_else(|| {
        format!(
            "is built for e_machine {machine:#x}, which crashcart has no images for ({})",
            Arch::known()
        )
    })
}

/// One binfmt_misc entry (`/proc/sys/fs/binfmt_misc/NAME`), as far as cartinject needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinfmtEntry {
    /// Its name (`qemu-aarch64`).
    pub name: String,
    /// Whether it is enabled.
    pub enabled: bool,
    /// The interpreter's path, as registered.
    pub interpreter: PathBuf,
    /// Its flags (`F`: the interpreter was opened at registration, `OCPF`…).
    pub flags: String,
    /// The arch whose executables its magic matches, when it is an ELF magic at offset 0
    /// whose mask keeps `e_machine` whole.
    pub arch: Option<Arch>,
}

impl BinfmtEntry {
    /// Whether its interpreter was opened when it was registered (flag `F`).
    pub fn fix_binary(&self) -> bool {
        self.flags.contains('F')
    }
}

/// Hex digits to bytes, `None` unless all of it is (at most 256 bytes: the kernel's magic
/// is at most 128).
fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    if text.len() > 512 || !text.len().is_multiple_of(2) {
        return None;
    }
    let mut out = vec![0; text.len() / 2];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Parses an entry's text (`enabled`, `interpreter PATH`, `flags: F`, `offset N`,
/// `magic HEX`, `mask HEX`, as `fs/binfmt_misc.c` prints it); `None` for what is no magic
/// entry the kernel would print (an extension entry still parses, with no arch).
pub fn parse_entry(name: &str, text: &str) -> Option<BinfmtEntry> {
    let mut lines = text.lines();
    let enabled = match lines.next()? {
        "enabled" => true,
        "disabled" => false,
        _ => return None,
    };
    let (mut interpreter, mut flags, mut offset, mut magic, mut mask) =
        (None, String::new(), 0u64, None, None);
    for line in lines {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "interpreter" => interpreter = Some(PathBuf::from(value)),
            "flags:" => flags = value.to_string(),
            "offset" => offset = value.parse().ok()?,
            "magic" => magic = Some(hex_bytes(value)?),
            "mask" => mask = Some(hex_bytes(value)?),
            _ => {}
        }
    }
    let interpreter = interpreter.filter(|p| p.is_absolute())?;
    let arch = match (&magic, offset) {
        (Some(magic), 0) => {
            // The mask must keep e_machine (bytes 18-19) whole, or the entry matches more
            // than one arch.
            let whole = mask
                .as_ref()
                .is_none_or(|m| m.get(18..20) == Some(&[0xff, 0xff][..]));
            whole.then(|| elf_arch(magic).ok()).flatten()
        }
        _ => None,
    };
    Some(BinfmtEntry {
        name: name.to_string(),
        enabled,
        interpreter,
        flags,
        arch,
    })
}

/// binfmt_misc as read: `status` and each entry's name and text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BinfmtRaw {
    /// The `status` file's text (`enabled` or `disabled`); `None` when it is not mounted.
    pub status: Option<String>,
    /// Every other file but `register`, by name.
    pub entries: Vec<(String, String)>,
}

/// binfmt_misc, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binfmt {
    /// Whether it is mounted and enabled as a whole.
    pub enabled: bool,
    /// Its entries that parsed.
    pub entries: Vec<BinfmtEntry>,
}

impl Binfmt {
    /// Parses what was read (entries that do not parse are skipped).
    pub fn parse(raw: &BinfmtRaw) -> Binfmt {
        Binfmt {
            enabled: raw.status.as_deref().map(str::trim) == Some("enabled"),
            entries: raw
                .entries
                .iter()
                .take(MAX_BINFMT_ENTRIES)
                .filter_map(|(name, text)| parse_entry(name, text))
                .collect(),
        }
    }

    /// The entries the kernel uses now that name an arch.
    fn active(&self) -> impl Iterator<Item = (&BinfmtEntry, Arch)> {
        self.entries
            .iter()
            .filter(|e| self.enabled && e.enabled)
            .filter_map(|e| e.arch.map(|a| (e, a)))
    }

    /// An entry that runs `arch`'s executables anywhere, a container's mount namespace
    /// too: enabled, with the `F` flag.
    pub fn handler(&self, arch: Arch) -> Option<&BinfmtEntry> {
        self.active()
            .find(|(e, a)| *a == arch && e.fix_binary())
            .map(|(e, _)| e)
    }
}

/// A process's executable: its first bytes and its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exe {
    /// At most [`ELF_HEADER`] bytes from its start.
    pub header: Vec<u8>,
    /// Its device and inode.
    pub id: (u64, u64),
}

/// What a target runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetArch {
    /// Its executable's own arch.
    Native(Arch),
    /// An arch whose executables binfmt_misc entry `entry` runs (its executable is that
    /// entry's interpreter).
    Emulated {
        /// The arch.
        arch: Arch,
        /// The entry's name.
        entry: String,
    },
}

impl TargetArch {
    /// The arch of the target's programs.
    pub fn arch(&self) -> Arch {
        match self {
            TargetArch::Native(a) | TargetArch::Emulated { arch: a, .. } => *a,
        }
    }
}

/// The entry whose interpreter the executable `exe` is, if any.
fn interpreting<'a>(
    kernel: &impl Kernel,
    binfmt: &'a Binfmt,
    exe: &Exe,
) -> Option<(&'a BinfmtEntry, Arch)> {
    binfmt
        .active()
        .find(|(e, _)| kernel.file_identity(&e.interpreter).ok() == Some(exe.id))
}

fn read_exe(kernel: &impl Kernel, pid: i32) -> Result<Exe, ArchError> {
    kernel
        .exe(pid)
        .map_err(|source| ArchError::Exe { pid, source })
}

/// What the target `pid` runs (see the module documentation).
pub fn target_arch(kernel: &impl Kernel, pid: i32) -> Result<TargetArch, ArchError> {
    let exe = read_exe(kernel, pid)?;
    let binfmt = Binfmt::parse(&kernel.binfmt_misc());
    if let Some((entry, arch)) = interpreting(kernel, &binfmt, &exe) {
        return Ok(TargetArch::Emulated {
            arch,
            entry: entry.name.clone(),
        });
    }
    elf_arch(&exe.header)
        .map(TargetArch::Native)
        .map_err(|why| ArchError::Unknown { pid, why })
}

/// How an image's programs run in the target, when they do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    /// As the target's own: nothing to say.
    Same,
    /// Natively, though the target is something else (an emulated container, a 32-bit
    /// one): a note for `-v`.
    Native(String),
    /// Through binfmt_misc: the one line cartinject says.
    Emulated(String),
}

/// Whether the image `image` (its file name), built for `image_arch` (its manifest's
/// word), can run in the target `pid`, on a host whose own arch is `host` (see the module
/// documentation for the order of the checks).
pub fn check_image(
    kernel: &impl Kernel,
    pid: i32,
    image: &str,
    image_arch: &str,
    host: Option<Arch>,
) -> Result<Fit, ArchError> {
    let exe = read_exe(kernel, pid)?;
    let wanted = Arch::from_kernel_name(image_arch);
    let exe_arch = elf_arch(&exe.header);
    if wanted.is_some() && exe_arch.as_ref().ok() == wanted.as_ref() {
        return Ok(Fit::Same);
    }
    let binfmt = Binfmt::parse(&kernel.binfmt_misc());
    let target = match (interpreting(kernel, &binfmt, &exe), &exe_arch) {
        (Some((_, arch)), _) | (None, &Ok(arch)) => arch.name().to_string(),
        (None, Err(why)) => format!("an executable that {why}"),
    };
    let Some(wanted) = wanted else {
        return Err(refused(image, image_arch, pid, target));
    };
    if target == wanted.name() {
        return Ok(Fit::Same);
    }
    if host == Some(wanted) {
        return Ok(Fit::Native(format!(
            "image {image} is {wanted} and the target runs {target}: its programs run natively on this host"
        )));
    }
    match binfmt.handler(wanted) {
        Some(entry) => Ok(Fit::Emulated(format!(
            "image {image} is {wanted} and the target runs {target}: running it through binfmt_misc ({})",
            crate::display::escape(&entry.name)
        ))),
        None => Err(refused(image, image_arch, pid, target)),
    }
}

fn refused(image: &str, image_arch: &str, pid: i32, target: String) -> ArchError {
    ArchError::Refused {
        image: image.to_string(),
        image_arch: crate::display::escape(image_arch),
        pid,
        target,
    }
}

/// The arch cartinject itself is built for: the host's, unless cartinject runs emulated.
pub fn host_arch() -> Option<Arch> {
    Arch::from_kernel_name(std::env::consts::ARCH)
}

/// Reads `/proc/PID/exe`'s first [`ELF_HEADER`] bytes and identity (the real
/// [`Kernel::exe`]).
pub fn read_exe_file(pid: i32) -> Result<Exe, ProcError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let path = crate::procfs::proc_path(pid, "exe");
    let err = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            ProcError::NoSuchProcess(pid)
        } else {
            ProcError::Read {
                path: path.clone(),
                source,
            }
        }
    };
    let file = std::fs::File::open(&path).map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    let mut header = Vec::with_capacity(ELF_HEADER);
    file.take(ELF_HEADER as u64)
        .read_to_end(&mut header)
        .map_err(err)?;
    Ok(Exe {
        header,
        id: (meta.dev(), meta.ino()),
    })
}

/// Reads binfmt_misc under `dir` (the real [`Kernel::binfmt_misc`] reads
/// [`BINFMT_MISC`]): `status` and at most [`MAX_BINFMT_ENTRIES`] entries of at most
/// [`MAX_BINFMT_ENTRY`] bytes each; nothing when it is not mounted.
pub fn read_binfmt_misc(dir: &Path) -> BinfmtRaw {
    use std::io::Read;
    let read = |path: &Path| -> Option<String> {
        let mut text = Vec::new();
        std::fs::File::open(path)
            .ok()?
            .take(MAX_BINFMT_ENTRY)
            .read_to_end(&mut text)
            .ok()?;
        Some(String::from_utf8_lossy(&text).into_owned())
    };
    let Some(status) = read(&dir.join("status")) else {
        return BinfmtRaw::default();
    };
    let mut entries = Vec::new();
    if let Ok(list) = std::fs::read_dir(dir) {
        for entry in list.flatten().take(MAX_BINFMT_ENTRIES + 2) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "status" || name == "register" {
                continue;
            }
            if let Some(text) = read(&entry.path()) {
                entries.push((name, text));
            }
        }
    }
    entries.sort();
    BinfmtRaw {
        status: Some(status),
        entries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::{FakeKernel, FakeProcess, X86_64_HEADER};

    const QEMU_AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";

    fn aarch64_header() -> Vec<u8> {
        let mut h = X86_64_HEADER.to_vec();
        h[18] = 0xb7;
        h
    }

    #[test]
    fn elf_headers_name_their_arch() {
        assert_eq!(elf_arch(&X86_64_HEADER), Ok(Arch::X86_64));
        assert_eq!(elf_arch(&aarch64_header()), Ok(Arch::Aarch64));
        // More bytes than the header: only the first 20 count.
        let mut long = aarch64_header();
        long.extend([0xff; 100]);
        assert_eq!(elf_arch(&long), Ok(Arch::Aarch64));
        let e = elf_arch(&X86_64_HEADER[..19]).unwrap_err();
        assert!(e.contains("19 bytes long"), "{e}");
        assert!(elf_arch(&[]).unwrap_err().contains("0 bytes"));
        assert_eq!(
            elf_arch(b"#!/bin/sh\nexec foo\n\0\0\0").unwrap_err(),
            "is not an ELF file"
        );
        let mut h = X86_64_HEADER;
        h[4] = 1;
        assert!(elf_arch(&h).unwrap_err().contains("64-bit"));
        let mut h = X86_64_HEADER;
        h[5] = 2;
        assert!(elf_arch(&h).unwrap_err().contains("little-endian"));
        let mut h = X86_64_HEADER;
        h[18] = 3;
        let e = elf_arch(&h).unwrap_err();
        assert!(
            e.contains("e_machine 0x3") && e.contains("x86_64, aarch64"),
            "{e}"
        );
        // e_machine's high byte counts.
        let mut h = X86_64_HEADER;
        h[19] = 1;
        assert!(elf_arch(&h).is_err());
        for garbage in [[0u8; 20], [0xff; 20]] {
            assert!(elf_arch(&garbage).is_err());
        }
    }

    #[test]
    fn binfmt_entries_parse() {
        let e = parse_entry("qemu-aarch64", QEMU_AARCH64).unwrap();
        assert_eq!(e.name, "qemu-aarch64");
        assert!(e.enabled && e.fix_binary());
        assert_eq!(
            e.interpreter,
            Path::new("/usr/libexec/qemu-binfmt/aarch64-binfmt-P")
        );
        assert_eq!(e.arch, Some(Arch::Aarch64));
        // Without F, disabled, x86_64's magic, no mask.
        let e = parse_entry(
            "x",
            "disabled\ninterpreter /q\nflags: \noffset 0\nmagic 7f454c4602010100000000000000000002003e00\n",
        )
        .unwrap();
        assert!(!e.enabled && !e.fix_binary());
        assert_eq!(e.arch, Some(Arch::X86_64));
        // An extension entry: no arch.
        let e = parse_entry(
            "py",
            "enabled\ninterpreter /usr/bin/python3\nflags: \nextension .py\n",
        )
        .unwrap();
        assert_eq!(e.arch, None);
    }

    #[test]
    fn hostile_binfmt_entries_name_no_arch() {
        let with = |find: &str, put: &str| parse_entry("q", &QEMU_AARCH64.replace(find, put));
        // A mask that lets any e_machine through.
        assert_eq!(with("fffeffffff\n", "fffeff00ff\n").unwrap().arch, None);
        // The magic elsewhere than at offset 0.
        assert_eq!(with("offset 0", "offset 4").unwrap().arch, None);
        // Not an ELF magic, too short, odd, non-hex, absurdly long: no arch or no entry.
        assert_eq!(with("7f454c46", "7f454c47").unwrap().arch, None);
        assert_eq!(
            with("7f454c460201010000000000000000000200b700", "7f454c46")
                .unwrap()
                .arch,
            None
        );
        assert!(with("b700\n", "b70\n").is_none());
        assert!(with("b700\n", "zz00\n").is_none());
        assert!(with("b700\n", &format!("{}\n", "00".repeat(1000))).is_none());
        assert!(with("offset 0", "offset -1").is_none());
        // A relative interpreter, none, a first line that is no state.
        assert!(with("interpreter /usr", "interpreter usr").is_none());
        assert!(parse_entry("q", "enabled\nflags: F\n").is_none());
        assert!(parse_entry("q", "").is_none());
        assert!(parse_entry("q", "\u{1b}[2J\ninterpreter /x\n").is_none());
        assert!(parse_entry("q", &QEMU_AARCH64.replace("enabled", "Enabled")).is_none());
    }

    fn raw(status: &str, entries: &[(&str, &str)]) -> BinfmtRaw {
        BinfmtRaw {
            status: Some(status.into()),
            entries: entries
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_handler_needs_everything_enabled_and_the_f_flag() {
        let b = Binfmt::parse(&raw("enabled\n", &[("qemu-aarch64", QEMU_AARCH64)]));
        assert_eq!(b.handler(Arch::Aarch64).unwrap().name, "qemu-aarch64");
        assert!(b.handler(Arch::X86_64).is_none());
        let b = Binfmt::parse(&raw("disabled\n", &[("qemu-aarch64", QEMU_AARCH64)]));
        assert!(b.handler(Arch::Aarch64).is_none());
        let off = QEMU_AARCH64.replacen("enabled", "disabled", 1);
        let b = Binfmt::parse(&raw("enabled\n", &[("qemu-aarch64", &off)]));
        assert!(b.handler(Arch::Aarch64).is_none());
        let no_f = QEMU_AARCH64.replace("flags: POF", "flags: PO");
        let b = Binfmt::parse(&raw("enabled\n", &[("qemu-aarch64", &no_f)]));
        assert!(b.handler(Arch::Aarch64).is_none());
        assert_eq!(Binfmt::parse(&BinfmtRaw::default()), Binfmt::default());
    }

    const QEMU_ID: (u64, u64) = (8, 4242);

    /// PID 42 runs `exe`; the host has qemu-aarch64 (F) when `qemu`.
    fn kernel(exe: Exe, qemu: bool) -> FakeKernel {
        let mut process = FakeProcess::container();
        process.exe = Some(exe);
        let mut k = FakeKernel::with(42, process);
        if qemu {
            k.binfmt = raw("enabled", &[("qemu-aarch64", QEMU_AARCH64)]);
            k.files.insert(
                PathBuf::from("/usr/libexec/qemu-binfmt/aarch64-binfmt-P"),
                QEMU_ID,
            );
        }
        k
    }

    fn exe(header: &[u8], id: (u64, u64)) -> Exe {
        Exe {
            header: header.to_vec(),
            id,
        }
    }

    #[test]
    fn the_target_runs_its_executable_s_arch_or_its_interpreter_s() {
        let native = kernel(exe(&X86_64_HEADER, (1, 2)), true);
        assert_eq!(
            target_arch(&native, 42).unwrap(),
            TargetArch::Native(Arch::X86_64)
        );
        // The executable is qemu (an x86_64 file): the entry's arch.
        let emulated = kernel(exe(&X86_64_HEADER, QEMU_ID), true);
        assert_eq!(
            target_arch(&emulated, 42).unwrap(),
            TargetArch::Emulated {
                arch: Arch::Aarch64,
                entry: "qemu-aarch64".into()
            }
        );
        assert_eq!(target_arch(&emulated, 42).unwrap().arch(), Arch::Aarch64);
        // binfmt_misc disabled: the executable's own arch.
        let mut off = emulated.clone();
        off.binfmt.status = Some("disabled".into());
        assert_eq!(
            target_arch(&off, 42).unwrap(),
            TargetArch::Native(Arch::X86_64)
        );
        let garbage = kernel(exe(b"\x7fELF", (1, 2)), false);
        let e = target_arch(&garbage, 42).unwrap_err().to_string();
        assert!(
            e.contains("the target (PID 42)") && e.contains("/proc/42/exe is 4 bytes long"),
            "{e}"
        );
        assert!(matches!(
            target_arch(&native, 7),
            Err(ArchError::Exe { pid: 7, .. })
        ));
    }

    #[test]
    fn images_of_another_arch_run_only_natively_or_through_an_f_handler() {
        let host = Some(Arch::X86_64);
        let x86_target = kernel(exe(&X86_64_HEADER, (1, 2)), true);
        let check = |k: &FakeKernel, arch: &str| check_image(k, 42, "net.img", arch, host);
        assert_eq!(check(&x86_target, "x86_64").unwrap(), Fit::Same);
        assert_eq!(
            check(&x86_target, "aarch64").unwrap(),
            Fit::Emulated(
                "image net.img is aarch64 and the target runs x86_64: running it through binfmt_misc (qemu-aarch64)".into()
            )
        );
        // No handler: refused, naming the fix.
        let bare = kernel(exe(&X86_64_HEADER, (1, 2)), false);
        let e = check(&bare, "aarch64").unwrap_err().to_string();
        assert_eq!(
            e,
            "image net.img is built for aarch64 but the target (PID 42) runs x86_64, and this host has no binfmt_misc handler for aarch64 with the F flag; build the image with `cartbuild RECIPE --arch x86_64`"
        );
        // An emulated aarch64 target: an aarch64 image runs as it does, an x86_64 one
        // natively (its executable is x86_64 qemu: no binfmt read needed).
        let emulated = kernel(exe(&X86_64_HEADER, QEMU_ID), true);
        assert_eq!(check(&emulated, "aarch64").unwrap(), Fit::Same);
        assert_eq!(check(&emulated, "x86_64").unwrap(), Fit::Same);
        // A native aarch64 target (an arm64 host): x86_64 needs a handler.
        let arm = kernel(exe(&aarch64_header(), (1, 2)), false);
        let on_arm = |arch: &str| check_image(&arm, 42, "net.img", arch, Some(Arch::Aarch64));
        assert_eq!(on_arm("aarch64").unwrap(), Fit::Same);
        let e = on_arm("x86_64").unwrap_err().to_string();
        assert!(
            e.contains("runs aarch64") && e.contains("--arch aarch64"),
            "{e}"
        );
        // A target cartinject cannot classify: a host-arch image still runs natively.
        let mut i386 = X86_64_HEADER;
        i386[4] = 1;
        i386[18] = 3;
        let odd = kernel(exe(&i386, (1, 2)), false);
        assert!(matches!(check(&odd, "x86_64").unwrap(), Fit::Native(n) if n.contains("natively")));
        let e = check(&odd, "aarch64").unwrap_err().to_string();
        assert!(
            e.contains("runs an executable that is not a 64-bit ELF file"),
            "{e}"
        );
        // An arch nobody knows, escaped.
        let e = check(&x86_target, "riscv64\u{1b}").unwrap_err().to_string();
        assert!(e.contains("built for riscv64\\x1b but"), "{e}");
    }

    #[test]
    fn the_real_kernel_reads_our_own_executable_and_binfmt_misc() {
        let me = i32::try_from(std::process::id()).unwrap();
        let exe = read_exe_file(me).unwrap();
        assert_eq!(exe.header.len(), ELF_HEADER);
        assert_eq!(elf_arch(&exe.header).ok(), host_arch());
        // Whatever this host has, it parses (or is not there).
        let _ = Binfmt::parse(&read_binfmt_misc(Path::new(BINFMT_MISC)));
        assert_eq!(
            read_binfmt_misc(Path::new("/nonexistent")),
            BinfmtRaw::default()
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("status"), "enabled\n").unwrap();
        std::fs::write(dir.path().join("register"), "").unwrap();
        std::fs::write(dir.path().join("qemu-aarch64"), QEMU_AARCH64).unwrap();
        std::fs::write(dir.path().join("big"), vec![b'x'; 100_000]).unwrap();
        let r = read_binfmt_misc(dir.path());
        assert_eq!(r.status.as_deref(), Some("enabled\n"));
        let names: Vec<&str> = r.entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["big", "qemu-aarch64"]);
        assert_eq!(r.entries[0].1.len(), MAX_BINFMT_ENTRY as usize);
        assert!(Binfmt::parse(&r).handler(Arch::Aarch64).is_some());
    }
}
