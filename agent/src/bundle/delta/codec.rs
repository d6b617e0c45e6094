//! The patch codec: encoding a section's seven streams (builder) and applying a patch with
//! bounded memory (node). See the module docs of `bundle::delta` for the format.

use super::*;
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::Path;

/// One bsdiff control: `add` bytes diffed against old, `copy` bytes from extra, then `seek`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    pub add: u64,
    pub copy: u64,
    pub seek: i64,
}

/// Encode one section (builder side, and tests): the controls and the diff bytes split into
/// their streams (see the format above), each stream raw DEFLATE at `level`. Returns the section
/// header and the streams back to back. The diff stream must be as long as the adds together.
pub fn encode_section(
    source: Source,
    old_len: u64,
    new_len: u64,
    controls: &[Control],
    diff: &[u8],
    extra: &[u8],
    level: u8,
) -> (Section, Vec<u8>) {
    let mut raw: [Vec<u8>; STREAMS] = Default::default();
    for c in controls {
        put_varint(&mut raw[0], c.add);
        put_varint(&mut raw[1], c.copy);
        put_varint(&mut raw[2], zigzag(c.seek));
    }
    let mut at = 0;
    while at < diff.len() {
        let zeros = diff[at..]
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(diff.len() - at);
        let start = at + zeros;
        let literals = diff[start..]
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(diff.len() - start);
        put_varint(&mut raw[3], zeros as u64);
        put_varint(&mut raw[4], literals as u64);
        raw[5].extend_from_slice(&diff[start..start + literals]);
        at = start + literals;
    }
    raw[6] = extra.to_vec();
    let mut streams = [0u64; STREAMS];
    let mut bytes = Vec::new();
    for (len, r) in streams.iter_mut().zip(&raw) {
        if !r.is_empty() {
            let packed = miniz_oxide::deflate::compress_to_vec(r, level);
            *len = packed.len() as u64;
            bytes.extend(packed);
        }
    }
    let sec = Section {
        source,
        old_len,
        new_len,
        streams,
    };
    (sec, bytes)
}

/// The controls of a section, read from its add, copy and seek streams.
pub struct ControlReader<R: Read> {
    pub add: R,
    pub copy: R,
    pub seek: R,
}

impl<R: Read> Iterator for ControlReader<R> {
    type Item = Result<Control, DeltaError>;

    fn next(&mut self) -> Option<Self::Item> {
        let add = match get_varint(&mut self.add) {
            Ok(Some(v)) => v,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        let mut rest = || -> Result<Control, DeltaError> {
            let copy =
                get_varint(&mut self.copy)?.ok_or_else(|| corrupt("copy stream ends early"))?;
            let seek =
                get_varint(&mut self.seek)?.ok_or_else(|| corrupt("seek stream ends early"))?;
            Ok(Control {
                add,
                copy,
                seek: unzigzag(seek),
            })
        };
        Some(rest())
    }
}

/// The diff bytes of a section, rebuilt from its zero-run, literal-run and literal streams.
pub struct DiffReader<R: Read> {
    pub zero_runs: R,
    pub literal_runs: R,
    pub literals: R,
    zeros_left: u64,
    literals_left: u64,
}

impl<R: Read> DiffReader<R> {
    pub fn new(zero_runs: R, literal_runs: R, literals: R) -> Self {
        DiffReader {
            zero_runs,
            literal_runs,
            literals,
            zeros_left: 0,
            literals_left: 0,
        }
    }

    /// True when no run is half used (the streams themselves are checked by the caller).
    pub(crate) fn between_runs(&self) -> bool {
        self.zeros_left == 0 && self.literals_left == 0
    }
}

impl<R: Read> Read for DiffReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
        let varint = |r: &mut R| match get_varint(r) {
            Ok(v) => Ok(v),
            Err(DeltaError::Io(e)) => Err(e),
            Err(e) => Err(bad(&e.to_string())),
        };
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.zeros_left > 0 {
                let n = (buf.len() as u64).min(self.zeros_left) as usize;
                buf[..n].fill(0);
                self.zeros_left -= n as u64;
                return Ok(n);
            }
            if self.literals_left > 0 {
                let n = (buf.len() as u64).min(self.literals_left) as usize;
                let got = self.literals.read(&mut buf[..n])?;
                if got == 0 {
                    return Err(bad("literal stream ends early"));
                }
                self.literals_left -= got as u64;
                return Ok(got);
            }
            let Some(zeros) = varint(&mut self.zero_runs)? else {
                return Ok(0);
            };
            let literals = varint(&mut self.literal_runs)?
                .ok_or_else(|| bad("literal-run stream ends early"))?;
            if zeros == 0 && literals == 0 {
                return Err(bad("empty diff run"));
            }
            (self.zeros_left, self.literals_left) = (zeros, literals);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming raw-DEFLATE reader (bounded: one input buffer and the inflater's own window).

pub struct Inflate<R: Read> {
    pub(crate) inner: R,
    pub(crate) state: Box<miniz_oxide::inflate::stream::InflateState>,
    pub(crate) input: Vec<u8>,
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) done: bool,
}

impl<R: Read> Inflate<R> {
    pub fn new(inner: R) -> Self {
        Inflate {
            inner,
            state: miniz_oxide::inflate::stream::InflateState::new_boxed(
                miniz_oxide::DataFormat::Raw,
            ),
            input: vec![0u8; 16 * 1024],
            start: 0,
            end: 0,
            done: false,
        }
    }

