//! The ar container of a .deb (`!<arch>` + members with 60-byte headers). A member of unknown
//! length is streamed: a header with size 0 is written first and patched once the member ends,
//! so data.tar never has to exist twice on disk. Member mtimes, owners and modes are fixed
//! (0, 0, 0, 0644): the same contents always give the same bytes.

use std::io::{self, Seek, SeekFrom, Write};

pub const MAGIC: &[u8; 8] = b"!<arch>\n";
const HEADER: u64 = 60;

fn header(name: &str, size: u64) -> io::Result<[u8; 60]> {
    if size > 9_999_999_999 || name.len() > 16 {
        return Err(io::Error::other(format!(
            "ar member {name}: {size} bytes does not fit the .deb format"
        )));
    }
    let s = format!(
        "{name:<16}{:<12}{:<6}{:<6}{:<8}{size:<10}`\n",
        0, 0, 0, "100644"
    );
    let mut h = [0u8; 60];
    h.copy_from_slice(s.as_bytes());
    Ok(h)
}

/// A member whose bytes are already known (debian-binary).
pub fn member<W: Write>(w: &mut W, name: &str, data: &[u8]) -> io::Result<()> {
    w.write_all(&header(name, data.len() as u64)?)?;
    w.write_all(data)?;
    if data.len() % 2 == 1 {
        w.write_all(b"\n")?;
    }
    Ok(())
}

/// Start a streamed member; write its bytes to `w`, then call [`end`] with the value returned.
pub fn begin<W: Write + Seek>(w: &mut W, name: &str) -> io::Result<u64> {
    let at = w.stream_position()?;
    w.write_all(&header(name, 0)?)?;
    Ok(at)
}

/// Finish a streamed member started at `at`: patch its size, pad to an even offset.
pub fn end<W: Write + Seek>(w: &mut W, name: &str, at: u64) -> io::Result<u64> {
    let here = w.stream_position()?;
    let size = here - at - HEADER;
    w.seek(SeekFrom::Start(at))?;
    w.write_all(&header(name, size)?)?;
    w.seek(SeekFrom::Start(here))?;
    if size % 2 == 1 {
        w.write_all(b"\n")?;
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_member_gets_its_size() {
        let mut c = io::Cursor::new(Vec::new());
        c.write_all(MAGIC).unwrap();
        member(&mut c, "debian-binary", b"2.0\n").unwrap();
        let at = begin(&mut c, "data.tar").unwrap();
        c.write_all(b"abc").unwrap();
        assert_eq!(end(&mut c, "data.tar", at).unwrap(), 3);
        let v = c.into_inner();
        assert_eq!(v.len(), 8 + 60 + 4 + 60 + 4);
        let h = std::str::from_utf8(&v[72..132]).unwrap();
        assert!(h.starts_with("data.tar        0           0     0     100644  3         `\n"));
    }
}
