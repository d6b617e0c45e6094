//! Extended attributes of a file (file capabilities, ACLs, SELinux labels), read as one blob
//! and written back: `NAME NUL LEN(u32 le) VALUE`, repeated. The rollback set keeps them with the
//! files it keeps whole; rpm's own install of a repacked copy cannot carry them.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Attribute names longer than this or values larger are refused (the kernel's own limits).
const MAX_VALUE: usize = 64 * 1024;

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::other("NUL in a name"))
}

/// Call `f(buf, len)` first to size, then to fill; ENOTSUP / ENODATA read as empty.
fn sized(f: impl Fn(*mut nix::libc::c_void, usize) -> isize) -> io::Result<Vec<u8>> {
    for _ in 0..4 {
        let n = f(std::ptr::null_mut(), 0);
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(nix::libc::ENOTSUP) | Some(nix::libc::ENODATA) => Ok(Vec::new()),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; (n as usize).min(MAX_VALUE)];
        let got = f(buf.as_mut_ptr().cast(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        // ERANGE: it grew between the two calls; size again.
        if io::Error::last_os_error().raw_os_error() != Some(nix::libc::ERANGE) {
            return Err(io::Error::last_os_error());
        }
    }
    Err(io::Error::other("extended attributes keep changing"))
}

/// All extended attributes of `p` (not following a symlink), encoded.
pub fn read(p: &Path) -> io::Result<Vec<u8>> {
    let path = cstr(p.as_os_str().as_bytes())?;
    let names = sized(|b, n| unsafe { nix::libc::llistxattr(path.as_ptr(), b.cast(), n) })?;
    let mut out = Vec::new();
    for name in names.split(|c| *c == 0).filter(|n| !n.is_empty()) {
        let cname = cstr(name)?;
        let value =
            sized(|b, n| unsafe { nix::libc::lgetxattr(path.as_ptr(), cname.as_ptr(), b, n) })?;
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(&value);
    }
    Ok(out)
}

/// Set the encoded attributes `data` on the open `file`.
pub fn write(file: &std::fs::File, mut data: &[u8]) -> io::Result<()> {
    let bad = || io::Error::other("damaged attribute record");
    while !data.is_empty() {
        let end = data.iter().position(|c| *c == 0).ok_or_else(bad)?;
        let name = cstr(&data[..end])?;
        let len = data
            .get(end + 1..end + 5)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(bad)? as usize;
        let value = data.get(end + 5..end + 5 + len).ok_or_else(bad)?;
        let r = unsafe {
            nix::libc::fsetxattr(
                file.as_raw_fd(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::other(format!("{}: {e}", name.to_string_lossy())));
        }
        data = &data[end + 5 + len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn attributes_round_trip_on_a_file() {
        let dir = std::env::temp_dir().join(format!("ep-xattr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, "x").unwrap();
        std::fs::write(&b, "y").unwrap();
        assert_eq!(super::read(&a).unwrap(), b"");
        let mut blob = b"user.note\0".to_vec();
        blob.extend(4u32.to_le_bytes());
        blob.extend(b"kept");
        super::write(&std::fs::File::open(&a).unwrap(), &blob).unwrap();
        assert_eq!(super::read(&a).unwrap(), blob);
        super::write(&std::fs::File::open(&b).unwrap(), &super::read(&a).unwrap()).unwrap();
        assert_eq!(super::read(&b).unwrap(), blob);
        assert!(super::write(&std::fs::File::open(&b).unwrap(), b"user.x\0\xff").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