    /// True when the deflate stream ended and every input byte was used.
    fn finished(&mut self) -> io::Result<bool> {
        let mut b = [0u8; 1];
        if self.read(&mut b)? != 0 || !self.done || self.start != self.end {
            return Ok(false);
        }
        Ok(self.inner.read(&mut b)? == 0)
    }
}

impl<R: Read> Read for Inflate<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use miniz_oxide::inflate::stream::inflate;
        use miniz_oxide::{MZError, MZFlush, MZStatus};
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.done {
                return Ok(0);
            }
            if self.start == self.end {
                self.end = self.inner.read(&mut self.input)?;
                self.start = 0;
            }
            let eof = self.end == 0;
            let res = inflate(
                &mut self.state,
                &self.input[self.start..self.end],
                buf,
                if eof { MZFlush::Finish } else { MZFlush::None },
            );
            self.start += res.bytes_consumed;
            match res.status {
                Ok(MZStatus::StreamEnd) => self.done = true,
                Ok(_) | Err(MZError::Buf) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("deflate stream: {e:?}"),
                    ))
                }
            }
            if res.bytes_written > 0 {
                return Ok(res.bytes_written);
            }
            if eof && !self.done {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "deflate stream cut short",
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Applying.

/// A byte range of the patch file with its own cursor (positioned reads: the seven streams of a
/// section share one file handle without sharing an offset).
pub struct Range<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Range<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = (buf.len() as u64).min(self.end - self.pos) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "patch file shorter than its header says",
            ));
        }
        self.pos += got as u64;
        Ok(got)
    }
}

/// One stream of a section: raw DEFLATE over a byte range of the patch, or nothing when its
/// stored length is 0; buffered because varints are read a byte at a time.
type Stream<'a> = BufReader<Inflate<Range<'a>>>;

fn stream(patch: &File, offset: u64, len: u64) -> Stream<'_> {
    let mut inflate = Inflate::new(Range {
        file: patch,
        pos: offset,
        end: offset + len,
    });
    inflate.done = len == 0;
    BufReader::with_capacity(4096, inflate)
}

/// True when the stream was read to its very end (deflate end and no stored byte left).
fn stream_finished(s: &mut Stream<'_>) -> io::Result<bool> {
    Ok(s.buffer().is_empty() && s.get_mut().finished()?)
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<(), DeltaError> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..])?;
        if n == 0 {
            return Err(corrupt(format!("{what} stream ends early")));
        }
        got += n;
    }
    Ok(())
}

/// Apply one section: old (seekable, `old_len` bytes) + controls, diff and extra bytes -> `out`.
pub fn apply_section<O, D, E, W>(
    sec: &Section,
    old: Option<&mut O>,
    controls: &mut dyn Iterator<Item = Result<Control, DeltaError>>,
    diff: &mut D,
    extra: &mut E,
    out: &mut W,
) -> Result<(), DeltaError>
where
    O: Read + Seek,
    D: Read,
    E: Read,
    W: Write + ?Sized,
{
    let mut old_reader = old.map(|o| BufReader::with_capacity(CHUNK, o));
    if let Some(o) = old_reader.as_mut() {
        o.seek(SeekFrom::Start(0))?;
    }
    let mut old_pos: u64 = 0; // where the BufReader is
    let mut cursor: i64 = 0; // the bsdiff old cursor
    let mut produced: u64 = 0;
    let mut first = true;
    let mut dbuf = vec![0u8; CHUNK];
    let mut obuf = vec![0u8; CHUNK];
    for control in controls {
        let Control { add, copy, seek } = control?;
        // Only the first control may produce nothing (it then just places the old cursor).
        let step = add
            .checked_add(copy)
            .filter(|s| *s > 0 || std::mem::take(&mut first))
            .ok_or_else(|| corrupt("control makes no progress"))?;
        first = false;
        if produced + step > sec.new_len || step > sec.new_len {
            return Err(corrupt(format!(
                "output longer than the declared {} bytes",
                sec.new_len
            )));
        }
        if add > 0 {
            let o = old_reader
                .as_mut()
                .ok_or_else(|| corrupt("add from an empty source"))?;
            if cursor < 0 || (cursor as u64).saturating_add(add) > sec.old_len {
                return Err(corrupt(format!(
                    "old range {cursor}+{add} outside the {} byte base",
                    sec.old_len
                )));
            }
            let target = cursor as u64;
            if target != old_pos {
                o.seek_relative(target as i64 - old_pos as i64)?;
                old_pos = target;
            }
            let mut left = add;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                read_full(diff, &mut dbuf[..n], "diff")?;
                o.read_exact(&mut obuf[..n]).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        corrupt("base is shorter than the patch says")
                    } else {
                        DeltaError::Io(e)
                    }
                })?;
                for (d, o) in dbuf[..n].iter_mut().zip(&obuf[..n]) {
                    *d = d.wrapping_add(*o);
                }
                out.write_all(&dbuf[..n])?;
                left -= n as u64;
            }
            old_pos += add;
            cursor += add as i64;
        }
        let mut left = copy;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            read_full(extra, &mut dbuf[..n], "extra")?;
            out.write_all(&dbuf[..n])?;
            left -= n as u64;
        }
        produced += step;
        cursor = cursor
            .checked_add(seek)
            .ok_or_else(|| corrupt("seek overflows"))?;
    }
    if produced != sec.new_len {
        return Err(corrupt(format!(
            "output is {produced} bytes, header says {}",
            sec.new_len
        )));
    }
    Ok(())
}

