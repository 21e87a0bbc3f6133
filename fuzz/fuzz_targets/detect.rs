//! Image detection: a GPT disk's `crashcart` partition, or an ext2/3/4, EROFS or SquashFS
//! filesystem, from the image's bytes (`cartimage::detect::detect`).
#![no_main]

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// The fuzzer's bytes as a read-only file of `len` bytes: a sparse file whose first bytes
/// are `data` and the rest zeros.
struct Bytes<'a> {
    data: &'a [u8],
    len: u64,
}

impl FileExt for Bytes<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = usize::try_from((self.len - offset).min(buf.len() as u64)).unwrap();
        let buf = &mut buf[..n];
        buf.fill(0);
        if let Some(rest) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.data.get(o..))
        {
            let m = rest.len().min(n);
            buf[..m].copy_from_slice(&rest[..m]);
        }
        Ok(n)
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }
}

/// Makes the checksums of a GPT header at `at` (and of its partition array, when the bytes
/// hold it) right (the primary header at LBA 1; the backup one in the last sector is left
/// as the fuzzer made it), so that the fuzzer's changes reach the table's parser rather than stop
/// at a checksum it cannot forge.
fn fix_gpt(data: &mut [u8], at: usize, sector: u64) {
    if data.get(at..at + 8) != Some(b"EFI PART") || data.len() < at + 92 {
        return;
    }
    let le32 = |d: &[u8], o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap());
    let part_lba = u64::from_le_bytes(data[at + 72..at + 80].try_into().unwrap());
    let count = u64::from(le32(data, at + 80)) * u64::from(le32(data, at + 84));
    if let Some(array) = part_lba
        .checked_mul(sector)
        .and_then(|start| Some(start..start.checked_add(count)?))
        .and_then(|r| data.get(usize::try_from(r.start).ok()?..usize::try_from(r.end).ok()?))
    {
        let crc = crc32fast::hash(array);
        data[at + 88..at + 92].copy_from_slice(&crc.to_le_bytes());
    }
    // Over the 92 bytes the gpt crate checks, whatever the header's own size field says.
    data[at + 16..at + 20].fill(0);
    let crc = crc32fast::hash(&data[at..at + 92]);
    data[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.img");
    let mut fixed = data.to_vec();
    fix_gpt(&mut fixed, 512, 512);
    fix_gpt(&mut fixed, 4096, 4096);
    let data = &fixed[..];
    let len = data.len() as u64;
    if let Ok(found) = cartimage::detect::detect(&Bytes { data, len }, len, path) {
        let _ = format!("{found:?}");
    }
    // The same bytes as the start of a 1 TiB sparse file, so that sizes and offsets the
    // bytes claim are within the file.
    let len = 1 << 40;
    let _ = cartimage::detect::detect(&Bytes { data, len }, len, path);
});