/// Apply a whole patch file. `source` opens the old stream a section needs (the returned file is
/// read from offset 0). Writes the complete output to `out`. Recipe `deb-gz` expands the old
/// data.tar and compresses the patched one back through unlinked scratch files in `tmp_dir`.
pub fn apply_patch(
    patch: &File,
    header: &Header,
    source: &mut dyn FnMut(Source) -> Result<File, DeltaError>,
    tmp_dir: &Path,
    out: &mut dyn Write,
) -> Result<(), DeltaError> {
    let actual = patch.metadata()?.len();
    if actual != header.patch_len() {
        return Err(corrupt(format!(
            "patch is {actual} bytes, its header adds up to {}",
            header.patch_len()
        )));
    }
    let mut offset = header.len();
    let data_len = header.data_out_len();
    for (i, sec) in header.sections.iter().enumerate() {
        // Recipe deb-gz, data section: expanded old in, expanded new out.
        let gz = header.gz.as_ref().filter(|_| i == 1);
        if header.recipe != Recipe::Raw {
            if i == 0 {
                out.write_all(&deb_prefix(sec.new_len))?;
            } else {
                out.write_all(&deb_middle(header.sections[0].new_len, data_len))?;
            }
        }
        let mut old = match sec.source {
            Source::Empty => None,
            s => {
                let mut f = source(s)?;
                if let Some(g) = gz {
                    let len = f.metadata()?.len();
                    let mut x = scratch(tmp_dir, "old-expanded")?;
                    let mut w = io::BufWriter::with_capacity(CHUNK, &mut x);
                    expand_gz(
                        &mut BufReader::with_capacity(CHUNK, &mut f),
                        len,
                        &g.old,
                        &mut w,
                    )?;
                    w.flush()?;
                    drop(w);
                    f = x;
                }
                let len = f.metadata()?.len();
                if len != sec.old_len {
                    return Err(DeltaError::Base(format!(
                        "base stream is {len} bytes, patch expects {}",
                        sec.old_len
                    )));
                }
                Some(f)
            }
        };
        let [add, copy, seek, zero_runs, literal_runs, literals, mut extra] =
            sec.streams.map(|len| {
                let s = stream(patch, offset, len);
                offset += len;
                s
            });
        let mut controls = ControlReader { add, copy, seek };
        let mut diff = DiffReader::new(zero_runs, literal_runs, literals);
        match gz {
            None => apply_section(sec, old.as_mut(), &mut controls, &mut diff, &mut extra, out)?,
            Some(g) => {
                let mut x = scratch(tmp_dir, "new-expanded")?;
                let mut w = io::BufWriter::with_capacity(CHUNK, &mut x);
                apply_section(
                    sec,
                    old.as_mut(),
                    &mut controls,
                    &mut diff,
                    &mut extra,
                    &mut w,
                )?;
                w.flush()?;
                drop(w);
                drop(old.take());
                let n = compress_gz(&mut x, sec.new_len, &g.new, tmp_dir, out)?;
                if n != g.data_len {
                    return Err(corrupt(format!(
                        "data.tar is {n} bytes, header says {}",
                        g.data_len
                    )));
                }
            }
        }
        if !diff.between_runs() {
            return Err(corrupt("diff runs longer than the adds"));
        }
        let ControlReader { add, copy, seek } = controls;
        let DiffReader {
            zero_runs,
            literal_runs,
            literals,
            ..
        } = diff;
        let all = [add, copy, seek, zero_runs, literal_runs, literals, extra];
        for (mut s, name) in all.into_iter().zip(STREAM_NAMES) {
            if !stream_finished(&mut s)? {
                return Err(corrupt(format!("{name} stream has bytes left over")));
            }
        }
        if header.recipe != Recipe::Raw && i == 1 {
            out.write_all(deb_suffix(data_len))?;
        }
    }
    out.flush()?;
    Ok(())
}

/// A read-write file in `dir` that is already unlinked (gone when dropped).
pub(crate) fn scratch(dir: &Path, tag: &str) -> io::Result<File> {
    let path = dir.join(format!(".edgepatch-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}
